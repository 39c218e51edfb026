package detector

import (
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

func TestSlowQuery(t *testing.T) {
	tests := []struct {
		name   string
		dur    time.Duration
		parent fingerprint.TraceContext
		failed bool
		want   bool
	}{
		{name: "200ms with trace context", dur: 200 * time.Millisecond, parent: traceCtx(9, 3), want: true},
		{name: "200ms without trace context", dur: 200 * time.Millisecond, want: true},
		{name: "exactly the threshold", dur: 100 * time.Millisecond, want: true},
		{name: "just under", dur: 100*time.Millisecond - time.Microsecond, want: false},
		{name: "failed and slow", dur: 150 * time.Millisecond, failed: true, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(Config{})
			rec := &recorder{d: d}
			s := stmt(conn(3, "billing"), qOrder, t0, tt.dur, wire.TxIdle, tt.parent)
			if tt.failed {
				s.Stmt.Outcome, s.Stmt.SQLState, s.Stmt.ErrorMessage = wire.OutcomeError, "57014", "secret value 'x'"
			}
			v := rec.Observe(s)
			if v.Slow != tt.want {
				t.Errorf("Verdict.Slow = %v, want %v", v.Slow, tt.want)
			}
			fs := d.Findings(FindingSlowQuery, time.Time{})
			if !tt.want {
				if len(fs) != 0 || len(rec.got) != 0 {
					t.Errorf("unexpected findings %+v", fs)
				}
				return
			}
			if len(fs) != 1 || len(rec.got) != 1 {
				t.Fatalf("findings %+v, announced %d; want one", fs, len(rec.got))
			}
			f := fs[0]
			wantTrace, wantSpan := "", ""
			if tt.parent.IsValid() {
				wantTrace, wantSpan = hex.EncodeToString(tt.parent.TraceID[:]), hex.EncodeToString(tt.parent.SpanID[:])
			}
			if f.TraceID != wantTrace || f.ParentSpanID != wantSpan {
				t.Errorf("trace %q span %q, want %q %q", f.TraceID, f.ParentSpanID, wantTrace, wantSpan)
			}
			if f.Fingerprint != qOrder.Fingerprint || f.Query != qOrder.Normalized || f.Application != "billing" || f.Count != 1 {
				t.Errorf("finding %+v", f)
			}
			if f.TotalDurationMs != float64(tt.dur)/1e6 {
				t.Errorf("duration %.3f ms, want %v", f.TotalDurationMs, tt.dur)
			}
			if tt.failed && (!strings.Contains(f.Detail, "57014") || strings.Contains(f.Detail, "secret")) {
				t.Errorf("detail %q: want the SQLSTATE and not the error message", f.Detail)
			}
		})
	}
}

