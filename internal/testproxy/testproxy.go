// Package testproxy starts, for a test, the whole observing proxy as
// `pgtrace serve` assembles it: the relay (wire.Server) in front of a
// PostgreSQL, and behind it the pipeline (fingerprint, detector, export)
// with its detector ticker. Everything stops, and the exporter flushes,
// when the test ends. The tests of pipeline, internal/clients and
// cmd/pgtrace's in-process ones use it; cmd/pgtrace's tests that run the
// real command do not need it.
//
// wire's own in-package tests cannot import it (it imports wire): they
// keep their relay-only helper.
package testproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/pipeline"
	"github.com/dotmac/pgtrace/wire"
)

// Options configure a Proxy. Only Upstream is required.
type Options struct {
	// Upstream is the PostgreSQL host:port the relay connects to.
	Upstream string
	// Detector configures the detector. SlowThreshold defaults to
	// Export.SlowThreshold when only that is set, and vice versa.
	Detector detector.Config
	// Export configures the exporter. UpstreamAddr, Logger, Version
	// ("test"), DroppedEvents, AnalyzerStats and Connections are filled in
	// when zero. KeepSlowSpans is the caller's.
	Export export.Config
	// Logger receives the relay's, the exporter's and the pipeline's
	// lines. Default: the test's log, warnings and above (Logger(t, …)).
	Logger *slog.Logger
	// TickInterval is the pipeline's detector tick. Default 1s.
	TickInterval time.Duration
	// ShutdownTimeout bounds the relay's shutdown and the exporter's flush
	// when the test ends. Default 5s.
	ShutdownTimeout time.Duration
}

// Proxy is a running proxy. Its fields are for the test to read; they
// must not be replaced.
type Proxy struct {
	Addr     string // where clients connect, 127.0.0.1:port
	Server   *wire.Server
	Analyzer *fingerprint.Analyzer
	Detector *detector.Detector
	Exporter *export.Exporter
	Pipeline *pipeline.Pipeline

	// FlushMayFail, set by the test before it ends, says the exporter's
	// final flush cannot succeed (a dead collector): its error is logged,
	// not a test failure.
	FlushMayFail bool
}

// Start starts a proxy in front of opts.Upstream on a free loopback port.
func Start(t testing.TB, opts Options) *Proxy {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = Logger(t, slog.LevelWarn)
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 5 * time.Second
	}
	switch {
	case opts.Detector.SlowThreshold == 0:
		opts.Detector.SlowThreshold = opts.Export.SlowThreshold
	case opts.Export.SlowThreshold == 0:
		opts.Export.SlowThreshold = opts.Detector.SlowThreshold
	}
	p := &Proxy{Analyzer: fingerprint.New(fingerprint.Config{})}
	p.Server = &wire.Server{Upstream: opts.Upstream, Logger: opts.Logger}
	ec := opts.Export
	if ec.UpstreamAddr == "" {
		ec.UpstreamAddr = opts.Upstream
	}
	if ec.Logger == nil {
		ec.Logger = opts.Logger
	}
	if ec.Version == "" {
		ec.Version = "test"
	}
	if ec.DroppedEvents == nil {
		ec.DroppedEvents = p.Server.DroppedEvents
	}
	if ec.AnalyzerStats == nil {
		ec.AnalyzerStats = p.Analyzer.Stats
	}
	if ec.Connections == nil {
		ec.Connections = p.Server.Connections
	}
	ctx, cancel := context.WithCancel(context.Background())
	exp, err := export.New(ctx, ec)
	if err != nil {
		cancel()
		t.Fatalf("testproxy: %v", err)
	}
	p.Exporter = exp
	p.Detector = detector.New(opts.Detector)
	p.Pipeline = pipeline.New(pipeline.Config{Analyzer: p.Analyzer, Detector: p.Detector, Exporter: exp,
		Logger: opts.Logger, TickInterval: opts.TickInterval})
	p.Server.Observer = p.Pipeline

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatalf("testproxy: %v", err)
	}
	p.Addr = lis.Addr().String()
	served := make(chan error, 1)
	ran := make(chan struct{})
	go func() { served <- p.Server.Serve(ctx, lis) }()
	go func() { defer close(ran); _ = p.Pipeline.Run(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), opts.ShutdownTimeout)
		defer scancel()
		if err := p.Server.Shutdown(sctx); err != nil {
			t.Errorf("testproxy: wire shutdown: %v", err)
		}
		cancel()
		<-ran
		if err := <-served; err != nil && !errors.Is(err, wire.ErrServerClosed) && !errors.Is(err, context.Canceled) {
			t.Errorf("testproxy: serve: %v", err)
		}
		if err := exp.Shutdown(sctx); err != nil {
			if p.FlushMayFail {
				t.Logf("testproxy: export shutdown (expected to fail): %v", err)
			} else {
				t.Errorf("testproxy: export shutdown: %v", err)
			}
		}
	})
	return p
}

// Logger is a text logger writing to t's log, from level up.
func Logger(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
