package fingerprint

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestDecoysAgainstPostgreSQL asks PostgreSQL whether what this package
// takes for comments really is comment: each self-contained case of
// comments.txt must give the same results whole, as its comment-stripped
// body (scan) and with every comment removed (the lexer). Had the lexer
// taken a /* inside a literal, a dollar quote or a quoted identifier for a
// comment, or nested comments wrongly, the result would differ or fail.
func TestDecoysAgainstPostgreSQL(t *testing.T) {
	srv := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, srv.DSN())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())

	run := func(sql string) ([][][]string, error) {
		results, err := conn.Exec(ctx, sql).ReadAll()
		if err != nil {
			return nil, err
		}
		var out [][][]string
		for _, r := range results {
			if r.Err != nil {
				return nil, r.Err
			}
			var rows [][]string
			for _, row := range r.Rows {
				var vals []string
				for _, v := range row {
					vals = append(vals, string(v))
				}
				rows = append(rows, vals)
			}
			out = append(out, rows)
		}
		return out, nil
	}

	n := 0
	for _, tc := range readCases(t, "comments.txt") {
		if !strings.HasPrefix(tc.name, "decoy") && !strings.HasPrefix(tc.name, "nested") && !strings.HasPrefix(tc.name, "identifier") {
			continue
		}
		n++
		t.Run(tc.name, func(t *testing.T) {
			whole, err := run(tc.sql)
			if err != nil {
				t.Fatalf("PostgreSQL rejects the case itself: %v\n%s", err, tc.sql)
			}
			body := scan(tc.sql).body
			stripped, err := run(body)
			if err != nil {
				t.Fatalf("PostgreSQL rejects the stripped body %q: %v", body, err)
			}
			if d := cmp.Diff(whole, stripped); d != "" {
				t.Errorf("whole text and stripped body answer differently (-whole +body):\n%s", d)
			}
			// The lexer's view of every comment, interior ones included:
			// the text without them must answer the same. A /* inside a
			// literal taken for a comment would change the literal.
			clean, _ := lexNormalize(tc.sql, false)
			got, err := run(clean)
			if err != nil {
				t.Fatalf("PostgreSQL rejects the text without comments %q: %v", clean, err)
			}
			if d := cmp.Diff(whole, got); d != "" {
				t.Errorf("text without comments %q answers differently (-whole +clean):\n%s", clean, d)
			}
		})
	}
	if n < 6 {
		t.Fatalf("only %d self-contained cases", n)
	}
}