func TestIdleInTransaction(t *testing.T) {
	d := New(Config{})
	rec := &recorder{d: d}
	c := conn(4, "reports")
	rec.ObserveConn(wire.Event{Kind: wire.ConnOpened, Time: t0, Conn: *c})
	// BEGIN; SELECT … then nothing for a while.
	rec.Observe(stmt(c, qBegin, t0, time.Millisecond, wire.TxInBlock, fingerprint.TraceContext{}))
	rec.Observe(stmt(c, qUser, t0.Add(2*time.Millisecond), time.Millisecond, wire.TxInBlock, fingerprint.TraceContext{}))
	idleFrom := t0.Add(3 * time.Millisecond)

	rec.Tick(idleFrom.Add(5 * time.Second))
	if n := len(d.Findings(FindingIdleInTransaction, time.Time{})); n != 0 {
		t.Fatalf("finding after 5s, threshold 10s")
	}
	rec.Tick(idleFrom.Add(11 * time.Second))
	rec.Tick(idleFrom.Add(12 * time.Second))
	fs := d.Findings(FindingIdleInTransaction, time.Time{})
	if len(fs) != 1 || len(rec.got) != 1 {
		t.Fatalf("findings %+v announced %d; want one, once", fs, len(rec.got))
	}
	if f := fs[0]; f.Application != "reports" || f.Fingerprint != qUser.Fingerprint || f.TotalDurationMs != 12000 ||
		!strings.Contains(f.Detail, "backend pid 1004") || !strings.Contains(f.Detail, "10.0.0.5") {
		t.Errorf("finding %+v", f)
	}
	// The episode ends when the next statement starts: 15s idle in all.
	rec.Observe(stmt(c, qCommit, idleFrom.Add(15*time.Second), time.Millisecond, wire.TxIdle, fingerprint.TraceContext{}))
	if f := d.Findings(FindingIdleInTransaction, time.Time{})[0]; f.TotalDurationMs != 15000 {
		t.Errorf("final idle %.0f ms, want 15000", f.TotalDurationMs)
	}
	rec.Tick(idleFrom.Add(30 * time.Second))
	if n := len(d.Findings(FindingIdleInTransaction, time.Time{})); n != 1 {
		t.Errorf("%d findings after COMMIT, want still 1", n)
	}
	// A second episode, entered through a TxStatus event, in a failed transaction.
	at := idleFrom.Add(40 * time.Second)
	e := wire.Event{Kind: wire.TxStatus, Time: at, Conn: *c}
	e.Conn.TxStatus = wire.TxFailed
	rec.ObserveConn(e)
	rec.Tick(at.Add(10 * time.Second))
	fs = d.Findings(FindingIdleInTransaction, time.Time{})
	if len(fs) != 2 || !strings.Contains(fs[0].Detail, "failed transaction") {
		t.Fatalf("findings %+v, want a second, failed-transaction episode first", fs)
	}
	// Closing the connection ends the episode and counts its time.
	rec.ObserveConn(wire.Event{Kind: wire.ConnClosed, Time: at.Add(20 * time.Second), Conn: *c, Statements: 3})
	// 1ms between BEGIN and SELECT, 15s before COMMIT, 20s before the close.
	want := 15*time.Second + 20*time.Second + time.Millisecond
	if got := d.IdleInTransaction("reports", at.Add(time.Hour)); got != want {
		t.Errorf("idle in transaction for reports = %v, want %v", got, want)
	}
	if got := d.Stats().IdleInTransaction["reports"]; got != want {
		t.Errorf("Stats().IdleInTransaction = %v, want %v", got, want)
	}
	if d.Stats().Connections != 0 {
		t.Errorf("closed connection still tracked")
	}
}

func TestIdleInTransactionCountsOpenStretch(t *testing.T) {
	d := New(Config{})
	c := conn(5, "etl")
	d.Observe(stmt(c, qBegin, t0, time.Millisecond, wire.TxInBlock, fingerprint.TraceContext{}))
	if got := d.IdleInTransaction("etl", t0.Add(time.Second+time.Millisecond)); got != time.Second {
		t.Errorf("open idle stretch = %v, want 1s", got)
	}
}

func TestConnectionChurn(t *testing.T) {
	type conns struct {
		app        string
		n          int
		every      time.Duration
		statements int64
		authFailed bool
	}
	tests := []struct {
		name  string
		conns []conns
		want  map[string]int64 // application → count
	}{
		{name: "ten one-statement connections in 5s", conns: []conns{{app: "cron", n: 10, every: 500 * time.Millisecond, statements: 1}}, want: map[string]int64{"cron": 10}},
		{name: "keeps counting", conns: []conns{{app: "cron", n: 25, every: 100 * time.Millisecond, statements: 2}}, want: map[string]int64{"cron": 25}},
		{name: "too slow to be churn", conns: []conns{{app: "cron", n: 10, every: 2 * time.Second, statements: 1}}, want: map[string]int64{}},
		{name: "long-lived sessions", conns: []conns{{app: "web", n: 20, every: 100 * time.Millisecond, statements: 3}}, want: map[string]int64{}},
		{name: "failed logins are not churn", conns: []conns{{app: "web", n: 20, every: 100 * time.Millisecond, authFailed: true}}, want: map[string]int64{}},
		{
			name: "per application",
			conns: []conns{
				{app: "a", n: 6, every: 100 * time.Millisecond, statements: 1},
				{app: "b", n: 12, every: 100 * time.Millisecond, statements: 0},
			},
			want: map[string]int64{"b": 12},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(Config{})
			rec := &recorder{d: d}
			id := uint64(0)
			for _, cs := range tt.conns {
				at := t0
				for i := 0; i < cs.n; i++ {
					id++
					c := conn(id, cs.app)
					rec.ObserveConn(wire.Event{Kind: wire.ConnOpened, Time: at, Conn: *c})
					if cs.authFailed {
						rec.ObserveConn(wire.Event{Kind: wire.ConnAuthFailed, Time: at, Conn: *c})
					}
					rec.ObserveConn(wire.Event{Kind: wire.ConnClosed, Time: at.Add(10 * time.Millisecond), Conn: *c, Statements: cs.statements})
					at = at.Add(cs.every)
				}
			}
			got := map[string]int64{}
			for _, f := range d.Findings(FindingConnectionChurn, time.Time{}) {
				got[f.Application] = f.Count
				if !strings.Contains(f.Detail, "no connection pool") {
					t.Errorf("detail %q", f.Detail)
				}
			}
			if !equalCounts(got, tt.want) {
				t.Errorf("churn = %v, want %v", got, tt.want)
			}
			if len(rec.got) != len(tt.want) {
				t.Errorf("announced %d, want %d", len(rec.got), len(tt.want))
			}
		})
	}
}

