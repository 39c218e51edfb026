package main

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestInvalidUTF8QueryKeepsMetrics sends, through pgtrace to a real
// PostgreSQL, a query with a byte that is not UTF-8. PostgreSQL rejects it
// (SQLSTATE 22021), but pgtrace has seen it first: /metrics must keep
// answering 200 with valid UTF-8, and the statement is counted.
func TestInvalidUTF8QueryKeepsMetrics(t *testing.T) {
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr())
	ctx := t.Context()
	cfg, err := pgx.ParseConfig(pgtest.DSNAt(p.ready.str("listen"), pg.User, pg.Password, pg.Database))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "SELECT 1 FROM caf\xe9_orders")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22021" {
		t.Fatalf("query: %v, want invalid byte sequence 22021", err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the connection after the rejected query: %v", err)
	}

	url := "http://" + p.ready.str("admin") + "/metrics"
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := httpGet(t, url)
		if code != 200 {
			t.Fatalf("GET /metrics = %d:\n%s", code, body)
		}
		if !utf8.ValidString(body) {
			t.Fatalf("/metrics is not valid UTF-8")
		}
		if strings.Contains(body, `db_response_status_code="22021"`) {
			if !strings.Contains(body, "\uFFFD") {
				t.Errorf("no U+FFFD in /metrics for the rejected query's labels")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never counted the rejected query:\n%s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
