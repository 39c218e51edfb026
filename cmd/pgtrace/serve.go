package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/dotmac/pgtrace/admin"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/wire"
)

// readyMessage is logged once pgtrace accepts clients; scripts and tests
// wait for it.
const readyMessage = "pgtrace ready"

// serve runs the proxy until ctx ends or SIGINT/SIGTERM arrives, then shuts
// down gracefully and returns why it stopped: the signal's exit error, the
// cause ctx was cancelled with, or a failure.
//
// Order of shutdown: /readyz fails first (load balancers stop sending), the
// listener closes, sessions get --shutdown-timeout to finish, the rest are
// closed, the observation pipeline flushes, and the admin server stops last
// so /healthz answers throughout.
func serve(ctx context.Context, cfg *config, logw io.Writer) (err error) {
	log := cfg.logger(logw)

	// Signals become the cause of ctx's cancellation. A second signal
	// during shutdown cuts the grace period short through force.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	force, forceNow := context.WithCancel(context.WithoutCancel(ctx))
	defer forceNow()
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigc)
	go func() {
		select {
		case sig := <-sigc:
			cancel(signalError(sig))
		case <-ctx.Done():
		}
		select {
		case sig := <-sigc:
			log.Warn("second signal: closing all sessions now", "signal", sig.String())
			forceNow()
		case <-force.Done():
		}
	}()

	// Startup. Each step may take a while (TLS files, exporters); a signal
	// during startup stops it between steps.
	clientTLS, err := cfg.clientTLS()
	if err != nil {
		return err
	}
	upstreamTLS, err := cfg.upstreamTLS()
	if err != nil {
		return err
	}
	adminToken, err := cfg.adminToken()
	if err != nil {
		return err
	}
	ws := &wire.Server{
		Upstream:             cfg.Upstream,
		DialTimeout:          cfg.DialTimeout,
		ClientTLS:            clientTLS,
		UpstreamTLS:          upstreamTLS,
		MaxClientConnections: cfg.MaxClientConnections,
		QueueSize:            cfg.EventQueueSize,
		Logger:               log,
		IO:                   cfg.IO,
	}
	obs, err := newObservation(ctx, cfg, log, ws)
	if err != nil {
		return fmt.Errorf("start observation pipeline: %w", err)
	}
	ws.Observer = obs.Observer
	pooler, err := newPooler(ctx, cfg, log, ws, obs.PoolHooks)
	if err != nil {
		return err
	}
	if pooler != nil {
		ws.Pooler = pooler
		go pooler.Run(ctx)
		// After the sessions: their server connections come back first.
		defer pooler.Close()
		if obs.Pools != nil {
			obs.Pools(pooler)
		}
	}
	// stopObservation flushes the pipeline once: in the shutdown sequence,
	// or on the way out of a failed startup.
	var stopOnce sync.Once
	stopObservation := func() {
		stopOnce.Do(func() {
			if obs.Shutdown == nil {
				return
			}
			// Flushing exporters is bounded apart from the sessions' grace.
			fctx, cancel := context.WithTimeout(force, 10*time.Second)
			defer cancel()
			err := obs.Shutdown(fctx)
			var notSent *export.ShutdownError
			switch {
			case errors.As(err, &notSent):
				// A slow or dead collector: one line, what was lost and why.
				log.Warn("OTLP export did not finish: spans and metric points not sent",
					"spans_not_sent", notSent.SpansNotSent, "metric_points_not_sent", notSent.MetricPointsNotSent,
					"cause", notSent.Cause)
			case err != nil:
				log.Error("observation pipeline did not shut down cleanly", "err", err)
			}
		})
	}
	defer stopObservation()
	if err := context.Cause(ctx); err != nil {
		return err
	}

	var lc net.ListenConfig
	ln, err := listenClients(ctx, &lc, cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	defer ln.Close() // after Serve returned this is a no-op; on early return it frees the port or socket

	adm := &admin.Server{
		Upstream:          cfg.Upstream,
		Metrics:           obs.Metrics,
		ActiveConnections: ws.ActiveConnections,
		MaxConnections:    cfg.MaxClientConnections,
		Token:             adminToken,
		Logger:            log,
	}
	if obs.Routes != nil {
		obs.Routes(adm)
	}
	adminAddr := ""
	if cfg.AdminListen != "" {
		aln, err := lc.Listen(ctx, "tcp", cfg.AdminListen)
		if err != nil {
			return fmt.Errorf("--admin-listen %s: %w", cfg.AdminListen, err)
		}
		adminAddr = aln.Addr().String()
		adminDone := make(chan struct{})
		go func() {
			defer close(adminDone)
			if err := adm.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server failed", "addr", adminAddr, "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(force, 5*time.Second)
			defer cancel()
			if err := adm.Shutdown(sctx); err != nil {
				log.Warn("admin server did not shut down cleanly", "err", err)
			}
			<-adminDone
		}()
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}

	// The relay's own context ends only when shutdown is forced: graceful
	// shutdown goes through ws.Shutdown.
	served := make(chan error, 1)
	go func() { served <- ws.Serve(force, ln) }()
	adm.MarkReady()
	log.Info(readyMessage,
		"listen", ln.Addr().String(),
		"upstream", cfg.Upstream,
		"admin", adminAddr,
		"admin_auth", adminAuth(adminAddr, adminToken),
		"version", version,
		"max_client_connections", cfg.MaxClientConnections,
		"pool_mode", cfg.PoolMode,
	)
	go warnIfUnresolvable(ctx, log, cfg.Upstream, cfg.DialTimeout)

	var stopErr error
	select {
	case <-ctx.Done():
		stopErr = context.Cause(ctx)
		if errors.Is(stopErr, context.Canceled) {
			stopErr = nil // the caller cancelled: a clean stop, not a failure
		}
	case err := <-served:
		// Serve returns on its own only when the listener fails; the
		// sessions it started still get their grace period.
		stopErr = fmt.Errorf("serve on %s: %w", ln.Addr(), err)
		served <- nil
	}

	adm.MarkStopping()
	open := ws.ActiveConnections()
	log.Info("shutting down", "reason", reason(stopErr), "open_connections", open, "grace", cfg.ShutdownTimeout.String())
	sctx, cancelShutdown := context.WithTimeout(force, cfg.ShutdownTimeout)
	defer cancelShutdown()
	start := time.Now()
	if err := ws.Shutdown(sctx); err != nil {
		log.Warn("closed sessions that outlived the grace period", "err", err, "waited", time.Since(start).Round(time.Millisecond).String())
	} else {
		log.Info("all sessions finished", "waited", time.Since(start).Round(time.Millisecond).String())
	}
	if err := <-served; err != nil && !errors.Is(err, wire.ErrServerClosed) {
		log.Warn("relay stopped with an error", "err", err)
	}
	if n := ws.DroppedEvents(); n > 0 {
		log.Warn("events dropped because the observer fell behind", "dropped", n)
	}
	// The pipeline flushes now; the admin server (deferred) stops after it,
	// so /healthz answers until the very end.
	stopObservation()
	return stopErr
}

