package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestMain runs the package's tests with the relay I/O mode named by
// PGTRACE_TEST_IO (the default, uring, when unset), so that CI can run them
// once per mode.
func TestMain(m *testing.M) {
	if mode := os.Getenv("PGTRACE_TEST_IO"); mode != "" {
		if !slices.Contains(IOModes, mode) {
			fmt.Fprintf(os.Stderr, "PGTRACE_TEST_IO=%q: want one of %v\n", mode, IOModes)
			os.Exit(2)
		}
		defaultIO = mode
	}
	pgtest.Main(m)
}

// loopMode reports whether sessions of the mode under test relay on an
// event loop (and so count in loopStats).
func loopMode() bool { return runtime.GOOS == "linux" && defaultIO != IOGoroutines }

// recorder is an Observer that keeps every event and lets a test wait for
// the ones it expects.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	changed chan struct{} // closed and replaced on every event
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) Observe(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// wait blocks until ok holds for the events so far, failing the test after
// 10s. It returns the events it last checked.
func (r *recorder) wait(t *testing.T, what string, ok func([]Event) bool) []Event {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		evs := append([]Event(nil), r.events...)
		ch := r.changed
		r.mu.Unlock()
		if ok(evs) {
			return evs
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; have %d events:\n%s", what, len(evs), dumpEvents(evs))
		}
	}
}

// stmts are the StatementDone events of the session with the given backend pid.
func stmts(evs []Event, pid uint32) []Statement {
	var out []Statement
	for _, e := range evs {
		if e.Kind == StatementDone && e.Conn.BackendPID == pid {
			out = append(out, *e.Stmt)
		}
	}
	return out
}

// waitStmts waits until the session with backend pid has reported n statements.
func (r *recorder) waitStmts(t *testing.T, pid uint32, n int) []Statement {
	t.Helper()
	evs := r.wait(t, "statement events", func(evs []Event) bool { return len(stmts(evs, pid)) >= n })
	return stmts(evs, pid)
}

func dumpEvents(evs []Event) string {
	var b []byte
	for _, e := range evs {
		b = append(b, e.Kind.String()...)
		b = append(b, ' ')
		if e.Stmt != nil {
			b = append(b, e.Stmt.Text...)
			b = append(b, " | "...)
			b = append(b, e.Stmt.CommandTag...)
			b = append(b, e.Stmt.SQLState...)
		}
		if e.Err != nil {
			b = append(b, e.Err.Error()...)
		}
		b = append(b, '\n')
	}
	return string(b)
}

// proxy is a Server under test listening on 127.0.0.1:0.
type proxy struct {
	*Server
	Addr string
	rec  *recorder
	pg   *pgtest.Server
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("PGTRACE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startProxy starts a Server in front of pg; configure may change it before
// it serves. The server is shut down when the test ends.
func startProxy(t *testing.T, pg *pgtest.Server, configure func(*Server)) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveProxy(t, pg, l, configure)
}

func serveProxy(t *testing.T, pg *pgtest.Server, l net.Listener, configure func(*Server)) *proxy {
	t.Helper()
	rec := newRecorder()
	srv := &Server{Upstream: pg.Addr(), Observer: rec, Logger: testLogger(t)}
	if configure != nil {
		configure(srv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return &proxy{Server: srv, Addr: l.Addr().String(), rec: rec, pg: pg}
}

// dsn is a connection URL through the proxy.
func (p *proxy) dsn(user, password string) string {
	return pgtest.DSNAt(p.Addr, user, password, p.pg.Database)
}

// connect opens a pgx connection through the proxy as the server's user.
func (p *proxy) connect(t *testing.T) *pgx.Conn {
	t.Helper()
	return p.connectDSN(t, p.dsn(p.pg.User, p.pg.Password))
}

func (p *proxy) connectDSN(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// direct opens a pgx connection straight to the upstream.
func direct(t *testing.T, pg *pgtest.Server) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatalf("connect upstream directly: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type runtimeMem struct{ heapInuse, totalAlloc uint64 }

func (m *runtimeMem) read() {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.heapInuse, m.totalAlloc = ms.HeapInuse, ms.TotalAlloc
}

// startPeakSampler samples HeapInuse every 20ms until the returned function
// is called, which returns the peak.
func startPeakSampler() func() uint64 {
	stop := make(chan struct{})
	res := make(chan uint64)
	go func() {
		var peak uint64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-stop:
				res <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 { close(stop); return <-res }
}

// send writes msgs to the server through fe.
func send(t *testing.T, fe *pgproto3.Frontend, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

// receiveUntil reads from fe until a message of type M arrives, and
// returns it. Messages before it, ErrorResponses included, are skipped.
func receiveUntil[M pgproto3.BackendMessage](t *testing.T, fe *pgproto3.Frontend) M {
	t.Helper()
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if want, ok := m.(M); ok {
			return want
		}
	}
}
