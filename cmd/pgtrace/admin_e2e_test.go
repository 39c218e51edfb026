package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dotmac/pgtrace/admin"
	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestTopQueriesLeaveOutPing: pgx's Ping sends "-- ping", an empty
// statement. Through a real pgtrace it does not crowd the top queries of
// /api/queries (and so of the page); ?empty=true shows it, labelled.
func TestTopQueriesLeaveOutPing(t *testing.T) {
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr())
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(p.ready.str("listen"), pg.User, pg.Password, pg.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for range 20 {
		if err := conn.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT 1 AS marker"); err != nil {
		t.Fatal(err)
	}

	type entry struct{ Query, Summary string }
	queries := func(q string) []entry {
		t.Helper()
		code, body := httpGet(t, "http://"+p.ready.str("admin")+"/api/queries"+q)
		if code != 200 {
			t.Fatalf("GET /api/queries%s: %d %s", q, code, body)
		}
		var out struct{ Queries []entry }
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		return out.Queries
	}
	has := func(es []entry, pred func(entry) bool) bool {
		for _, e := range es {
			if pred(e) {
				return true
			}
		}
		return false
	}
	isMarker := func(e entry) bool { return strings.Contains(e.Query, "marker") }
	isEmpty := func(e entry) bool { return e.Summary == "EMPTY" }
	deadline := time.Now().Add(10 * time.Second)
	for !has(queries("?empty=true"), isEmpty) || !has(queries(""), isMarker) {
		if time.Now().After(deadline) {
			t.Fatalf("the pings and the marker did not reach /api/queries: %v", queries("?empty=true"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if es := queries(""); has(es, isEmpty) || has(es, func(e entry) bool { return e.Query == "" }) {
		t.Errorf("/api/queries lists the empty statement or an entry without text: %+v", es)
	}
	for _, e := range queries("?empty=true") {
		if isEmpty(e) && e.Query != admin.EmptyStatementLabel {
			t.Errorf("empty statement entry %+v, want the label %q", e, admin.EmptyStatementLabel)
		}
	}
}