func TestQueryStatistics(t *testing.T) {
	d := New(Config{})
	clk := clock{t0}
	// qUser: 100 calls of 1..100 ms, two applications, one tenant, 10 traced.
	for i := 1; i <= 100; i++ {
		app := "api"
		if i%2 == 0 {
			app = "worker"
		}
		s := stmt(conn(1, app), qUser, clk.next(time.Second), time.Duration(i)*time.Millisecond, wire.TxIdle, fingerprint.TraceContext{})
		if i%10 == 0 {
			s.Parent = traceCtx(byte(i), 1)
		}
		if i == 50 {
			s.Stmt.Outcome = wire.OutcomeError
			s.Stmt.Rows = 0
		}
		s.Tags.Tenant = "acme"
		d.Observe(s)
	}
	// qOrder: 300 calls of 1 ms. qItem: 2 calls of 400 ms.
	for i := 0; i < 300; i++ {
		d.Observe(stmt(conn(2, "api"), qOrder, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, fingerprint.TraceContext{}))
	}
	for i := 0; i < 2; i++ {
		d.Observe(stmt(conn(2, "api"), qItem, clk.next(time.Millisecond), 400*time.Millisecond, wire.TxIdle, fingerprint.TraceContext{}))
	}

	qs := d.Queries(SortTotal, 0)
	if len(qs) != 3 {
		t.Fatalf("%d queries, want 3", len(qs))
	}
	u := qs[0]
	if u.Fingerprint != qUser.Fingerprint {
		t.Fatalf("by total, first is %s, want users (5050 ms)", u.Summary)
	}
	approx := func(name string, got, want, rel float64) {
		t.Helper()
		if d := got - want; d > want*rel || -d > want*rel {
			t.Errorf("%s = %.4f, want %.4f ±%.0f%%", name, got, want, rel*100)
		}
	}
	if u.Calls != 100 || u.Errors != 1 || u.Rows != 99 {
		t.Errorf("calls %d errors %d rows %d", u.Calls, u.Errors, u.Rows)
	}
	approx("total_ms", u.TotalMs, 5050, 1e-9)
	approx("mean_ms", u.MeanMs, 50.5, 1e-9)
	approx("min_ms", u.MinMs, 1, 1e-9)
	approx("max_ms", u.MaxMs, 100, 1e-9)
	approx("p50_ms", u.P50Ms, 50, SketchRelativeAccuracy)
	approx("p95_ms", u.P95Ms, 95, SketchRelativeAccuracy)
	approx("p99_ms", u.P99Ms, 99, SketchRelativeAccuracy)
	if !u.FirstSeen.Equal(t0.Add(time.Second+time.Millisecond)) || !u.LastSeen.Equal(t0.Add(100*time.Second+100*time.Millisecond)) {
		t.Errorf("first %v last %v", u.FirstSeen, u.LastSeen)
	}
	wantSlow := []string{strings.Repeat("64", 16), strings.Repeat("5a", 16), strings.Repeat("50", 16), strings.Repeat("46", 16), strings.Repeat("3c", 16)}
	if fmt.Sprint(u.SlowestTraceIDs) != fmt.Sprint(wantSlow) {
		t.Errorf("slowest traces %v, want %v", u.SlowestTraceIDs, wantSlow)
	}
	if fmt.Sprint(u.Applications) != "[api worker]" || fmt.Sprint(u.Tenants) != "[acme]" {
		t.Errorf("applications %v tenants %v", u.Applications, u.Tenants)
	}

	order := func(sort string, limit int) string {
		var names []string
		for _, q := range d.Queries(sort, limit) {
			names = append(names, q.Fingerprint[:2])
		}
		return strings.Join(names, ",")
	}
	for _, tt := range []struct {
		sort  string
		limit int
		want  string
	}{
		{SortTotal, 0, "a1,c3,b2"},
		{SortMean, 0, "c3,a1,b2"},
		{SortP99, 0, "c3,a1,b2"},
		{SortCalls, 0, "b2,a1,c3"},
		{SortCalls, 2, "b2,a1"},
		{"bogus", 1, "a1"},
	} {
		if got := order(tt.sort, tt.limit); got != tt.want {
			t.Errorf("Queries(%q, %d) = %s, want %s", tt.sort, tt.limit, got, tt.want)
		}
	}
}

