package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// logRecord is one JSON log line of pgtrace.
type logRecord map[string]any

func (r logRecord) str(key string) string { s, _ := r[key].(string); return s }

// logSink collects pgtrace's JSON log lines; slog writes one record per Write.
type logSink struct {
	mu      sync.Mutex
	records []logRecord
	changed chan struct{} // closed and replaced on every record
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

func (s *logSink) Write(p []byte) (int, error) {
	var r logRecord
	if err := json.Unmarshal(p, &r); err != nil {
		r = logRecord{"msg": "unparsed: " + string(p)}
	}
	s.mu.Lock()
	s.records = append(s.records, r)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return len(p), nil
}

// wait returns the first record with message msg, waiting up to timeout.
func (s *logSink) wait(t *testing.T, msg string, timeout time.Duration) logRecord {
	t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		for _, r := range s.records {
			if r.str("msg") == msg {
				s.mu.Unlock()
				return r
			}
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no %q log line within %v; got:\n%s", msg, timeout, s)
		}
	}
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, r := range s.records {
		line, _ := json.Marshal(r)
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// proc is pgtrace running in-process.
type proc struct {
	logs   *logSink
	cancel context.CancelCauseFunc
	done   chan error // receives run's result
	ready  logRecord
}

// startPgtrace runs `pgtrace serve` with args on free ports and waits for
// its ready line.
func startPgtrace(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{logs: newLogSink(), done: make(chan error, 1)}
	ctx, cancel := context.WithCancelCause(t.Context())
	p.cancel = cancel
	argv := append([]string{"pgtrace", "serve", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0", "--log-level=debug"}, args...)
	go func() { p.done <- run(ctx, argv, strings.NewReader(""), io.Discard, p.logs) }()
	t.Cleanup(func() {
		cancel(nil)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Errorf("pgtrace did not stop")
		}
	})
	p.ready = p.logs.wait(t, readyMessage, 30*time.Second)
	return p
}

// stop cancels pgtrace as a SIGTERM would and returns what run returned.
func (p *proc) stop(t *testing.T, cause error) error {
	t.Helper()
	p.cancel(cause)
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("pgtrace did not stop within 30s; logs:\n%s", p.logs)
		return nil
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServeEndToEnd(t *testing.T) {
	pg := pgtest.Start(t)
	// No slow-query line (it names the normalized query) on a loaded machine.
	p := startPgtrace(t, "--upstream", pg.Addr(), "--slow-query-threshold", "1h")
	listen, admin := p.ready.str("listen"), p.ready.str("admin")
	if listen == "" || admin == "" || p.ready.str("upstream") != pg.Addr() {
		t.Fatalf("ready line lacks addresses: %v", p.ready)
	}

	ctx := t.Context()
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(listen, pg.User, pg.Password, pg.Database))
	if err != nil {
		t.Fatalf("connect through pgtrace: %v", err)
	}
	var sum int
	var backend string
	if err := conn.QueryRow(ctx, "SELECT $1::int + 1, current_setting('port')", 41).Scan(&sum, &backend); err != nil {
		t.Fatalf("query through pgtrace: %v", err)
	}
	if sum != 42 || net.JoinHostPort(pg.Host, backend) != pg.Addr() {
		t.Errorf("got %d from port %s, want 42 from %s", sum, backend, pg.Addr())
	}
	conn.Close(ctx)

	// At debug level, without a pipeline, every event is logged: the query
	// reached the observer through the relay's queue.
	ev := p.logs.wait(t, "event statement_done", 10*time.Second)
	if ev.str("tag") != "SELECT 1" || ev["rows"] != float64(1) {
		t.Errorf("statement event = %v, want tag SELECT 1 and 1 row", ev)
	}
	p.logs.wait(t, "event conn_closed", 10*time.Second)
	if strings.Contains(p.logs.String(), "current_setting") {
		t.Errorf("the logs contain statement text:\n%s", p.logs)
	}

	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ok\n"} {
		if code, body := httpGet(t, "http://"+admin+path); code != 200 || body != want {
			t.Errorf("GET %s = %d %q, want 200 %q", path, code, body, want)
		}
	}

	err = p.stop(t, errSigTerm)
	if !errors.Is(err, errSigTerm) || exitCode(err) != 0 {
		t.Errorf("run returned %v (exit %d), want the SIGTERM error (exit 0)", err, exitCode(err))
	}
	p.logs.wait(t, "shutting down", time.Second)
	p.logs.wait(t, "all sessions finished", time.Second)
	if _, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		t.Errorf("%s still accepts after shutdown", listen)
	}
	if _, err := http.Get("http://" + admin + "/healthz"); err == nil {
		t.Errorf("admin server %s still serving after shutdown", admin)
	}
}

func TestServeRealSignal(t *testing.T) {
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr())
	// serve has registered for SIGINT before logging ready, so the signal
	// reaches it rather than killing the test binary.
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if !errors.Is(err, errSigInt) || exitCode(err) != 130 {
			t.Errorf("run returned %v (exit %d), want the SIGINT error (exit 130)", err, exitCode(err))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("SIGINT did not stop pgtrace; logs:\n%s", p.logs)
	}
}

