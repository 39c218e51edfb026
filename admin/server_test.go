package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestReadyz(t *testing.T) {
	pg := pgtest.Start(t)
	tests := []struct {
		name     string
		srv      *Server
		ready    bool // call MarkReady
		stopping bool // call MarkStopping
		wantCode int
		wantBody string
	}{
		{"starting", &Server{Upstream: pg.Addr()}, false, false, 503, "not ready: starting"},
		{"upstream up", &Server{Upstream: pg.Addr()}, true, false, 200, "ok"},
		{"upstream down", &Server{Upstream: closedAddr(t)}, true, false, 503, "unreachable"},
		{"no upstream configured", &Server{}, true, false, 200, "ok"},
		{"upstream up on a Unix socket", &Server{Upstream: pgtest.Managed(t).Socket()}, true, false, 200, "ok"},
		{"no Unix socket there", &Server{Upstream: filepath.Join(t.TempDir(), ".s.PGSQL.5432")}, true, false, 503, "unreachable"},
		{"shutting down", &Server{Upstream: pg.Addr()}, true, true, 503, "not ready: shutting down"},
		{"at connection cap", &Server{Upstream: pg.Addr(), MaxConnections: 3, ActiveConnections: func() int { return 3 }},
			true, false, 503, "connection cap (3 of 3)"},
		{"below connection cap", &Server{Upstream: pg.Addr(), MaxConnections: 3, ActiveConnections: func() int { return 2 }},
			true, false, 200, "ok"},
		{"no cap", &Server{Upstream: pg.Addr(), ActiveConnections: func() int { return 1 << 20 }},
			true, false, 200, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.ready {
				tt.srv.MarkReady()
			}
			if tt.stopping {
				tt.srv.MarkStopping()
			}
			code, body := get(t, tt.srv, "/readyz")
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET /readyz = %d %q, want %d containing %q", code, body, tt.wantCode, tt.wantBody)
			}
			// Liveness does not depend on readiness.
			if code, body := get(t, tt.srv, "/healthz"); code != 200 || body != "ok\n" {
				t.Errorf("GET /healthz = %d %q, want 200 \"ok\\n\"", code, body)
			}
		})
	}
}

func TestReadyzNamesUpstream(t *testing.T) {
	addr := closedAddr(t)
	s := &Server{Upstream: addr}
	s.MarkReady()
	if _, body := get(t, s, "/readyz"); !strings.Contains(body, addr) {
		t.Errorf("body %q does not name the upstream %s", body, addr)
	}
}

func TestReadyzProbeIsCached(t *testing.T) {
	pg := pgtest.Start(t)
	s := &Server{Upstream: pg.Addr(), ProbeCacheTTL: time.Hour}
	s.MarkReady()
	for range 5 {
		if code, body := get(t, s, "/readyz"); code != 200 {
			t.Fatalf("GET /readyz = %d %q", code, body)
		}
	}
	if n := s.probeRuns.Load(); n != 1 {
		t.Errorf("%d probes for 5 requests within the TTL, want 1", n)
	}

	// With a short TTL a changed upstream is noticed: the upstream goes away.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s2 := &Server{Upstream: l.Addr().String(), ProbeCacheTTL: 50 * time.Millisecond}
	s2.MarkReady()
	if code, body := get(t, s2, "/readyz"); code != 200 {
		t.Fatalf("GET /readyz with a listener = %d %q", code, body)
	}
	l.Close()
	if code, _ := get(t, s2, "/readyz"); code != 200 {
		t.Errorf("within the TTL the cached success should be served, got %d", code)
	}
	time.Sleep(60 * time.Millisecond)
	if code, body := get(t, s2, "/readyz"); code != 503 {
		t.Errorf("after the TTL, GET /readyz = %d %q, want 503", code, body)
	}
}

func TestReadyzProbeTimeout(t *testing.T) {
	s := &Server{
		Upstream:     "192.0.2.1:5432", // never dialled: Dial blocks until its context ends
		ProbeTimeout: 50 * time.Millisecond,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		},
	}
	s.MarkReady()
	start := time.Now()
	code, body := get(t, s, "/readyz")
	if code != 503 || !strings.Contains(body, "deadline exceeded") {
		t.Errorf("GET /readyz = %d %q, want 503 with deadline exceeded", code, body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("probe took %v despite a 50ms timeout", d)
	}
}

func TestMetrics(t *testing.T) {
	var s Server
	if code, body := get(t, &s, "/metrics"); code != 404 || !strings.Contains(body, "not enabled") {
		t.Errorf("GET /metrics without a handler = %d %q, want 404 not enabled", code, body)
	}
	s2 := Server{Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "pgtrace_up 1\n")
	})}
	if code, body := get(t, &s2, "/metrics"); code != 200 || body != "pgtrace_up 1\n" {
		t.Errorf("GET /metrics = %d %q", code, body)
	}
}

