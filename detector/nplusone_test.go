package detector

import (
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

func TestNPlusOneWithTraceContext(t *testing.T) {
	type exec struct {
		q      *fingerprint.Query
		parent fingerprint.TraceContext
	}
	repeat := func(n int, f func(i int) exec) []exec {
		out := make([]exec, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	tests := []struct {
		name     string
		cfg      Config
		execs    []exec
		want     map[string]int64 // trace id hex + "/" + fingerprint → finding count
		wantPars string           // in the finding's detail ("": don't check)
	}{
		{
			name:  "ten lookups under one parent",
			execs: repeat(10, func(int) exec { return exec{qUser, traceCtx(1, 1)} }),
			want:  map[string]int64{key(1, qUser): 10},
		},
		{
			name:  "ten lookups over ten traces",
			execs: repeat(10, func(i int) exec { return exec{qUser, traceCtx(byte(i+1), 1)} }),
			want:  map[string]int64{},
		},
		{
			name:  "under the threshold",
			execs: repeat(4, func(int) exec { return exec{qUser, traceCtx(1, 1)} }),
			want:  map[string]int64{},
		},
		{
			name:     "different parent spans of one trace do not split the group",
			execs:    repeat(10, func(i int) exec { return exec{qUser, traceCtx(1, byte(i+1))} }),
			want:     map[string]int64{key(1, qUser): 10},
			wantPars: "under more than 8 parent spans: 0101010101010101, 0202020202020202,",
		},
		{
			name:  "threshold is configurable",
			cfg:   Config{NPlusOneThreshold: 20},
			execs: repeat(19, func(int) exec { return exec{qUser, traceCtx(1, 1)} }),
			want:  map[string]int64{},
		},
		{
			name:  "below the minimum total duration",
			cfg:   Config{NPlusOneMinDuration: time.Second},
			execs: repeat(10, func(int) exec { return exec{qUser, traceCtx(1, 1)} }),
			want:  map[string]int64{},
		},
		{
			name: "two fingerprints interleaved in one trace, one in another",
			execs: repeat(18, func(i int) exec {
				switch i % 3 {
				case 0:
					return exec{qUser, traceCtx(1, 1)}
				case 1:
					return exec{qOrder, traceCtx(1, 1)}
				}
				return exec{qItem, traceCtx(2, 1)}
			}),
			want: map[string]int64{key(1, qUser): 6, key(1, qOrder): 6, key(2, qItem): 6},
		},
		{
			name: "transaction control is never a candidate",
			execs: repeat(10, func(int) exec {
				return exec{qBegin, traceCtx(1, 1)}
			}),
			want: map[string]int64{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			d := New(cfg)
			rec := &recorder{d: d}
			c := conn(1, "api")
			clk := clock{t0}
			detected := map[string]int{}
			for i, e := range tt.execs {
				v := rec.Observe(stmt(c, e.q, clk.next(2*time.Millisecond), time.Millisecond, wire.TxIdle, e.parent))
				k := key(e.parent.TraceID[0], e.q)
				if v.NPlusOneDetected {
					detected[k]++
					if !v.NPlusOne {
						t.Errorf("exec %d: NPlusOneDetected without NPlusOne", i)
					}
				}
				if v.NPlusOne && v.NPlusOneCount < d.Config().NPlusOneThreshold {
					t.Errorf("exec %d: NPlusOneCount %d below threshold", i, v.NPlusOneCount)
				}
			}
			got := map[string]int64{}
			for _, f := range d.Findings(FindingNPlusOne, time.Time{}) {
				k := f.TraceID[:2] + "/" + f.Fingerprint
				if _, dup := got[k]; dup {
					t.Errorf("two findings for %s", k)
				}
				got[k] = f.Count
				if !strings.Contains(f.Detail, tt.wantPars) {
					t.Errorf("detail %q, want %q in it", f.Detail, tt.wantPars)
				}
				if f.ParentSpanID == "" || len(f.TraceID) != 32 {
					t.Errorf("finding lacks trace context: %+v", f)
				}
				if f.TotalDurationMs < float64(f.Count)-0.001 {
					t.Errorf("total duration %.3f ms for %d executions of 1 ms", f.TotalDurationMs, f.Count)
				}
			}
			if !equalCounts(got, tt.want) {
				t.Errorf("findings = %v, want %v", got, tt.want)
			}
			if n := len(rec.ofType(FindingNPlusOne)); n != len(tt.want) {
				t.Errorf("findings reported %d times for n_plus_one, want %d", n, len(tt.want))
			}
			for k := range tt.want {
				if detected[k] != 1 {
					t.Errorf("%s: NPlusOneDetected %d times, want once", k, detected[k])
				}
			}
		})
	}
}

func TestNPlusOneMinDurationCrossedLater(t *testing.T) {
	d := New(Config{NPlusOneMinDuration: 50 * time.Millisecond})
	c := conn(1, "api")
	clk := clock{t0}
	var crossed int
	for i := 1; i <= 10; i++ {
		v := d.Observe(stmt(c, qUser, clk.next(20*time.Millisecond), 10*time.Millisecond, wire.TxIdle, traceCtx(1, 1)))
		if v.NPlusOneDetected {
			crossed = i
		}
	}
	// Five executions reach the count; the fifth also reaches 50 ms.
	if crossed != 5 {
		t.Errorf("detected at execution %d, want 5", crossed)
	}
	d = New(Config{NPlusOneMinDuration: 75 * time.Millisecond})
	crossed = 0
	for i := 1; i <= 10; i++ {
		v := d.Observe(stmt(c, qUser, clk.next(20*time.Millisecond), 10*time.Millisecond, wire.TxIdle, traceCtx(2, 1)))
		if v.NPlusOneDetected {
			crossed = i
		}
	}
	if crossed != 8 {
		t.Errorf("detected at execution %d, want 8 (first with ≥ 75 ms in total)", crossed)
	}
}

func key(trace byte, q *fingerprint.Query) string {
	return hex.EncodeToString([]byte{trace}) + "/" + q.Fingerprint
}

func equalCounts(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// uniqueQuery returns a query with a fingerprint of its own.
func uniqueQuery(i int) *fingerprint.Query {
	return query(fmt.Sprintf("%016x", 0x1000+i), fmt.Sprintf("SELECT %d FROM other", i), "SELECT")
}

func TestNPlusOneConnectionFallback(t *testing.T) {
	const (
		I = wire.TxIdle
		T = wire.TxInBlock
	)
	type step struct {
		q   *fingerprint.Query
		gap time.Duration // since the previous statement's start
		tx  byte          // status after the statement
	}
	loop := func(n int, gap time.Duration, tx byte, body ...*fingerprint.Query) []step {
		var out []step
		for i := 0; i < n; i++ {
			for _, q := range body {
				out = append(out, step{q, gap, tx})
			}
		}
		return out
	}
	inTx := func(steps []step) []step {
		out := []step{{qBegin, time.Millisecond, T}}
		out = append(out, steps...)
		return append(out, step{qCommit, time.Millisecond, I})
	}
	var manyOthers []step
	for i := 0; i < 10; i++ {
		manyOthers = append(manyOthers, step{qUser, time.Millisecond, I})
		for j := 0; j < 3; j++ {
			manyOthers = append(manyOthers, step{uniqueQuery(i*3 + j), time.Millisecond, I})
		}
	}
	var txPerRow []step
	for i := 0; i < 10; i++ {
		txPerRow = append(txPerRow, step{qBegin, time.Millisecond, T}, step{qUser, time.Millisecond, T}, step{qCommit, time.Millisecond, I})
	}
	tests := []struct {
		name       string
		steps      []step
		want       map[string]int64 // fingerprint → count
		wantDetail string
	}{
		{
			name:       "loop inside one transaction, slower than the window",
			steps:      inTx(loop(10, 300*time.Millisecond, T, qUser)),
			want:       map[string]int64{qUser.Fingerprint: 10},
			wantDetail: "within one transaction",
		},
		{
			name:       "loop outside a transaction, inside the window",
			steps:      loop(10, 5*time.Millisecond, I, qUser),
			want:       map[string]int64{qUser.Fingerprint: 10},
			wantDetail: "within 1s",
		},
		{
			name:  "repetitions spread wider than the window",
			steps: loop(10, 400*time.Millisecond, I, qUser),
			want:  map[string]int64{},
		},
		{
			name:  "loop body of three statements",
			steps: inTx(loop(8, time.Millisecond, T, qOrder, qItem, qUser)),
			want:  map[string]int64{qOrder.Fingerprint: 8, qItem.Fingerprint: 8, qUser.Fingerprint: 8},
		},
		{
			name:  "three other statements between repetitions",
			steps: manyOthers,
			want:  map[string]int64{},
		},
		{
			name:  "transaction control between repetitions does not count",
			steps: txPerRow,
			want:  map[string]int64{qUser.Fingerprint: 10},
		},
		{
			name:  "under the threshold",
			steps: inTx(loop(4, time.Millisecond, T, qUser)),
			want:  map[string]int64{},
		},
		{
			name:  "session settings are not candidates",
			steps: loop(10, time.Millisecond, I, qSet),
			want:  map[string]int64{},
		},
		{
			name:  "a pool's pings read no table: not candidates",
			steps: loop(10, time.Millisecond, I, qPing),
			want:  map[string]int64{},
		},
		{
			name:  "pings between repetitions do not count",
			steps: loop(10, time.Millisecond, I, qUser, qPing, qPing, qPing),
			want:  map[string]int64{qUser.Fingerprint: 10},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(Config{})
			rec := &recorder{d: d}
			c := conn(7, "worker")
			clk := clock{t0}
			for _, s := range tt.steps {
				rec.Observe(stmt(c, s.q, clk.next(s.gap), 500*time.Microsecond, s.tx, fingerprint.TraceContext{}))
			}
			got := map[string]int64{}
			for _, f := range d.Findings(FindingNPlusOne, time.Time{}) {
				if _, dup := got[f.Fingerprint]; dup {
					t.Errorf("two findings for %s", f.Fingerprint)
				}
				got[f.Fingerprint] = f.Count
				if f.TraceID != "" || f.Application != "worker" {
					t.Errorf("finding %+v: want no trace id and application worker", f)
				}
				if !strings.Contains(f.Detail, tt.wantDetail) || !strings.Contains(f.Detail, "backend pid 1007") {
					t.Errorf("detail %q: want %q and the backend pid", f.Detail, tt.wantDetail)
				}
			}
			if !equalCounts(got, tt.want) {
				t.Errorf("findings = %v, want %v", got, tt.want)
			}
			if n := len(rec.got); n != len(tt.want) {
				t.Errorf("findings reported %d times, want %d", n, len(tt.want))
			}
		})
	}
}

func TestNPlusOneFallbackIsPerConnection(t *testing.T) {
	d := New(Config{})
	clk := clock{t0}
	// Ten lookups spread round-robin over five connections: 2 per connection.
	for i := 0; i < 10; i++ {
		d.Observe(stmt(conn(uint64(i%5+1), "api"), qUser, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, fingerprint.TraceContext{}))
	}
	if f := d.Findings(FindingNPlusOne, time.Time{}); len(f) != 0 {
		t.Errorf("got %d findings, want none: %+v", len(f), f)
	}
}

func TestNPlusOneGroupsBounded(t *testing.T) {
	d := New(Config{MaxNPlusOneGroups: 100, NPlusOneGroupTTL: time.Minute})
	c := conn(1, "api")
	clk := clock{t0}
	for i := 0; i < 1000; i++ {
		tc := traceCtx(1, 1)
		tc.TraceID[0], tc.TraceID[1] = byte(i), byte(i>>8)
		d.Observe(stmt(c, qUser, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, tc))
	}
	st := d.Stats()
	if st.NPlusOneGroups != 100 || st.NPlusOneGroupEvictions != 900 {
		t.Errorf("groups %d, evictions %d; want 100 and 900", st.NPlusOneGroups, st.NPlusOneGroupEvictions)
	}
	// A group kept busy survives the churn of others: LRU, not FIFO.
	busy := traceCtx(0xee, 1)
	for i := 0; i < 300; i++ {
		d.Observe(stmt(c, qOrder, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, busy))
		tc := traceCtx(2, 1)
		tc.TraceID[0], tc.TraceID[1] = byte(i), byte(i>>8)
		d.Observe(stmt(c, qUser, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, tc))
	}
	fs := d.Findings(FindingNPlusOne, time.Time{})
	if len(fs) != 1 || fs[0].Count != 300 {
		t.Fatalf("findings %+v, want one with count 300", fs)
	}
	// Age: everything is older than the TTL a minute later.
	d.Tick(clk.t.Add(time.Minute + time.Second))
	if st := d.Stats(); st.NPlusOneGroups != 0 || st.NPlusOneGroupExpiries != 100 {
		t.Errorf("after TTL: groups %d, expiries %d; want 0 and 100", st.NPlusOneGroups, st.NPlusOneGroupExpiries)
	}
}

func TestNPlusOneFindingKeepsCountingAfterRingDrop(t *testing.T) {
	d := New(Config{MaxFindings: 4})
	c := conn(1, "api")
	clk := clock{t0}
	for i := 0; i < 5; i++ {
		d.Observe(stmt(c, qUser, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(1, 1)))
	}
	// Four slow queries push the N+1 finding out of the ring.
	for i := 0; i < 4; i++ {
		d.Observe(stmt(conn(2, "api"), uniqueQuery(i), clk.next(time.Millisecond), time.Second, wire.TxIdle, fingerprint.TraceContext{}))
	}
	if got := d.Findings(FindingNPlusOne, time.Time{}); len(got) != 0 {
		t.Fatalf("N+1 finding still in a full ring: %+v", got)
	}
	d.Observe(stmt(c, qUser, clk.next(time.Millisecond), time.Millisecond, wire.TxIdle, traceCtx(1, 1)))
	got := d.Findings(FindingNPlusOne, time.Time{})
	if len(got) != 1 || got[0].Count != 6 {
		t.Errorf("findings %+v, want the group back with count 6", got)
	}
	if st := d.Stats(); st.FindingsDropped < 1 || st.Findings != 4 {
		t.Errorf("stats %+v: want drops counted and 4 findings", st)
	}
}
