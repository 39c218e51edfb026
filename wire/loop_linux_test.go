package wire

import (
	"os"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestLoopReleasesSockets ends many loop-relayed sessions in the ways they
// end in production — Terminate, a client that vanishes, a backend that is
// terminated — and checks that every socket the loops took is closed and
// deregistered afterwards: no file descriptor or loop entry leaks.
func TestLoopReleasesSockets(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg, nil)
	admin := direct(t, pg)
	ctx := ctxT(t)

	waitIdle := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for p.ActiveConnections() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d sessions still open 10s after their clients left", p.ActiveConnections())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	c := p.connect(t) // the loops exist from here on
	c.Close(ctx)
	waitIdle()
	sides := loopSides() // first: it may start the loops, which hold descriptors
	fds := openFDs(t)
	sessions := loopStats.sessions.Load()

	const rounds = 20
	for i := 0; i < rounds; i++ {
		clean := p.connect(t)
		if _, err := clean.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		clean.Close(ctx)

		vanishing := p.connect(t)
		hj, err := vanishing.PgConn().Hijack()
		if err != nil {
			t.Fatal(err)
		}
		hj.Conn.Close()

		victim := p.connect(t)
		if _, err := admin.Exec(ctx, "select pg_terminate_backend($1)", victim.PgConn().PID()); err != nil {
			t.Fatal(err)
		}
		if _, err := victim.Exec(ctx, "select 1"); err == nil {
			t.Fatal("a terminated backend answered")
		}
		victim.Close(ctx)
	}
	waitIdle()
	if got := loopStats.sessions.Load() - sessions; loopMode() && got < 3*rounds {
		t.Fatalf("the loops relayed %d sessions, want %d", got, 3*rounds)
	}
	if got := loopSides(); got != sides {
		t.Errorf("loops hold %d sockets after the sessions ended, %d before", got, sides)
	}
	// The test's own connections are closed too; allow for a descriptor
	// the runtime or pgx opens lazily.
	if got := openFDs(t); got > fds+2 {
		t.Errorf("%d open file descriptors after %d sessions, %d before", got, 3*rounds, fds)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// loopSides is the number of sockets the epoll and ring loops hold; it
// starts the loops if no session has.
func loopSides() int {
	nextLoop() // the loops' start happens before this read
	n := uringSides()
	for _, l := range loops {
		l.mu.Lock()
		n += len(l.sides)
		l.mu.Unlock()
	}
	return n
}
