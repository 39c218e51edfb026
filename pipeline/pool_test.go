package pipeline_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/pipeline"
	"github.com/dotmac/pgtrace/pool"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestPoolHooks: what the pools report reaches the exporter's metrics and
// the detector, whose pool findings take the findings' route (counted,
// logged); every tick the detector sees the waiting clients.
func TestPoolHooks(t *testing.T) {
	u := newUnit(t)
	hooks := u.pl.PoolHooks()
	key := pool.Key{Database: "shop", User: "app"}
	now := time.Now()
	hooks.Waited(key, now, 0, false)
	hooks.Waited(key, now.Add(-2*time.Second), 2*time.Second, false) // past the detector's default 1s
	hooks.Created(key, time.Millisecond, nil)
	hooks.Used(key, time.Millisecond)
	hooks.Closed(key, "broken")

	if fs := u.det.Findings(detector.FindingPoolExhausted, time.Time{}); len(fs) != 1 || fs[0].Count != 1 {
		t.Errorf("pool_exhausted findings %+v, want one", fs)
	}
	logged := 0
	for _, r := range u.logs.records(t) {
		if r["msg"] == "finding" && r["type"] == "pool_exhausted" {
			logged++
		}
	}
	if logged != 1 {
		t.Errorf("%d pool_exhausted log lines, want 1", logged)
	}

	// A client waiting now, past the threshold: the next tick reports it
	// (in the episode above: no new finding, one more client).
	since := time.Now().Add(-3 * time.Second) // one client, waiting since then
	u.pl.WatchPools(func() []pool.Stats {
		return []pool.Stats{{Name: key.Name(), Size: 1, Used: 1, Waiting: 1, WaitingSince: since}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); u.pl.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fs := u.det.Findings(detector.FindingPoolExhausted, time.Time{})
		if len(fs) == 1 && fs[0].Count == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool_exhausted after ticks: %+v, want the waiting client counted", fs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done

	var rm metricdata.ResourceMetrics
	if err := u.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			got[m.Name] = true
		}
	}
	for _, name := range []string{"db.client.connection.wait_time", "db.client.connection.use_time", "db.client.connection.create_time",
		"db.client.connection.pending_requests", "pgtrace.findings"} {
		if !got[name] {
			t.Errorf("no %s", name)
		}
	}
}

// BenchmarkPoolHooksWaited is the cost the pools' hooks add to each
// acquisition of a server connection, with the exporter and detector
// behind them: most waits are 0.
func BenchmarkPoolHooksWaited(b *testing.B) {
	b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	log := slog.New(slog.DiscardHandler)
	exp, err := export.New(context.Background(), export.Config{UpstreamAddr: "db:5432", Logger: log, Pooled: true})
	if err != nil {
		b.Fatal(err)
	}
	defer exp.Shutdown(context.Background())
	pl := pipeline.New(pipeline.Config{Analyzer: fingerprint.New(fingerprint.Config{}), Detector: detector.New(detector.Config{}),
		Exporter: exp, Logger: log})
	hooks := pl.PoolHooks()
	key := pool.Key{Database: "shop", User: "app"}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			hooks.Waited(key, now, 0, false)
			hooks.Used(key, time.Millisecond)
		}
	})
}
