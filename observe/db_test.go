package observe_test

import (
	"context"
	"database/sql"
	"errors"
	"regexp"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/codes"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/dotmac/pgtrace/observe"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// openTestDB opens the test server through observe.OpenDB with the pgx
// driver; params are appended to the DSN.
func openTestDB(t *testing.T, params string, opts ...observe.Option) *sql.DB {
	t.Helper()
	dsn := pgtest.Start(t).DSN()
	if params != "" {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		dsn += sep + params
	}
	db, err := observe.OpenDB("pgx", dsn, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

var traceparentRE = regexp.MustCompile(`traceparent='00-([0-9a-f]{32})-([0-9a-f]{16})-01'`)

// TestOpenDBCommentReachesServer checks, with current_query(), that the
// server receives the statement with its comment, in each of pgx's query
// exec modes.
func TestOpenDBCommentReachesServer(t *testing.T) {
	for _, mode := range []string{"exec", "simple_protocol", "cache_statement", "cache_describe", "describe_exec"} {
		t.Run(mode, func(t *testing.T) {
			tel := newTelemetry(t)
			db := openTestDB(t, "default_query_exec_mode="+mode, observe.WithServiceName("partners"))
			ctx, span := tel.tp.Tracer("test").Start(context.Background(), "request")
			defer span.End()
			ctx = observe.ContextWithTenant(ctx, "acme")

			var q string
			if err := db.QueryRowContext(ctx, "SELECT current_query() WHERE $1::int = 1", 1).Scan(&q); err != nil {
				t.Fatal(err)
			}
			// The simple protocol sends the arguments inlined: compare the comment.
			want := " /*application='partners',db_driver='pgx',tenant_id='acme'," +
				"traceparent='00-" + span.SpanContext().TraceID().String() + "-" + span.SpanContext().SpanID().String() + "-01'*/"
			if !strings.HasPrefix(q, "SELECT current_query() WHERE ") || !strings.HasSuffix(q, want) {
				t.Errorf("server saw\n %s\nwant\n %s", q, want)
			}

			// Exec: the statement writes what the server saw into a temp table.
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.ExecContext(ctx, "CREATE TEMP TABLE seen AS SELECT current_query() AS q"); err != nil {
				t.Fatal(err)
			}
			if err := conn.QueryRowContext(context.Background(), "SELECT q FROM seen").Scan(&q); err != nil {
				t.Fatal(err)
			}
			m := traceparentRE.FindStringSubmatch(q)
			if m == nil || m[2] != span.SpanContext().SpanID().String() {
				t.Errorf("exec reached the server as %q, want the span's traceparent", q)
			}
		})
	}
}

func TestOpenDBUnsampledAndExistingComment(t *testing.T) {
	db := openTestDB(t, "default_query_exec_mode=exec", observe.WithServiceName("partners"))
	ctx := sampledContext(context.Background(), false)
	var q string
	if err := db.QueryRowContext(ctx, "SELECT current_query()").Scan(&q); err != nil {
		t.Fatal(err)
	}
	// An unsampled span still names its trace, with flags 00, so that the
	// proxy follows the decision and groups the request's statements.
	if want := "traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'"; !strings.Contains(q, want) || !strings.Contains(q, "application='partners'") {
		t.Errorf("unsampled: server saw %q, want %s", q, want)
	}
	ctx = sampledContext(context.Background(), true)
	const own = "SELECT current_query() /* mine */"
	if err := db.QueryRowContext(ctx, own).Scan(&q); err != nil {
		t.Fatal(err)
	}
	if q != own {
		t.Errorf("commented statement changed: %q", q)
	}
}

func TestOpenDBPrepareGetsStaticTagsOnly(t *testing.T) {
	db := openTestDB(t, "", observe.WithServiceName("partners"))
	ctx := sampledContext(context.Background(), true)
	stmt, err := db.PrepareContext(ctx, "SELECT current_query()")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	var q string
	if err := stmt.QueryRowContext(ctx).Scan(&q); err != nil {
		t.Fatal(err)
	}
	if want := "SELECT current_query() /*application='partners',db_driver='pgx'*/"; q != want {
		t.Errorf("prepared statement reached the server as %q, want %q", q, want)
	}
}

func TestTracedTx(t *testing.T) {
	tel := newTelemetry(t)
	db := openTestDB(t, "default_query_exec_mode=exec")
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS observe_tx (v int)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), "DROP TABLE observe_tx") })

	var txSpanID, seenSpanID string
	err := observe.TracedTx(ctx, db, "insert rows", func(ctx context.Context, tx *sql.Tx) error {
		var q string
		if err := tx.QueryRowContext(ctx, "INSERT INTO observe_tx VALUES (1) RETURNING current_query()").Scan(&q); err != nil {
			return err
		}
		if m := traceparentRE.FindStringSubmatch(q); m != nil {
			seenSpanID = m[2]
		}
		return nil
	}, tel.options()...)
	if err != nil {
		t.Fatal(err)
	}
	spans := tel.spans.Ended()
	if len(spans) != 1 || spans[0].Name() != "insert rows" {
		t.Fatalf("spans %v", spans)
	}
	txSpanID = spans[0].SpanContext().SpanID().String()
	if seenSpanID != txSpanID {
		t.Errorf("statement's traceparent span %q, want the TracedTx span %q", seenSpanID, txSpanID)
	}

	// An error rolls back and marks the span.
	errBoom := errors.New("boom")
	err = observe.TracedTx(ctx, db, "fail", func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO observe_tx VALUES (2)"); err != nil {
			return err
		}
		return errBoom
	}, tel.options()...)
	if !errors.Is(err, errBoom) {
		t.Fatalf("err = %v", err)
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM observe_tx").Scan(&n); err != nil || n != 1 {
		t.Errorf("rows after rollback: %d, %v; want 1", n, err)
	}
	last := tel.spans.Ended()[1]
	if last.Status().Code != codes.Error || last.Status().Description != "boom" {
		t.Errorf("failed tx span status %v", last.Status())
	}

	// A panic rolls back, marks the span and continues.
	func() {
		defer func() {
			if p := recover(); p != "oops" {
				t.Errorf("recovered %v, want oops", p)
			}
		}()
		_ = observe.TracedTx(ctx, db, "panic", func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, "INSERT INTO observe_tx VALUES (3)"); err != nil {
				return err
			}
			panic("oops")
		}, tel.options()...)
	}()
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM observe_tx").Scan(&n); err != nil || n != 1 {
		t.Errorf("rows after panic: %d, %v; want 1", n, err)
	}
	if s := tel.spans.Ended()[2]; s.Status().Code != codes.Error {
		t.Errorf("panicked tx span status %v", s.Status())
	}
}

func TestTracedOp(t *testing.T) {
	tel := newTelemetry(t)
	err := observe.TracedOp(context.Background(), "load partners", func(ctx context.Context) error {
		return errors.New("no rows")
	}, tel.options(observe.WithSpanAttributes(observe.PartnerIDKey.String("p1")))...)
	if err == nil {
		t.Fatal("error lost")
	}
	s := tel.spans.Ended()[0]
	v, _ := spanAttr(s, observe.PartnerIDKey)
	if s.Name() != "load partners" || s.Status().Code != codes.Error || v.AsString() != "p1" {
		t.Errorf("span %s status %v partner %q", s.Name(), s.Status(), v.AsString())
	}
}
