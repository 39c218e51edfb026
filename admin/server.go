// Package admin is pgtrace's admin HTTP server: liveness (/healthz), readiness
// (/readyz), Prometheus metrics (/metrics), and whatever routes the rest of
// the program adds with Handle (the query API and the page).
//
// The server listens on loopback by default (DESIGN.md decision 10). What
// it serves beyond the probes (normalized statements, application and user
// names, client addresses, a reset) is for operators only: with a Token,
// every route but /healthz and /readyz asks for it, and the command line
// requires one for any address other than loopback.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dotmac/pgtrace/wire"
)

// Default probe settings, used when the Server's fields are zero.
const (
	DefaultProbeTimeout  = time.Second
	DefaultProbeCacheTTL = time.Second
)

// Server is the admin HTTP server. Set its fields before the first call of
// any method; they must not change afterwards. The zero value serves
// /healthz and a /readyz that reports "starting" until MarkReady.
type Server struct {
	// Upstream is the host:port of the PostgreSQL server, or the path of its
	// Unix socket, that /readyz probes with a dial. If empty, the upstream is
	// not probed.
	Upstream string
	// ProbeTimeout bounds one readiness dial. If zero, DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// ProbeCacheTTL is how long a probe result is reused, so that a scraper
	// or a kubelet hammering /readyz costs at most one dial per TTL. If zero,
	// DefaultProbeCacheTTL.
	ProbeCacheTTL time.Duration
	// Dial dials the upstream for the probe. If nil, a net.Dialer is used.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Metrics serves /metrics. If nil, /metrics answers 404 saying metrics
	// are not enabled.
	Metrics http.Handler

	// ActiveConnections reports the proxy's open client connections; with
	// MaxConnections > 0, /readyz fails while it is at or above the cap so
	// that a load balancer sends new clients elsewhere. If nil, not checked.
	ActiveConnections func() int
	// MaxConnections is the client connection cap; 0 means no cap.
	MaxConnections int

	// Token, if not empty, is required on every route except /healthz and
	// /readyz (which stay open for probes): as "Authorization: Bearer
	// <Token>", or as the password of HTTP Basic authentication (any user
	// name), which lets a browser open the page. Requests without it get
	// 401. If empty, nothing is asked.
	Token string

	// Logger receives server errors. If nil, slog.Default().
	Logger *slog.Logger

	initOnce sync.Once
	mux      *http.ServeMux
	handler  http.Handler // mux behind cross-origin protection
	httpSrv  *http.Server

	// ready is closed by MarkReady, stopping by MarkStopping; each once.
	ready, stopping         chan struct{}
	readyOnce, stoppingOnce sync.Once

	probeMu   sync.Mutex // held during a probe: concurrent callers share its result
	probeAt   time.Time  // when probeErr was measured; zero before the first probe
	probeErr  error
	probeRuns atomic.Int64 // dials made, for tests and debugging
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.ready = make(chan struct{})
		s.stopping = make(chan struct{})
		s.mux = http.NewServeMux()
		// Method-qualified patterns, so that a catch-all "/" or "GET /" added
		// later by Handle never conflicts with these.
		s.mux.HandleFunc("GET /healthz", s.healthz)
		s.mux.HandleFunc("GET /readyz", s.readyz)
		s.mux.HandleFunc("GET /metrics", s.metrics)
		// A web page the operator opens elsewhere must not make their
		// browser POST here (say, /api/reset): state-changing requests
		// that a browser marks as cross-site are refused. Tools such as
		// curl send no such marks and are served.
		s.handler = http.NewCrossOriginProtection().Handler(s.mux)
		if s.Token != "" {
			s.handler = requireToken(s.Token, s.handler)
		}
		s.httpSrv = &http.Server{
			Handler:           s.handler,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(s.logger().Handler(), slog.LevelWarn),
		}
	})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Handle registers h for pattern (net/http.ServeMux syntax, e.g.
// "GET /api/queries" or "/") on the admin server. It panics, as ServeMux
// does, when pattern conflicts with a registered one.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.init()
	s.mux.Handle(pattern, h)
}

