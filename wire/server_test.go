package wire

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestConnectionEvents(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	pid := c.PgConn().PID()
	if _, err := c.Exec(ctxT(t), "set application_name = 'renamed'"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctxT(t), "begin"); err != nil {
		t.Fatal(err)
	}
	// An empty Sync inside the transaction changes nothing; the rollback's
	// statement carries the status back to idle.
	if _, err := c.Exec(ctxT(t), "rollback"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	evs := p.rec.wait(t, "ConnClosed", func(evs []Event) bool {
		for _, e := range evs {
			if e.Kind == ConnClosed {
				return true
			}
		}
		return false
	})
	var kinds []string
	var id uint64
	for _, e := range evs {
		if id == 0 {
			id = e.Conn.ID
		}
		if e.Conn.ID != id {
			t.Errorf("event of another connection: %+v", e)
		}
		kinds = append(kinds, e.Kind.String())
		switch e.Kind {
		case ConnOpened:
			if e.Conn.BackendPID != 0 || e.Conn.User != p.pg.User {
				t.Errorf("opened: %+v", e.Conn)
			}
		case ConnClosed:
			if e.Side != SideClient || e.Err != nil || e.Statements != 3 || e.BytesIn <= 0 || e.BytesOut <= 0 {
				t.Errorf("closed: side %v err %v statements %d bytes %d/%d", e.Side, e.Err, e.Statements, e.BytesIn, e.BytesOut)
			}
			if e.Conn.Application != "renamed" || e.Conn.BackendPID != pid {
				t.Errorf("closed conn info: %+v", e.Conn)
			}
		}
	}
	want := "conn_opened conn_authenticated statement_done statement_done statement_done conn_closed"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("events:\n got %s\nwant %s", got, want)
	}
}

func TestConnectionsActive(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	pid := c.PgConn().PID()
	ctx := ctxT(t)
	if _, err := c.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	state := func() ConnState {
		for _, cs := range p.Connections() {
			if cs.BackendPID == pid {
				return cs
			}
		}
		t.Fatalf("no connection with pid %d", pid)
		return ConnState{}
	}
	if cs := state(); cs.State != "idle in transaction" || !cs.StatementStart.IsZero() {
		t.Errorf("after begin: %+v", cs)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(0.5)")
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if cs := state(); cs.State != "active" || cs.StatementStart.Before(start) || cs.StatementStart.After(time.Now()) {
		t.Errorf("during a query: %+v", cs)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Exec(ctx, "select nope")
	if cs := state(); cs.State != "idle in transaction (aborted)" {
		t.Errorf("after an error: %+v", cs)
	}
}

func TestShutdownWaitsThenCloses(t *testing.T) {
	pg := pgtest.Start(t)
	rec := newRecorder()
	srv := &Server{Upstream: pg.Addr(), Observer: rec, Logger: testLogger(t)}
	l := mustListen(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	dsn := pgtest.DSNAt(l.Addr().String(), pg.User, pg.Password, pg.Database)

	// One session leaves on its own during the grace period; one stays.
	leaving, err := pgx.Connect(ctxT(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	staying, err := pgx.Connect(ctxT(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer staying.Close(context.Background())
	if n := srv.ActiveConnections(); n != 2 {
		t.Errorf("ActiveConnections = %d", n)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		leaving.Close(context.Background())
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = srv.Shutdown(ctx)
	if err == nil || !strings.Contains(err.Error(), "1 connection(s) still open after waiting") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if n := srv.ActiveConnections(); n != 0 {
		t.Errorf("ActiveConnections after Shutdown = %d", n)
	}
	if _, err := staying.Exec(ctxT(t), "select 1"); err == nil {
		t.Error("the remaining session still works after Shutdown")
	}
	// Shutdown drained the queue: both ConnClosed events were delivered.
	var sides []Side
	for _, e := range rec.events {
		if e.Kind == ConnClosed {
			sides = append(sides, e.Side)
		}
	}
	if len(sides) != 2 || sides[0] != SideClient || sides[1] != SideProxy {
		t.Errorf("ConnClosed sides: %v", sides)
	}
	if err := srv.Serve(context.Background(), mustListen(t)); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
}

func TestServeContextStopsAccepting(t *testing.T) {
	srv := &Server{Upstream: "127.0.0.1:1"}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, mustListen(t)) }()
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Errorf("Serve: %v", err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
}

// blockingObserver blocks until released.
type blockingObserver struct {
	release chan struct{}
	mu      sync.Mutex
	n       int
}

func (o *blockingObserver) Observe(Event) {
	<-o.release
	o.mu.Lock()
	o.n++
	o.mu.Unlock()
}

func TestDroppedEvents(t *testing.T) {
	obs := &blockingObserver{release: make(chan struct{})}
	p := startProxy(t, pgtest.Start(t), func(s *Server) {
		s.Observer = obs
		s.QueueSize = 4
	})
	c := p.connect(t)
	ctx := ctxT(t)
	start := time.Now()
	for i := 0; i < 50; i++ {
		if _, err := c.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	// The relay did not wait for the stuck observer.
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("50 queries took %v with a stuck observer", el)
	}
	// 52 events (opened, authenticated, 50 statements); the dispatcher holds
	// one and the queue four. The last statement's event is sent after its
	// answer went to the client, so it may be counted a moment after Exec
	// returned.
	dropped := p.DroppedEvents()
	for deadline := time.Now().Add(2 * time.Second); dropped < 52-5 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		dropped = p.DroppedEvents()
	}
	if dropped < 52-5 || dropped > 52 {
		t.Errorf("DroppedEvents = %d, want about 47", dropped)
	}
	close(obs.release)
}

func TestCancelForwardedAtCap(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), func(s *Server) { s.MaxClientConnections = 1 })
	c := p.connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Exec(ctx, "select pg_sleep(20)"); err == nil {
		t.Fatal("no error")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("cancel at the connection cap took %v", el)
	}
	got := p.rec.waitStmts(t, c.PgConn().PID(), 1)
	if got[0].SQLState != "57014" {
		t.Errorf("statement: %+v", got[0])
	}
}