// adminAuth says, for the ready line, what the admin server asks for.
func adminAuth(addr, token string) string {
	switch {
	case addr == "":
		return "off"
	case token != "":
		return "token (/healthz and /readyz open)"
	}
	return "none (loopback)"
}

// warnIfUnresolvable logs a warning when the host name of upstream does not
// resolve within timeout. pgtrace keeps serving: the name may resolve later
// (a database or a Kubernetes Service still starting); until then clients
// get SQLSTATE 08001 and /readyz says why. Nothing is logged when ctx ends
// first (shutdown).
func warnIfUnresolvable(ctx context.Context, log *slog.Logger, upstream string, timeout time.Duration) {
	network, addr := wire.Network(upstream)
	if network != "tcp" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return // an IP address: nothing to resolve
	}
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err = net.DefaultResolver.LookupHost(lctx, host)
	if err == nil || ctx.Err() != nil {
		return
	}
	log.Warn("the upstream's host name does not resolve; serving anyway, clients get SQLSTATE 08001 until it does",
		"upstream", upstream, "host", host, "err", err,
		"fix", "check the host in --upstream (PGTRACE_UPSTREAM); `pgtrace check --upstream "+upstream+"` tests it")
}

func reason(err error) string {
	if err == nil {
		return "context cancelled"
	}
	return err.Error()
}
