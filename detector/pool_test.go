package detector

import (
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

const testPool = "shop/app"

func TestPoolExhausted(t *testing.T) {
	d := New(Config{PoolSize: 4, PoolExhaustedThreshold: time.Second, PoolEpisodeGap: time.Minute})
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	waited := func(end float64, wait time.Duration, timedOut bool) []Finding {
		e := at(end)
		return d.ObservePool(PoolEvent{Kind: PoolWaited, Pool: testPool, Time: e, Start: e.Add(-wait), Wait: wait, TimedOut: timedOut})
	}
	for _, w := range []time.Duration{0, 3 * time.Millisecond, 999 * time.Millisecond} {
		if fs := waited(1, w, false); fs != nil {
			t.Errorf("a wait of %v made %+v", w, fs)
		}
	}
	fs := waited(2, 1500*time.Millisecond, false)
	if len(fs) != 1 || fs[0].Type != FindingPoolExhausted || fs[0].Count != 1 || fs[0].TotalDurationMs != 1500 ||
		!strings.Contains(fs[0].Detail, "pool "+testPool) || !fs[0].FirstSeen.Equal(at(0.5)) {
		t.Fatalf("first long wait: %+v", fs)
	}
	// The same episode: counted, not reported again.
	if fs := waited(10, 2*time.Second, false); fs != nil {
		t.Errorf("second long wait in the episode made %+v", fs)
	}
	if fs := waited(20, 30*time.Millisecond, true); fs != nil { // gave up (a short --pool-max-wait)
		t.Errorf("a timeout in the episode made %+v", fs)
	}
	got := d.Findings(FindingPoolExhausted, time.Time{})
	if len(got) != 1 || got[0].Count != 3 || !got[0].LastSeen.Equal(at(20)) || !strings.Contains(got[0].Detail, "1 gave up") ||
		!strings.Contains(got[0].Detail, "longest wait 2s") {
		t.Errorf("the episode's finding: %+v", got)
	}
	// A minute and more later: a new episode, a new finding.
	if fs := waited(90, 1200*time.Millisecond, false); len(fs) != 1 || fs[0].Count != 1 {
		t.Errorf("after the gap: %+v, want a new finding", fs)
	}
	// Another pool has episodes of its own.
	e := at(91)
	if fs := d.ObservePool(PoolEvent{Kind: PoolWaited, Pool: "shop/other", Time: e, Start: e.Add(-time.Minute), Wait: time.Minute, TimedOut: true}); len(fs) != 1 {
		t.Errorf("another pool's timeout: %+v", fs)
	}
	if n := len(d.Findings(FindingPoolExhausted, time.Time{})); n != 3 {
		t.Errorf("%d pool_exhausted findings, want 3", n)
	}
}

// TestPoolExhaustedWhileWaiting: a tick sees a client waiting past the
// threshold and reports at once; its wait, when it ends, completes the
// same finding without counting the client twice.
func TestPoolExhaustedWhileWaiting(t *testing.T) {
	d := New(Config{PoolExhaustedThreshold: time.Second})
	start := t0
	if fs := d.ObservePool(PoolEvent{Kind: PoolWaiting, Pool: testPool, Time: start.Add(500 * time.Millisecond), Start: start, Waiting: 1}); fs != nil {
		t.Errorf("a client waiting 500ms: %+v", fs)
	}
	fs := d.ObservePool(PoolEvent{Kind: PoolWaiting, Pool: testPool, Time: start.Add(2 * time.Second), Start: start, Waiting: 3})
	if len(fs) != 1 || fs[0].Count != 1 || !strings.Contains(fs[0].Detail, "3 waiting") {
		t.Fatalf("a client waiting 2s: %+v", fs)
	}
	d.ObservePool(PoolEvent{Kind: PoolWaiting, Pool: testPool, Time: start.Add(3 * time.Second), Start: start, Waiting: 2})
	if fs := d.ObservePool(PoolEvent{Kind: PoolWaited, Pool: testPool, Time: start.Add(5 * time.Second), Start: start, Wait: 5 * time.Second}); fs != nil {
		t.Errorf("its wait ended: %+v", fs)
	}
	got := d.Findings(FindingPoolExhausted, time.Time{})
	if len(got) != 1 || got[0].Count != 1 || got[0].TotalDurationMs != 5000 {
		t.Errorf("finding %+v, want one client, 5s in all", got)
	}
}

func TestPoolChurn(t *testing.T) {
	d := New(Config{PoolSize: 2, PoolChurnWindow: time.Minute})
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	open := func(s int) []Finding { return d.ObservePool(PoolEvent{Kind: PoolOpened, Pool: testPool, Time: at(s)}) }
	closed := func(s int, reason string) {
		d.ObservePool(PoolEvent{Kind: PoolClosed, Pool: testPool, Time: at(s), Reason: reason})
	}
	// Opened slowly: a connection a minute and more apart is no churn.
	for _, s := range []int{0, 70, 140, 210} {
		if fs := open(s); fs != nil {
			t.Errorf("opening at %ds: %+v", s, fs)
		}
		closed(s+1, "lifetime")
	}
	// Three within a minute, for a pool of 2.
	open(300)
	closed(301, "broken")
	open(302)
	closed(303, "broken")
	fs := open(304)
	if len(fs) != 1 || fs[0].Type != FindingPoolChurn || fs[0].Count != 3 || !fs[0].FirstSeen.Equal(at(300)) ||
		!strings.Contains(fs[0].Detail, "broken 2") || strings.Contains(fs[0].Detail, "lifetime") {
		t.Fatalf("third opening within a minute: %+v", fs)
	}
	closed(305, "reset_failed")
	if fs := open(306); fs != nil {
		t.Errorf("fourth opening in the episode: %+v", fs)
	}
	got := d.Findings(FindingPoolChurn, time.Time{})
	if len(got) != 1 || got[0].Count != 4 || !strings.Contains(got[0].Detail, "reset_failed 1") {
		t.Errorf("the episode's finding: %+v", got)
	}
	// Quiet for more than a window: the episode ended; churn again is a
	// new finding.
	open(500)
	open(501)
	if fs := open(502); len(fs) != 1 || fs[0].Count != 3 {
		t.Errorf("churn after a quiet window: %+v, want a new finding", fs)
	}
}

func TestSessionStateInTransactionPool(t *testing.T) {
	sess := func(fp, text string, uses ...fingerprint.SessionUse) *fingerprint.Query {
		q := query(fp, text, strings.Fields(text)[0])
		q.Session = uses
		return q
	}
	qSearchPath := sess("1111111111111111", "SET search_path TO app", fingerprint.SessionUse{Feature: fingerprint.SessionSet, Name: "search_path"})
	qTZ := sess("2222222222222222", "SET TIME ZONE $1", fingerprint.SessionUse{Feature: fingerprint.SessionSet, Name: "timezone"})
	qLock := sess("3333333333333333", "SELECT pg_advisory_lock($1)", fingerprint.SessionUse{Feature: fingerprint.SessionAdvisoryLock, Name: "pg_advisory_lock"})

	for _, mode := range []string{"", "none", "session"} {
		d := New(Config{PoolMode: mode})
		if v := d.Observe(stmt(conn(1, "api"), qSearchPath, t0, time.Millisecond, wire.TxIdle, traceCtx(0, 0))); v.Findings != nil {
			t.Errorf("pool mode %q: %+v", mode, v.Findings)
		}
	}

	d := New(Config{PoolMode: "transaction"})
	clk := clock{t0}
	c := conn(1, "api")
	v := d.Observe(stmt(c, qSearchPath, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(1, 2)))
	if len(v.Findings) != 1 {
		t.Fatalf("SET search_path: %+v", v.Findings)
	}
	f := v.Findings[0]
	if f.Type != FindingSessionState || f.Fingerprint != qSearchPath.Fingerprint || f.Query != qSearchPath.Normalized ||
		f.Application != "api" || f.TraceID != strings.Repeat("01", 16) || !strings.Contains(f.Detail, "SET search_path") ||
		!strings.Contains(f.Detail, "SET LOCAL") {
		t.Errorf("finding %+v", f)
	}
	// Once per fingerprint; its executions counted.
	for range 2 {
		if v := d.Observe(stmt(c, qSearchPath, clk.next(time.Millisecond), time.Millisecond, wire.TxInBlock, traceCtx(0, 0))); v.Findings != nil {
			t.Errorf("again: %+v", v.Findings)
		}
	}
	if got := d.Findings(FindingSessionState, time.Time{}); len(got) != 1 || got[0].Count != 3 {
		t.Errorf("ring: %+v, want one finding counting 3", got)
	}
	// A parameter the pool carries to every server connection works.
	if v := d.Observe(stmt(c, qTZ, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(0, 0))); v.Findings != nil {
		t.Errorf("SET TIME ZONE: %+v", v.Findings)
	}
	// A failed statement leaves nothing behind.
	failed := stmt(c, qLock, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(0, 0))
	failed.Stmt.Outcome, failed.Stmt.SQLState = wire.OutcomeError, "42883"
	if v := d.Observe(failed); v.Findings != nil {
		t.Errorf("failed advisory lock: %+v", v.Findings)
	}
	if v := d.Observe(stmt(c, qLock, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(0, 0))); len(v.Findings) != 1 ||
		!strings.Contains(v.Findings[0].Detail, "pg_advisory_xact_lock") {
		t.Errorf("advisory lock: %+v", v.Findings)
	}
	// Reset forgets: the next is a new finding.
	d.Reset()
	if v := d.Observe(stmt(c, qSearchPath, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(0, 0))); len(v.Findings) != 1 {
		t.Errorf("after Reset: %+v", v.Findings)
	}
}