func TestHandle(t *testing.T) {
	var s Server
	// A catch-all page and an API route, as the rest of package admin adds
	// them, must coexist with the built-in routes.
	s.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "page") }))
	s.Handle("GET /api/queries", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "queries") }))
	for path, want := range map[string]string{"/": "page", "/api/queries": "queries", "/healthz": "ok\n", "/nope": "page"} {
		if code, body := get(t, &s, path); code != 200 || body != want {
			t.Errorf("GET %s = %d %q, want 200 %q", path, code, body, want)
		}
	}
	// "GET /" as a catch-all does not conflict either.
	var s2 Server
	s2.Handle("GET /", http.NotFoundHandler())
	if code, _ := get(t, &s2, "/healthz"); code != 200 {
		t.Errorf("GET /healthz next to \"GET /\" = %d", code)
	}
}

func TestServeAndShutdown(t *testing.T) {
	pg := pgtest.Start(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Upstream: pg.Addr()}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	s.MarkReady()

	url := "http://" + l.Addr().String()
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s = %d %q", path, resp.StatusCode, body)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
	}
	if err := s.Ready(t.Context()); err == nil || err.Error() != "shutting down" {
		t.Errorf("Ready after Shutdown = %v, want shutting down", err)
	}
}

// TestToken: with a Token, /healthz and /readyz stay open for probes and
// every other route (metrics, API, page, reset) needs the token, as a
// Bearer token or as the Basic password a browser sends.
func TestToken(t *testing.T) {
	const token = "s3cret-token-value"
	s := &Server{Token: token, Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "metrics\n")
	})}
	s.Handle("GET /api/queries", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "queries\n") }))
	s.Handle("POST /api/reset", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "reset\n") }))
	s.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "page\n") }))
	s.MarkReady()

	bearer := func(v string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+v) }
	}
	basic := func(u, p string) func(*http.Request) { return func(r *http.Request) { r.SetBasicAuth(u, p) } }
	none := func(*http.Request) {}
	tests := []struct {
		name, method, path string
		auth               func(*http.Request)
		wantCode           int
		wantBody           string
	}{
		{"healthz open", "GET", "/healthz", none, 200, "ok"},
		{"readyz open", "GET", "/readyz", none, 200, "ok"},
		{"healthz ignores a wrong token", "GET", "/healthz", bearer("nope"), 200, "ok"},
		{"metrics without token", "GET", "/metrics", none, 401, "missing admin token"},
		{"metrics with token", "GET", "/metrics", bearer(token), 200, "metrics"},
		{"api without token", "GET", "/api/queries", none, 401, "missing admin token"},
		{"api with a wrong token", "GET", "/api/queries", bearer("s3cret-token-valuX"), 401, "wrong admin token"},
		{"api with a prefix of the token", "GET", "/api/queries", bearer("s3cret"), 401, "wrong admin token"},
		{"api with the token", "GET", "/api/queries", bearer(token), 200, "queries"},
		{"page as a browser, Basic", "GET", "/", basic("", token), 200, "page"},
		{"page, Basic with any user", "GET", "/", basic("operator", token), 200, "page"},
		{"page, wrong Basic password", "GET", "/", basic("operator", "x"), 401, "wrong admin token"},
		{"page without token", "GET", "/", none, 401, "missing admin token"},
		{"reset without token", "POST", "/api/reset", none, 401, "missing admin token"},
		{"reset with token", "POST", "/api/reset", bearer(token), 200, "reset"},
		{"unknown path without token", "GET", "/debug/pprof/", none, 401, "missing admin token"},
		{"token in another scheme", "GET", "/metrics", func(r *http.Request) { r.Header.Set("Authorization", "Token "+token) }, 401, "wrong admin token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(tt.method, tt.path, nil)
			tt.auth(req)
			s.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode || !strings.Contains(rec.Body.String(), tt.wantBody) {
				t.Errorf("%s %s = %d %q, want %d %q", tt.method, tt.path, rec.Code, rec.Body.String(), tt.wantCode, tt.wantBody)
			}
			if rec.Code == 401 {
				ch := rec.Header().Values("WWW-Authenticate")
				if len(ch) != 2 || !strings.HasPrefix(ch[0], "Bearer ") || !strings.HasPrefix(ch[1], "Basic ") {
					t.Errorf("401 challenges %q, want Bearer and Basic", ch)
				}
			}
		})
	}

	// Without a Token nothing is asked (loopback, the default).
	open := &Server{Metrics: s.Metrics}
	if code, body := get(t, open, "/metrics"); code != 200 || body != "metrics\n" {
		t.Errorf("no token: GET /metrics = %d %q, want 200", code, body)
	}
}
