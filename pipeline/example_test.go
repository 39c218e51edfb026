package pipeline_test

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/pipeline"
	"github.com/dotmac/pgtrace/wire"
)

// Example shows how `pgtrace serve` assembles the stages: the exporter reads
// the relay's counters, and the pipeline observes the relay's events and
// hands the detector's findings to the exporter and the log.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.Default()

	srv := &wire.Server{Upstream: "127.0.0.1:5432", Logger: log}
	analyzer := fingerprint.New(fingerprint.Config{})
	exp, err := export.New(ctx, export.Config{
		UpstreamAddr:  srv.Upstream,
		SlowThreshold: 100 * time.Millisecond,
		KeepSlowSpans: true,
		Logger:        log,
		DroppedEvents: srv.DroppedEvents,
		AnalyzerStats: analyzer.Stats,
		Connections:   srv.Connections,
	})
	if err != nil {
		log.Error("export", "err", err)
		return
	}
	det := detector.New(detector.Config{SlowThreshold: 100 * time.Millisecond})
	pl := pipeline.New(pipeline.Config{Analyzer: analyzer, Detector: det, Exporter: exp, Logger: log})
	srv.Observer = pl
	go pl.Run(ctx) // the detector's ticker

	// The admin server serves exp.MetricsHandler() on /metrics.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return
	}
	go srv.Serve(ctx, l)

	// On shutdown: stop the relay first (so the last events arrive), then
	// flush the exporter.
	_ = srv.Shutdown(ctx)
	_ = exp.Shutdown(ctx)
}