// startProcess runs pgtrace as a real process (the test binary re-executed
// as main, see TestMain) with args and waits for its ready line. The
// process is killed when the test ends if it still runs.
func startProcess(t *testing.T, args ...string) (cmd *exec.Cmd, stderr *lockedBuffer, exited <-chan struct{}) {
	t.Helper()
	cmd = exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	stderr = &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.After(30 * time.Second)
	for !strings.Contains(stderr.String(), `"msg":"`+readyMessage+`"`) {
		select {
		case <-done:
			t.Fatalf("pgtrace %q exited before it was ready (%v):\n%s", args, cmd.ProcessState, stderr)
		case <-deadline:
			t.Fatalf("pgtrace %q not ready after 30s:\n%s", args, stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return cmd, stderr, done
}

// TestSignalExitCodes runs pgtrace as a process: SIGTERM, the way service
// managers stop it, is a clean exit (0); SIGINT, an interrupt at a
// terminal, exits 130 as shells report it. Neither prints an error.
func TestSignalExitCodes(t *testing.T) {
	for _, tt := range []struct {
		sig  syscall.Signal
		want int
	}{
		{syscall.SIGTERM, 0},
		{syscall.SIGINT, 130},
	} {
		t.Run(tt.sig.String(), func(t *testing.T) {
			cmd, stderr, exited := startProcess(t, "serve", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0",
				"--upstream", closedAddr(t))
			if err := cmd.Process.Signal(tt.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				t.Fatalf("pgtrace did not stop on %v:\n%s", tt.sig, stderr)
			}
			if got := cmd.ProcessState.ExitCode(); got != tt.want {
				t.Errorf("exit code after %v = %d, want %d\n%s", tt.sig, got, tt.want, stderr)
			}
			if strings.Contains(stderr.String(), "pgtrace: ") {
				t.Errorf("an error was printed after %v:\n%s", tt.sig, stderr)
			}
		})
	}
}

// TestServeWarnsUnresolvableUpstream: a host name that does not resolve
// gets a warning at start; pgtrace serves anyway (the name may resolve
// later) and /readyz says why it is not ready.
func TestServeWarnsUnresolvableUpstream(t *testing.T) {
	upstream := "no-such-host.invalid:5432" // .invalid never resolves (RFC 2606)
	p := startPgtrace(t, "--upstream", upstream, "--dial-timeout=2s")
	w := p.logs.wait(t, "the upstream's host name does not resolve; serving anyway, clients get SQLSTATE 08001 until it does", 10*time.Second)
	if w.str("level") != "WARN" || w.str("upstream") != upstream || w.str("host") != "no-such-host.invalid" || !strings.Contains(w.str("fix"), "--upstream") {
		t.Errorf("warning = %v, want level WARN naming the upstream, its host and the flag", w)
	}
	if code, body := httpGet(t, "http://"+p.ready.str("admin")+"/readyz"); code != 503 || !strings.Contains(body, upstream) {
		t.Errorf("GET /readyz = %d %q, want 503 naming %s", code, body, upstream)
	}

	// A name that resolves, and an IP address, get no warning.
	for _, up := range []string{"localhost:5432", closedAddr(t)} {
		q := startPgtrace(t, "--upstream", up)
		time.Sleep(200 * time.Millisecond)
		if strings.Contains(q.logs.String(), "does not resolve") {
			t.Errorf("--upstream %s: warned although it resolves:\n%s", up, q.logs)
		}
	}
}

func TestServeClosesLingeringSessions(t *testing.T) {
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr(), "--shutdown-timeout=300ms")
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(p.ready.str("listen"), pg.User, pg.Password, pg.Database))
	if err != nil {
		t.Fatalf("connect through pgtrace: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	err = p.stop(t, errSigTerm)
	if !errors.Is(err, errSigTerm) || exitCode(err) != 0 {
		t.Errorf("run returned %v (exit %d), want the SIGTERM error (exit 0)", err, exitCode(err))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %v with a 300ms grace period", d)
	}
	r := p.logs.wait(t, "closed sessions that outlived the grace period", time.Second)
	if !strings.Contains(r.str("err"), "1 connection") {
		t.Errorf("shutdown log does not say how many were open: %v", r)
	}
	if sd := p.logs.wait(t, "shutting down", time.Second); sd["open_connections"] != float64(1) {
		t.Errorf("shutting down line: open_connections = %v, want 1", sd["open_connections"])
	}
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Errorf("session still works after pgtrace closed it")
	}
}

func TestServeUnreachableUpstream(t *testing.T) {
	upstream := closedAddr(t)
	p := startPgtrace(t, "--upstream", upstream, "--dial-timeout=2s")
	_, err := pgx.Connect(t.Context(), pgtest.DSNAt(p.ready.str("listen"), "app", "secret", "app"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("connect with the upstream down: %v, want a PostgreSQL error", err)
	}
	if !strings.HasPrefix(pgErr.Code, "08") || !strings.Contains(pgErr.Message, upstream) {
		t.Errorf("error %s %q, want class 08 naming %s", pgErr.Code, pgErr.Message, upstream)
	}
	if code, body := httpGet(t, "http://"+p.ready.str("admin")+"/readyz"); code != 503 || !strings.Contains(body, upstream) {
		t.Errorf("GET /readyz = %d %q, want 503 naming %s", code, body, upstream)
	}
}

func TestServeStartupErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"listen address taken", []string{"--listen", busy.Addr().String()}, "--listen " + busy.Addr().String()},
		{"admin address taken", []string{"--listen=127.0.0.1:0", "--admin-listen", busy.Addr().String()}, "--admin-listen " + busy.Addr().String()},
		{"missing certificate", []string{"--listen=127.0.0.1:0", "--tls-cert=nonexistent.pem", "--tls-key=nonexistent.key"}, "--tls-cert/--tls-key"},
		{"missing CA", []string{"--listen=127.0.0.1:0", "--upstream-sslmode=verify-full", "--upstream-ca=nonexistent.pem"}, "--upstream-ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr strings.Builder
			code := execute(t.Context(), append([]string{"pgtrace", "serve"}, tt.args...), nil, io.Discard, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", code, stderr.String(), tt.want)
			}
		})
	}
}

