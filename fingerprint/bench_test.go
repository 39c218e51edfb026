package fingerprint

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time. Benchmarks report it per
// op next to ns/op: on a shared, overloaded machine wall time per op
// includes time spent waiting for a core, CPU time does not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds the cpu-ns/op metric for the b.N iterations since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// benchQuery is what an ORM sends for a list page: a three-way join, ~700
// bytes with its sqlcommenter comment.
const benchQuery = `SELECT "partners"."id", "partners"."name", "partners"."tier", "partners"."created_at", ` +
	`"customers"."id" AS "customer_id", "customers"."email", "customers"."status", ` +
	`"commissions"."amount", "commissions"."currency", "commissions"."paid_at" ` +
	`FROM "partners" INNER JOIN "customers" ON "customers"."partner_id" = "partners"."id" ` +
	`LEFT OUTER JOIN "commissions" ON "commissions"."customer_id" = "customers"."id" ` +
	`AND "commissions"."status" = 'approved' WHERE "partners"."tenant_id" = $1 ` +
	`AND "customers"."status" IN ('active', 'trial', 'past_due') AND "partners"."deleted_at" IS NULL ` +
	`ORDER BY "partners"."name" ASC, "commissions"."paid_at" DESC LIMIT 50 OFFSET 100 ` +
	`/*application='partners-api',db_driver='pgx',route='%2Fpartners',tenant_id='acme',` +
	`traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/`

// benchShort is a typical point lookup with a full comment (~200 bytes).
const benchShort = `SELECT * FROM partners WHERE id = $1 /*application='partners-api',route='%2Fpartners%2F%7Bid%7D',` +
	`tenant_id='acme',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/`

func benchmarkHit(b *testing.B, sql string) {
	a := New(Config{})
	a.Analyze(sql)
	b.SetBytes(int64(len(sql)))
	b.ReportAllocs()
	b.ResetTimer()
	start := cpuTime()
	for b.Loop() {
		res := a.Analyze(sql)
		if len(res.Queries) == 0 {
			b.Fatal("no query")
		}
	}
	reportCPU(b, start)
}

func BenchmarkAnalyzeHitShort(b *testing.B) { benchmarkHit(b, benchShort) }
func BenchmarkAnalyzeHitORM(b *testing.B)   { benchmarkHit(b, benchQuery) }

// BenchmarkAnalyzeCold parses the ORM join every time, bypassing the cache.
func BenchmarkAnalyzeCold(b *testing.B) {
	a := New(Config{})
	body := scan(benchQuery).body
	if len(body) < 600 || len(body) > 800 {
		b.Fatalf("the ORM join is %d bytes", len(body))
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	start := cpuTime()
	for b.Loop() {
		if qs := a.analyzeBody(body); qs[0].Fallback {
			b.Fatal(qs[0].ParseError)
		}
	}
	reportCPU(b, start)
}

// BenchmarkAnalyzeParallel is the steady state from several goroutines
// (run with -cpu 2): hits spread over 64 distinct texts.
func BenchmarkAnalyzeParallel(b *testing.B) {
	a := New(Config{})
	texts := make([]string, 64)
	for i := range texts {
		texts[i] = strings.Replace(benchShort, "partners", "partners_"+string(rune('a'+i%26))+string(rune('a'+i/26)), 1)
		a.Analyze(texts[i])
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			a.Analyze(texts[i&63])
			i++
		}
	})
	reportCPU(b, start) // CPU of all goroutines: compare with ns/op × -cpu
}

func BenchmarkScan(b *testing.B) {
	b.SetBytes(int64(len(benchQuery)))
	start := cpuTime()
	for b.Loop() {
		if scan(benchQuery).body == "" {
			b.Fatal("empty")
		}
	}
	reportCPU(b, start)
}

// BenchmarkShapeHit is the simple protocol's steady state: every text has
// new constants, so the exact cache misses and the shape cache answers.
func BenchmarkShapeHit(b *testing.B) {
	a := New(Config{})
	texts := make([]string, 1024)
	for i := range texts {
		texts[i] = "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i*7919)
	}
	a.Analyze(texts[0])
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r := a.Analyze(texts[i&1023]); len(r.Queries) != 1 {
			b.Fatal("no query")
		}
	}
	if st := a.Stats(); st.Misses != 1 {
		b.Fatalf("stats %+v: every text after the first must hit by shape", st)
	}
}