func TestFingerprintsBoundedUnder100kDistinct(t *testing.T) {
	d := New(Config{})
	clk := clock{t0}
	c := conn(1, "api")
	heavy := query("ffffffffffffffff", "SELECT heavy", "SELECT")
	qs := make([]fingerprint.Query, 100_000)
	for i := range qs {
		qs[i] = fingerprint.Query{Fingerprint: fmt.Sprintf("%016x", i), Normalized: "SELECT $1", Operation: "SELECT"}
		// Every statement is slow, so every one also makes a finding.
		d.Observe(stmt(c, &qs[i], clk.next(time.Millisecond), 150*time.Millisecond, wire.TxIdle, traceCtx(byte(i), byte(i>>8))))
		if i%1000 == 0 {
			d.Observe(stmt(c, heavy, clk.next(time.Millisecond), time.Second, wire.TxIdle, fingerprint.TraceContext{}))
		}
	}
	st := d.Stats()
	if st.Fingerprints > 5000 || st.Fingerprints < 5000-5000/16 {
		t.Errorf("%d fingerprints, want ≤ 5000 and close to it", st.Fingerprints)
	}
	if st.FingerprintEvictions != uint64(100_000+1-st.Fingerprints) {
		t.Errorf("evictions %d, want %d", st.FingerprintEvictions, 100_000+1-st.Fingerprints)
	}
	if st.Findings != 1000 || st.FindingsDropped != uint64(100_000+100-1000) {
		t.Errorf("findings %d dropped %d", st.Findings, st.FindingsDropped)
	}
	if st.NPlusOneGroups > 10000 {
		t.Errorf("%d N+1 groups", st.NPlusOneGroups)
	}
	top := d.Queries(SortTotal, 1)
	if len(top) != 1 || top[0].Fingerprint != heavy.Fingerprint || top[0].Calls != 100 {
		t.Errorf("the heaviest fingerprint did not survive eviction: %+v", top)
	}
}

func TestSelectLeast(t *testing.T) {
	for _, n := range []int{1, 2, 3, 10, 100, 1001} {
		for _, k := range []int{1, n / 3, n / 2, n} {
			if k == 0 {
				continue
			}
			a := make([]*fpStats, n)
			for i := range a {
				// Many duplicates, in a scrambled order.
				a[i] = &fpStats{total: time.Duration((i * 7919) % (n/2 + 1))}
			}
			selectLeast(a, k)
			var maxIn time.Duration
			for _, f := range a[:k] {
				maxIn = max(maxIn, f.total)
			}
			for _, f := range a[k:] {
				if f.total < maxIn {
					t.Fatalf("n=%d k=%d: %v outside the k least but %v inside", n, k, f.total, maxIn)
				}
			}
		}
	}
}

