package detector

import (
	"testing"
	"time"

	"github.com/dotmac/pgtrace/wire"
)

// TestFindingTypes: every type the detector makes is in the list once,
// with a title, and the counters named in the contract keep their names.
func TestFindingTypes(t *testing.T) {
	wantCounters := map[FindingType]string{
		FindingSlowQuery:         "pgtrace.slow_queries",
		FindingNPlusOne:          "db.n_plus_one.detected",
		FindingIdleInTransaction: "pgtrace.idle_in_transaction",
		FindingConnectionChurn:   "pgtrace.connection_churn",
	}
	seen := map[FindingType]bool{}
	for _, fi := range FindingTypes() {
		if seen[fi.Type] {
			t.Errorf("%s listed twice", fi.Type)
		}
		seen[fi.Type] = true
		if fi.Title == "" {
			t.Errorf("%s has no title", fi.Type)
		}
		if want, ok := wantCounters[fi.Type]; ok && fi.Counter.Name != want {
			t.Errorf("%s counted in %q, want %q", fi.Type, fi.Counter.Name, want)
		}
		if got, ok := LookupFindingType(fi.Type); !ok || got != fi {
			t.Errorf("LookupFindingType(%s) = %+v, %v", fi.Type, got, ok)
		}
	}
	for typ := range wantCounters {
		if !seen[typ] {
			t.Errorf("%s is not listed", typ)
		}
	}
	if _, ok := LookupFindingType("bogus"); ok {
		t.Error("bogus type found")
	}
	// The list is a copy: a caller cannot change the detector's.
	FindingTypes()[0].Title = "changed"
	if FindingTypes()[0].Title == "changed" {
		t.Error("FindingTypes returns the detector's own slice")
	}
}

// TestFindingsReturned: Observe returns a statement's findings in its
// Verdict, ObserveConn and Tick return theirs, each once, and a statement
// without findings allocates nothing for them.
func TestFindingsReturned(t *testing.T) {
	d := New(Config{NPlusOneThreshold: 3, IdleInTxThreshold: time.Second, ChurnThreshold: 2, ChurnWindow: time.Minute})
	c := conn(1, "api")
	clk := clock{t0}
	var v Verdict
	for range 3 {
		v = d.Observe(stmt(c, qUser, clk.next(time.Millisecond), 200*time.Millisecond, wire.TxIdle, traceCtx(1, 1)))
	}
	if len(v.Findings) != 2 || v.Findings[0].Type != FindingSlowQuery || v.Findings[1].Type != FindingNPlusOne {
		t.Errorf("third execution's findings %+v, want slow_query and n_plus_one", v.Findings)
	}
	if v = d.Observe(stmt(c, qUser, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(1, 1))); v.Findings != nil {
		t.Errorf("a fast repetition of a detected group made findings %+v", v.Findings)
	}

	in := conn(2, "api")
	d.Observe(stmt(in, qBegin, clk.next(time.Millisecond), time.Millisecond, wire.TxInBlock, traceCtx(2, 1)))
	if fs := d.Tick(clk.t.Add(2 * time.Second)); len(fs) != 1 || fs[0].Type != FindingIdleInTransaction {
		t.Errorf("Tick returned %+v, want one idle_in_transaction", fs)
	}
	if fs := d.Tick(clk.t.Add(3 * time.Second)); fs != nil {
		t.Errorf("second Tick returned %+v, want nothing new", fs)
	}
	var churn []Finding
	for i := range 2 {
		cc := conn(uint64(10+i), "cron")
		d.ObserveConn(wire.Event{Kind: wire.ConnOpened, Time: clk.t, Conn: *cc})
		churn = append(churn, d.ObserveConn(wire.Event{Kind: wire.ConnClosed, Time: clk.next(time.Millisecond), Conn: *cc})...)
	}
	if len(churn) != 1 || churn[0].Type != FindingConnectionChurn {
		t.Errorf("ObserveConn returned %+v, want one connection_churn", churn)
	}

	quiet := stmt(c, qOrder, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(3, 1))
	d.Observe(quiet)
	if n := testing.AllocsPerRun(100, func() { d.Observe(quiet) }); n != 0 {
		t.Errorf("Observe of a statement without findings allocates %v times", n)
	}
}

// TestSetTraceID: a finding without trace context gets the trace id of its
// statement's span, in the ring too; one with a trace id keeps it.
func TestSetTraceID(t *testing.T) {
	d := New(Config{})
	v := d.Observe(stmt(conn(1, "api"), qUser, t0, 200*time.Millisecond, wire.TxIdle, traceCtx(0, 0)))
	if len(v.Findings) != 1 || v.Findings[0].TraceID != "" {
		t.Fatalf("findings %+v, want one without trace id", v.Findings)
	}
	const tid = "0af7651916cd43dd8448eb211c80319c"
	d.SetTraceID(&v.Findings[0], tid)
	if v.Findings[0].TraceID != tid {
		t.Errorf("returned finding's trace id %q", v.Findings[0].TraceID)
	}
	if fs := d.Findings(FindingSlowQuery, time.Time{}); len(fs) != 1 || fs[0].TraceID != tid {
		t.Errorf("ring's finding %+v, want trace id %s", fs, tid)
	}

	v = d.Observe(stmt(conn(1, "api"), qUser, t0.Add(time.Second), 200*time.Millisecond, wire.TxIdle, traceCtx(7, 7)))
	own := v.Findings[0].TraceID
	d.SetTraceID(&v.Findings[0], tid)
	if v.Findings[0].TraceID != own {
		t.Errorf("a finding with trace context got another trace id: %q", v.Findings[0].TraceID)
	}
	// After a Reset the ring no longer holds it: nothing to update, no panic.
	d.Reset()
	f := Finding{seq: 1}
	d.SetTraceID(&f, tid)
}
