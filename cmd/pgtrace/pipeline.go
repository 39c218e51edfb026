package main

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/dotmac/pgtrace/admin"
	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/pipeline"
	"github.com/dotmac/pgtrace/pool"
	"github.com/dotmac/pgtrace/wire"
)

// observation is what the observation pipeline (fingerprint → detector →
// export) gives serve. Every field may be nil.
type observation struct {
	// Observer receives the relay's events. nil: events are not observed.
	Observer wire.Observer
	// Metrics serves the admin server's /metrics. nil: /metrics says so.
	Metrics http.Handler
	// Routes registers further admin routes (the API, the page) on mux, the
	// admin server: admin.RegisterAPI(mux, …) fits as it is.
	Routes func(mux interface {
		Handle(pattern string, h http.Handler)
	})
	// Shutdown flushes and stops the pipeline after the relay has stopped.
	Shutdown func(context.Context) error
	// PoolHooks receive what the pools do (pooled modes).
	PoolHooks pool.Hooks
	// Pools, when set, is given the pooler of a pooled mode, whose pools
	// the metrics and the admin API then show.
	Pools func(*pool.Pooler)
}

// newObservation builds the observation pipeline for cfg: fingerprint →
// detector → export, fed by the relay's events. ws is the relay, not yet
// serving: the exporter reads ws.Connections() and ws.DroppedEvents(); serve
// sets ws.Observer from the result. At --log-level debug every event is also
// logged.
func newObservation(ctx context.Context, cfg *config, log *slog.Logger, ws *wire.Server) (observation, error) {
	analyzer := fingerprint.New(fingerprint.Config{
		CacheSize: cfg.FingerprintCacheSize,
		TenantKey: cfg.TenantTag,
		NoTenant:  cfg.TenantTag == "", // --tenant-tag "" turns tenants off
	})
	exp, err := export.New(ctx, export.Config{
		UpstreamAddr:          cfg.Upstream,
		SlowThreshold:         cfg.SlowQueryThreshold,
		KeepSlowSpans:         cfg.KeepSlowSpans,
		ServiceNameFrom:       cfg.ServiceNameFrom,
		MaxApplications:       cfg.MaxApplications,
		ExponentialHistograms: cfg.MetricsHistogram == "exponential",
		RawErrors:             cfg.ExportRawErrors,
		SpanPath:              cfg.SpanPath,
		Pooled:                cfg.PoolMode != "none",
		PoolWaitSpanThreshold: cfg.PoolWaitSpanThreshold,
		Logger:                log,
		Version:               version,
		DroppedEvents:         ws.DroppedEvents,
		ForgottenStatements:   ws.ForgottenStatements,
		AnalyzerStats:         analyzer.Stats,
		Connections:           ws.Connections,
	})
	if err != nil {
		return observation{}, err
	}
	det := detector.New(detector.Config{
		SlowThreshold:       cfg.SlowQueryThreshold,
		NPlusOneThreshold:   cfg.NPlusOneThreshold,
		NPlusOneWindow:      cfg.NPlusOneWindow,
		NPlusOneMinDuration: cfg.NPlusOneMinDuration,
		IdleInTxThreshold:   cfg.IdleInTransactionThreshold,
		MaxFingerprints:     cfg.MaxFingerprints,

		PoolMode:               cfg.PoolMode,
		PoolSize:               cfg.PoolSize,
		PoolExhaustedThreshold: cfg.PoolExhaustedThreshold,
	})
	pl := pipeline.New(pipeline.Config{Analyzer: analyzer, Detector: det, Exporter: exp, Logger: log})
	var observer wire.Observer = pl
	if log.Enabled(ctx, slog.LevelDebug) {
		debug := eventLogger(log)
		observer = wire.ObserverFunc(func(e wire.Event) {
			debug.Observe(e)
			pl.Observe(e)
		})
	}
	// The detector's ticker runs until Shutdown; it must not stop with the
	// serve context, which ends before the relay has drained its events.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		pl.Run(runCtx)
	}()
	// The pooler of a pooled mode, once serve made it (Pools).
	var pooler atomic.Pointer[pool.Pooler]
	var poolStats func() []pool.Stats // nil: --pool-mode none
	if cfg.PoolMode != "none" {
		poolStats = func() []pool.Stats {
			if p := pooler.Load(); p != nil {
				return p.Stats()
			}
			return nil
		}
	}
	return observation{
		Observer: observer,
		Metrics:  exp.MetricsHandler(),
		Routes: func(mux interface{ Handle(string, http.Handler) }) {
			admin.RegisterAPI(mux, det, ws.Connections)
			admin.RegisterPools(mux, cfg.PoolMode, poolStats, ws.Connections)
		},
		PoolHooks: pl.PoolHooks(),
		Pools: func(p *pool.Pooler) {
			pooler.Store(p)
			pl.WatchPools(p.Stats)
		},
		Shutdown: func(ctx context.Context) error {
			stopRun()
			<-runDone
			return exp.Shutdown(ctx)
		},
	}, nil
}

// eventLogger logs every event at debug level. It logs the command tag, never
// the statement text: the text may hold literals (DESIGN.md decision 10).
func eventLogger(log *slog.Logger) wire.Observer {
	return wire.ObserverFunc(func(e wire.Event) {
		attrs := []slog.Attr{slog.Uint64("conn", e.Conn.ID)}
		switch e.Kind {
		case wire.StatementDone:
			s := e.Stmt
			attrs = append(attrs,
				slog.String("tag", s.CommandTag),
				slog.Int64("rows", s.Rows),
				slog.String("duration", s.Duration().String()),
				slog.Int("index", s.Index),
			)
			if s.Failed() {
				attrs = append(attrs, slog.String("sqlstate", s.SQLState))
			}
		case wire.ConnOpened:
			attrs = append(attrs, slog.String("client", e.Conn.ClientAddr.String()))
		case wire.ConnAuthenticated:
			attrs = append(attrs,
				slog.String("user", e.Conn.User), slog.String("database", e.Conn.Database),
				slog.String("application", e.Conn.Application), slog.Uint64("backend_pid", uint64(e.Conn.BackendPID)),
				slog.String("connect", e.ConnectDuration.String()))
		case wire.ConnAuthFailed:
			attrs = append(attrs, slog.Any("err", e.Err))
		case wire.ConnClosed:
			attrs = append(attrs, slog.String("side", e.Side.String()), slog.Int64("statements", e.Statements),
				slog.Int64("bytes_in", e.BytesIn), slog.Int64("bytes_out", e.BytesOut))
			if e.Err != nil {
				attrs = append(attrs, slog.Any("err", e.Err))
			}
		case wire.TxStatus:
			attrs = append(attrs, slog.String("tx_status", string(rune(e.Conn.TxStatus))))
		}
		log.LogAttrs(context.Background(), slog.LevelDebug, "event "+e.Kind.String(), attrs...)
	})
}