func TestReset(t *testing.T) {
	d := New(Config{})
	c := conn(1, "api")
	d.Observe(stmt(c, qBegin, t0, time.Millisecond, wire.TxInBlock, fingerprint.TraceContext{}))
	for i := 0; i < 6; i++ {
		d.Observe(stmt(c, qUser, t0.Add(time.Duration(i+1)*time.Millisecond), 200*time.Millisecond, wire.TxInBlock, traceCtx(1, 1)))
	}
	if len(d.Queries(SortTotal, 0)) == 0 || len(d.Findings("", time.Time{})) == 0 {
		t.Fatal("nothing recorded")
	}
	d.Reset()
	if q, f, st := d.Queries(SortTotal, 0), d.Findings("", time.Time{}), d.Stats(); len(q) != 0 || len(f) != 0 || st.Findings != 0 || st.NPlusOneGroups != 0 {
		t.Errorf("after Reset: %d queries, %d findings, stats %+v", len(q), len(f), st)
	}
	// The open transaction is still watched.
	d.Tick(t0.Add(time.Minute))
	if f := d.Findings(FindingIdleInTransaction, time.Time{}); len(f) != 1 {
		t.Errorf("idle-in-transaction after Reset: %+v", f)
	}
}

func TestFindingsFilter(t *testing.T) {
	d := New(Config{})
	c := conn(1, "api")
	d.Observe(stmt(c, qUser, t0, 200*time.Millisecond, wire.TxIdle, fingerprint.TraceContext{}))
	d.Observe(stmt(c, qOrder, t0.Add(time.Minute), 300*time.Millisecond, wire.TxIdle, fingerprint.TraceContext{}))
	for i := 0; i < 5; i++ {
		d.Observe(stmt(c, qItem, t0.Add(2*time.Minute+time.Duration(i)*time.Millisecond), time.Microsecond, wire.TxIdle, traceCtx(1, 1)))
	}
	tests := []struct {
		typ   FindingType
		since time.Time
		want  string
	}{
		{"", time.Time{}, "c3,b2,a1"},
		{FindingSlowQuery, time.Time{}, "b2,a1"},
		{FindingSlowQuery, t0.Add(30 * time.Second), "b2"},
		{FindingNPlusOne, t0.Add(3 * time.Minute), ""},
		{FindingConnectionChurn, time.Time{}, ""},
	}
	for _, tt := range tests {
		var got []string
		for _, f := range d.Findings(tt.typ, tt.since) {
			got = append(got, f.Fingerprint[:2])
		}
		if strings.Join(got, ",") != tt.want {
			t.Errorf("Findings(%q, %v) = %v, want %s", tt.typ, tt.since, got, tt.want)
		}
	}
}

// TestConcurrentUse runs the pipeline's two goroutines against HTTP-style
// readers; run with -race.
func TestConcurrentUse(t *testing.T) {
	var announced sync.WaitGroup
	d := New(Config{MaxFingerprints: 50})
	done := make(chan struct{})
	announced.Add(3)
	go func() { // readers
		defer announced.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			d.Queries(SortP99, 10)
			d.Findings("", time.Time{})
			d.Stats()
		}
	}()
	go func() { // ticker
		defer announced.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			d.Tick(t0.Add(time.Duration(i) * time.Second))
			if i%50 == 0 {
				d.Reset()
			}
		}
	}()
	go func() { // pipeline
		defer announced.Done()
		clk := clock{t0}
		for i := 0; i < 20000; i++ {
			c := conn(uint64(i%7), "api")
			d.Observe(stmt(c, uniqueQuery(i%100), clk.next(time.Millisecond), time.Duration(i%300)*time.Millisecond, wire.TxInBlock, traceCtx(byte(i/50), 1)))
			if i%100 == 0 {
				d.ObserveConn(wire.Event{Kind: wire.ConnClosed, Time: clk.t, Conn: *c, Statements: 1})
			}
		}
		close(done)
	}()
	announced.Wait()
}
