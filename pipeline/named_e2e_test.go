package pipeline_test

// Trace context follows the statement (DESIGN.md decision 5): drivers that
// prepare statements by name send the sqlcommenter comment once, in the
// Parse, and every later execution must still be parented by it, counted
// in its request's N+1 group, and fingerprinted as what it runs. Real
// drivers (pgx, asyncpg) and a raw protocol frontend, a real PostgreSQL,
// and the spans in the in-process OTLP receiver.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

const namedWait = 20 * time.Second

// statementSpans matches pgtrace's statement spans in traceID.
func statementSpans(traceID string) func(otlptest.Span) bool {
	return func(s otlptest.Span) bool {
		return s.TraceID() == traceID && s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT
	}
}

// spanNamed matches the spans called name in traceID.
func spanNamed(traceID, name string) func(otlptest.Span) bool {
	return func(s otlptest.Span) bool { return s.TraceID() == traceID && s.GetName() == name }
}

// nPlusOne waits for the N+1 finding of traceID to reach count, and
// returns it.
func (p *proxy) nPlusOne(t *testing.T, traceID string, count int64) detector.Finding {
	t.Helper()
	var got detector.Finding
	deadline := time.Now().Add(namedWait)
	for {
		for _, f := range p.Detector.Findings(detector.FindingNPlusOne, time.Time{}) {
			if f.TraceID == traceID {
				got = f
			}
		}
		if got.Count >= count || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got.Count != count {
		t.Fatalf("N+1 finding of trace %s: %+v; want count %d (all findings: %+v)", traceID, got, count,
			p.Detector.Findings("", time.Time{}))
	}
	return got
}

// checkParented checks 8 statement spans of summary in traceID: children of
// spanID, or, in a transaction, of the transaction span that is.
func checkParented(t *testing.T, rcv *otlptest.Receiver, traceID, spanID, summary string, inTx bool) {
	t.Helper()
	spans := rcv.WaitSpans(t, namedWait, 8, spanNamed(traceID, summary))
	want := spanID
	if inTx {
		tx := rcv.WaitSpans(t, namedWait, 1, spanNamed(traceID, "transaction"))
		if len(tx) != 1 || tx[0].ParentSpanID() != spanID {
			t.Fatalf("%d transaction spans in the trace, want 1 under %s", len(tx), spanID)
		}
		want = tx[0].SpanID()
	}
	if len(spans) != 8 {
		t.Fatalf("%d %q spans in the comment's trace, want 8", len(spans), summary)
	}
	for _, s := range spans {
		if s.ParentSpanID() != want {
			t.Errorf("span %s has parent %s, want %s", s.GetName(), s.ParentSpanID(), want)
		}
	}
}

func TestNamedStatementsCarryTheirTraceContext(t *testing.T) {
	rcv := otlptest.Start(t)
	otlpEnv(t, rcv)
	p := startProxy(t, time.Minute)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.dsn())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	// pgx's default mode prepares each text once by name (Parse, Describe,
	// Sync) and then runs it by name; only the Parse carries the comment.
	for _, inTx := range []bool{false, true} {
		t.Run(fmt.Sprintf("pgx statement cache, in a transaction %v", inTx), func(t *testing.T) {
			tp, traceID, spanID := newTraceparent()
			sql := "SELECT relname FROM pg_class WHERE oid = $1 /*traceparent='" + tp + "'*/"
			if inTx {
				if _, err := conn.Exec(ctx, "begin"); err != nil {
					t.Fatal(err)
				}
			}
			for range 8 {
				var name string
				if err := conn.QueryRow(ctx, sql, pgx.QueryExecModeCacheStatement, 1259).Scan(&name); err != nil {
					t.Fatal(err)
				}
			}
			if inTx {
				if _, err := conn.Exec(ctx, "commit"); err != nil {
					t.Fatal(err)
				}
			}
			checkParented(t, rcv, traceID, spanID, "SELECT pg_class", inTx)
			if f := p.nPlusOne(t, traceID, 8); f.ParentSpanID != spanID {
				t.Errorf("N+1 finding names parent span %s, want %s", f.ParentSpanID, spanID)
			}
		})
	}

	t.Run("raw frontend: Parse once, Close, Parse again, DISCARD ALL", func(t *testing.T) {
		fe := conn.PgConn().Frontend()
		roundTrip := func(msgs ...pgproto3.FrontendMessage) {
			t.Helper()
			for _, m := range msgs {
				fe.Send(m)
			}
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			for {
				m, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					return
				}
			}
		}
		execute := []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "raw1"}, &pgproto3.Execute{}, &pgproto3.Sync{}}
		tp, traceID, spanID := newTraceparent()
		roundTrip(&pgproto3.Parse{Name: "raw1", Query: "SELECT count(*) FROM pg_namespace /*traceparent='" + tp + "'*/"}, &pgproto3.Sync{})
		for range 8 {
			roundTrip(execute...)
		}
		checkParented(t, rcv, traceID, spanID, "SELECT pg_namespace", false)
		p.nPlusOne(t, traceID, 8)

		// Closed and parsed again with another request's traceparent: the
		// new parent applies, the old trace gets nothing more.
		tp2, traceID2, spanID2 := newTraceparent()
		roundTrip(&pgproto3.Close{ObjectType: 'S', Name: "raw1"},
			&pgproto3.Parse{Name: "raw1", Query: "SELECT count(*) FROM pg_namespace /*traceparent='" + tp2 + "'*/"}, &pgproto3.Sync{})
		for range 8 {
			roundTrip(execute...)
		}
		checkParented(t, rcv, traceID2, spanID2, "SELECT pg_namespace", false)

		// After DISCARD ALL the name is gone, and so is its context: the
		// Bind that still uses it fails, as a statement pgtrace knows no
		// text for, in no trace.
		roundTrip(&pgproto3.Query{String: "DISCARD ALL"})
		roundTrip(execute...)
		failed := rcv.WaitSpans(t, namedWait, 1, func(s otlptest.Span) bool {
			v, _ := otlptest.Attr(s.GetAttributes(), "db.response.status_code")
			return v == "26000"
		})
		if f := failed[0]; f.GetName() != "UNKNOWN" || f.ParentSpanID() != "" || f.TraceID() == traceID2 {
			t.Errorf("execution after DISCARD ALL: span %q in trace %s under %q; want UNKNOWN, a root", f.GetName(), f.TraceID(), f.ParentSpanID())
		}
		if n := len(rcv.WaitSpans(t, namedWait, 8, spanNamed(traceID, "SELECT pg_namespace"))); n != 8 {
			t.Errorf("the first trace has %d spans, want 8", n)
		}
	})

	t.Run("SQL PREPARE and EXECUTE", func(t *testing.T) {
		tp, traceID, spanID := newTraceparent()
		mustExec := func(sql string) {
			t.Helper()
			if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		mustExec("PREPARE by_oid (oid) AS SELECT relname FROM pg_class WHERE oid = $1 /*traceparent='" + tp + "'*/")
		for i := range 8 {
			mustExec(fmt.Sprintf("EXECUTE by_oid(%d)", 1259+i))
		}
		checkParented(t, rcv, traceID, spanID, "SELECT pg_class", false)
		// Counted as the statement it runs, under that statement's
		// fingerprint, as pg_stat_statements counts it.
		res := p.Analyzer.Analyze("SELECT relname FROM pg_class WHERE oid = $1")
		want := res.Query(0).Fingerprint
		for _, s := range rcv.WaitSpans(t, namedWait, 8, spanNamed(traceID, "SELECT pg_class")) {
			if fp, _ := otlptest.Attr(s.GetAttributes(), "pgtrace.fingerprint"); fp != want {
				t.Errorf("EXECUTE fingerprint %v, want the prepared SELECT's %s", fp, want)
			}
		}
		if f := p.nPlusOne(t, traceID, 8); f.Fingerprint != want {
			t.Errorf("N+1 finding fingerprint %s, want %s", f.Fingerprint, want)
		}
		// An EXECUTE with a comment of its own is parented by it.
		tp2, traceID2, spanID2 := newTraceparent()
		mustExec("EXECUTE by_oid(1) /*traceparent='" + tp2 + "'*/")
		if s := rcv.WaitSpans(t, namedWait, 1, spanNamed(traceID2, "SELECT pg_class"))[0]; s.ParentSpanID() != spanID2 {
			t.Errorf("EXECUTE with its own comment: parent %s, want %s", s.ParentSpanID(), spanID2)
		}
		mustExec("DEALLOCATE by_oid")
	})

	t.Run("a portal fetched in parts is one statement", func(t *testing.T) {
		tp, traceID, spanID := newTraceparent()
		sql := "SELECT g FROM generate_series(1, 1000) g /*traceparent='" + tp + "'*/"
		if _, err := conn.Exec(ctx, "begin"); err != nil {
			t.Fatal(err)
		}
		// Execute with a row limit of 100, as JDBC's fetch size does: 10
		// PortalSuspended and a CommandComplete, 11 round trips.
		pc := conn.PgConn()
		if _, err := pc.Prepare(ctx, "fetch_g", sql, nil); err != nil {
			t.Fatal(err)
		}
		fe := pc.Frontend()
		fe.Send(&pgproto3.Bind{PreparedStatement: "fetch_g", DestinationPortal: "cur_g"})
		rows := 0
		for done := false; !done; {
			fe.Send(&pgproto3.Execute{Portal: "cur_g", MaxRows: 100})
			fe.Send(&pgproto3.Sync{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			for ready := false; !ready; {
				m, err := fe.Receive()
				if err != nil {
					t.Fatal(err)
				}
				switch m := m.(type) {
				case *pgproto3.DataRow:
					rows++
				case *pgproto3.CommandComplete:
					done = true
				case *pgproto3.ErrorResponse:
					t.Fatalf("fetch: %s", m.Message)
				case *pgproto3.ReadyForQuery:
					ready = true
				}
			}
		}
		if _, err := conn.Exec(ctx, "commit"); err != nil {
			t.Fatal(err)
		}
		if rows != 1000 {
			t.Fatalf("fetched %d rows, want 1000", rows)
		}
		// Wait for the COMMIT's span: by then the portal's has come too.
		rcv.WaitSpans(t, namedWait, 1, spanNamed(traceID, "transaction"))
		spans := rcv.WaitSpans(t, namedWait, 1, spanNamed(traceID, "SELECT"))
		if len(spans) != 1 {
			t.Fatalf("%d spans for the portal, want 1", len(spans))
		}
		a := otlptest.Attrs(spans[0].GetAttributes())
		if a["db.response.returned_rows"] != int64(1000) || a["pgtrace.fetches"] != int64(11) {
			t.Errorf("portal span: returned_rows %v, fetches %v; want 1000 and 11", a["db.response.returned_rows"], a["pgtrace.fetches"])
		}
		fp, _ := a["pgtrace.fingerprint"].(string)
		var calls, n int64
		for _, q := range p.Detector.Queries(detector.SortTotal, 0) {
			if q.Fingerprint == fp {
				calls, n = q.Calls, q.Rows
			}
		}
		if calls != 1 || n != 1000 {
			t.Errorf("/api/queries: %d calls, %d rows; want 1 call of 1000 rows", calls, n)
		}
		for _, f := range p.Detector.Findings(detector.FindingNPlusOne, time.Time{}) {
			if f.TraceID == traceID {
				t.Errorf("a portal fetched in parts made an N+1 finding: %+v", f)
			}
		}
		_ = spanID
	})
}

// TestAsyncpgStatementCache runs asyncpg, which prepares every statement by
// name (its statement cache, on by default), from Debian's python3-asyncpg.
func TestAsyncpgStatementCache(t *testing.T) {
	python := "/usr/bin/python3" // Debian's packages are for Debian's Python
	if _, err := os.Stat(python); err != nil {
		python = "python3"
	}
	if out, err := exec.Command(python, "-c", "import asyncpg").CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import asyncpg (%v: %s): .ci/run installs Debian's python3-asyncpg", python, err, strings.TrimSpace(string(out)))
	}
	rcv := otlptest.Start(t)
	otlpEnv(t, rcv)
	p := startProxy(t, time.Minute)
	for _, inTx := range []bool{false, true} {
		t.Run(fmt.Sprintf("in a transaction %v", inTx), func(t *testing.T) {
			tp, traceID, spanID := newTraceparent()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, python, filepath.Join("testdata", "asyncpg_cache.py"), p.dsn(), tp, fmt.Sprint(inTx))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("asyncpg: %v\n%s", err, out)
			}
			checkParented(t, rcv, traceID, spanID, "SELECT pg_class", inTx)
			if f := p.nPlusOne(t, traceID, 8); f.ParentSpanID != spanID {
				t.Errorf("N+1 finding names parent span %s, want %s", f.ParentSpanID, spanID)
			}
		})
	}
}