// ServeHTTP serves the admin routes; it lets tests and embedders use the
// Server without a listener.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.init()
	s.handler.ServeHTTP(w, r)
}

// Serve accepts admin HTTP connections on l until Shutdown. It returns
// http.ErrServerClosed after Shutdown, like http.Server.Serve.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	return s.httpSrv.Serve(l)
}

// MarkReady records that the proxy is serving: /readyz may now succeed.
// Calling it more than once is harmless.
func (s *Server) MarkReady() {
	s.init()
	s.readyOnce.Do(func() { close(s.ready) })
}

// MarkStopping records that the proxy is shutting down: /readyz fails from
// now on while /healthz keeps answering. Calling it more than once is
// harmless.
func (s *Server) MarkStopping() {
	s.init()
	s.stoppingOnce.Do(func() { close(s.stopping) })
}

// Shutdown marks the server stopping and then shuts the HTTP server down
// gracefully, waiting for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.MarkStopping()
	if err := s.httpSrv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shut down admin server: %w", err)
	}
	return nil
}

// requireToken lets requests for /healthz and /readyz through and asks every
// other request for token. The comparison takes the same time whatever the
// token sent: both sides are hashed first, so neither their content nor
// their length shows in the timing.
func requireToken(token string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			_, got, ok = r.BasicAuth()
		}
		sum := sha256.Sum256([]byte(got))
		if ok && subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			next.ServeHTTP(w, r)
			return
		}
		// Browsers answer the Basic challenge with a login prompt; API
		// clients and Prometheus send the Bearer token.
		w.Header().Add("WWW-Authenticate", `Bearer realm="pgtrace admin"`)
		w.Header().Add("WWW-Authenticate", `Basic realm="pgtrace admin", charset="UTF-8"`)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		msg := "missing admin token: send Authorization: Bearer <token> (the value of --admin-token); /healthz and /readyz need none\n"
		if r.Header.Get("Authorization") != "" {
			msg = "wrong admin token: send Authorization: Bearer <token> (the value of --admin-token)\n"
		}
		io.WriteString(w, msg)
	})
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "ok\n")
}

// Ready reports whether the proxy should receive new clients, and if not, why.
func (s *Server) Ready(ctx context.Context) error {
	s.init()
	select {
	case <-s.stopping:
		return errors.New("shutting down")
	default:
	}
	select {
	case <-s.ready:
	default:
		return errors.New("starting")
	}
	if s.MaxConnections > 0 && s.ActiveConnections != nil {
		if n := s.ActiveConnections(); n >= s.MaxConnections {
			return fmt.Errorf("at the client connection cap (%d of %d)", n, s.MaxConnections)
		}
	}
	return s.probe(ctx)
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.Ready(r.Context()); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	io.WriteString(w, "ok\n")
}

// probe dials the upstream, reusing a result younger than the cache TTL.
func (s *Server) probe(ctx context.Context) error {
	if s.Upstream == "" {
		return nil
	}
	ttl := s.ProbeCacheTTL
	if ttl <= 0 {
		ttl = DefaultProbeCacheTTL
	}
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if !s.probeAt.IsZero() && time.Since(s.probeAt) < ttl {
		return s.probeErr
	}
	timeout := s.ProbeTimeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	// The probe's outcome is shared with later callers, so it must not be
	// cut short by this caller's request context: bound it by its own
	// timeout only.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	dial := s.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	s.probeRuns.Add(1)
	network, addr := wire.Network(s.Upstream)
	conn, err := dial(dctx, network, addr)
	if err != nil {
		s.probeErr = fmt.Errorf("upstream %s unreachable: %w", s.Upstream, err)
	} else {
		conn.Close()
		s.probeErr = nil
	}
	s.probeAt = time.Now()
	return s.probeErr
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	if s.Metrics == nil {
		http.Error(w, "metrics are not enabled in this build of pgtrace", http.StatusNotFound)
		return
	}
	s.Metrics.ServeHTTP(w, r)
}
