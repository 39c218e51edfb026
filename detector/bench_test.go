package detector

import (
	"fmt"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// BenchmarkObserve measures Detector.Observe, statistics included, on a mix
// close to production: 500 fingerprints, 50 connections, two thirds of the
// statements with trace context (a new trace every 20 statements, each
// statement under one of 4 parent spans, one trace in ten an N+1 of 10
// lookups), one statement in a thousand slow, a quarter in transactions.
func BenchmarkObserve(b *testing.B) {
	const nfp, nconn = 500, 50
	qs := make([]*fingerprint.Query, nfp)
	for i := range qs {
		qs[i] = query(fmt.Sprintf("%016x", i), fmt.Sprintf("SELECT * FROM t%d WHERE id = $1", i), "SELECT")
	}
	conns := make([]*wire.ConnInfo, nconn)
	for i := range conns {
		conns[i] = conn(uint64(i+1), "api")
	}
	const nstmt = 4096
	stmts := make([]*Statement, nstmt)
	for i := range stmts {
		var tc fingerprint.TraceContext
		if i%3 != 0 {
			tc = traceCtx(1, byte(i%4+1)) // the trace id is set per iteration
		}
		dur := time.Duration(200+i%5000) * time.Microsecond
		if i%1000 == 0 {
			dur = 150 * time.Millisecond
		}
		tx := wire.TxIdle
		if i%4 == 0 {
			tx = wire.TxInBlock
		}
		// Zipf-ish: low fingerprints are hot; some repeat (N+1s).
		q := qs[(i*i)%nfp]
		if (i/20)%10 == 0 && i%2 == 0 {
			q = qs[1]
		}
		stmts[i] = stmt(conns[i%nconn], q, t0, dur, tx, tc)
	}
	d := New(Config{})
	b.Cleanup(func() {
		st := d.Stats()
		b.Logf("N=%d findings by type %v, N+1 groups %d", b.N, st.FindingsByType, st.NPlusOneGroups)
	})
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b)()
	for i := 0; i < b.N; i++ {
		s := stmts[i%nstmt]
		at := t0.Add(time.Duration(i) * 100 * time.Microsecond)
		dur := s.Stmt.Duration()
		s.Stmt.Start, s.Stmt.End = at, at.Add(dur)
		if s.Parent.IsValid() {
			trace := uint64(i / 20)
			for k := 0; k < 8; k++ {
				s.Parent.TraceID[k] = byte(trace >> (8 * k))
			}
		}
		d.Observe(s)
	}
}

// BenchmarkObserveSameFingerprint is the hot path alone: one known
// fingerprint, no trace context, one connection.
func BenchmarkObserveSameFingerprint(b *testing.B) {
	d := New(Config{})
	s := stmt(conn(1, "api"), qUser, t0, time.Millisecond, wire.TxIdle, fingerprint.TraceContext{})
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b)()
	for i := 0; i < b.N; i++ {
		at := t0.Add(time.Duration(i) * time.Second)
		s.Stmt.Start, s.Stmt.End = at, at.Add(time.Millisecond)
		d.Observe(s)
	}
}

// reportCPU adds a cpu-ns/op metric: process CPU time per operation, the
// figure to compare with the 1 µs budget on a shared, busy machine (GC
// work on other threads included). Call as defer reportCPU(b)().
func reportCPU(b *testing.B) func() {
	start := processCPU()
	return func() {
		if used := processCPU() - start; used > 0 {
			b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
		}
	}
}