func TestServeInterruptedStartup(t *testing.T) {
	ctx, cancel := context.WithCancelCause(t.Context())
	cancel(errSigTerm) // the signal arrives before startup is done
	logs := newLogSink()
	err := run(ctx, []string{"pgtrace", "--listen=127.0.0.1:0", "--admin-listen=127.0.0.1:0"}, nil, io.Discard, logs)
	if !errors.Is(err, errSigTerm) {
		t.Errorf("run = %v, want the SIGTERM error", err)
	}
	for _, r := range logs.records {
		if r.str("msg") == readyMessage {
			t.Errorf("pgtrace logged ready although interrupted during startup")
		}
	}
}

func TestHealthCommand(t *testing.T) {
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr())
	admin := p.ready.str("admin")
	_, port, _ := net.SplitHostPort(admin)

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		wantOut  string
	}{
		{"healthz", []string{"--admin-listen", admin}, nil, 0, "/healthz: ok"},
		{"readyz", []string{"--admin-listen", admin, "--ready"}, nil, 0, "/readyz: ok"},
		{"wildcard address probed on loopback", []string{"--admin-listen", "0.0.0.0:" + port}, nil, 0, "http://127.0.0.1:" + port + "/healthz: ok"},
		{"from the environment", nil, map[string]string{"PGTRACE_ADMIN_LISTEN": ":" + port}, 0, "/healthz: ok"},
		{"nothing listening", []string{"--admin-listen", closedAddr(t), "--timeout=2s"}, nil, 1, "connection refused"},
		{"admin disabled", []string{"--admin-listen="}, nil, 2, "admin server is disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out strings.Builder
			code := execute(t.Context(), append([]string{"pgtrace", "health"}, tt.args...), nil, &out, &out)
			if code != tt.wantCode || !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("pgtrace health %q: exit %d, output %q; want exit %d and %q", tt.args, code, out.String(), tt.wantCode, tt.wantOut)
			}
		})
	}

	// Not ready once shutting down: stop pgtrace, then /readyz cannot answer 200.
	p.stop(t, errSigTerm)
	if code := execute(t.Context(), []string{"pgtrace", "health", "--ready", "--admin-listen", admin}, nil, io.Discard, io.Discard); code != 1 {
		t.Errorf("pgtrace health --ready after shutdown: exit %d, want 1", code)
	}
}

func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
