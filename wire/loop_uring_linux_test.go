package wire

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestURingRelays runs sessions on the io_uring loop, whatever mode the
// rest of the suite runs in: queries, a result larger than a provided
// buffer and a pipeline of small ones arrive whole, and the ring holds
// the sockets while the sessions live and none after. Where io_uring is
// not available the sessions must have fallen back to the epoll loop.
func TestURingRelays(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg, func(s *Server) { s.IO = IOURing })
	ctx := ctxT(t)
	sides := uringSides()
	sessions := loopStats.sessions.Load()
	c := p.connect(t)
	var s string
	if err := c.QueryRow(ctx, "select repeat('x', 100000)").Scan(&s); err != nil || len(s) != 100000 {
		t.Fatalf("large value: %v (%d bytes)", err, len(s))
	}
	for i := 0; i < 50; i++ {
		var n int
		if err := c.QueryRow(ctx, "select $1::int", i).Scan(&n); err != nil || n != i {
			t.Fatalf("query %d: %v (got %d)", i, err, n)
		}
	}
	if got := loopStats.sessions.Load() - sessions; got != 1 {
		t.Fatalf("%d sessions went to a loop, want 1", got)
	}
	if len(urings.loops) == 0 {
		t.Logf("io_uring not available (%v): checked the fallback", urings.err)
		return
	}
	if got := uringSides() - sides; got != 2 {
		t.Errorf("the ring loops hold %d more sockets during the session, want 2", got)
	}
	c.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for p.ActiveConnections() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := uringSides(); got != sides {
		t.Errorf("the ring loops hold %d sockets after the session, %d before", got, sides)
	}
}

// TestURingFallback makes io_uring_setup fail as it fails where io_uring
// is disabled or too old (the kernel refuses the setup), and checks that
// sessions of a Server asking for it relay on the epoll loop and that the
// reason is logged once.
func TestURingFallback(t *testing.T) {
	pg := pgtest.Start(t)
	saved, savedFlags := urings, uringExtraSetupFlags
	urings = &uringPool{}
	uringExtraSetupFlags = 1 << 31 // no such setup flag: EINVAL
	t.Cleanup(func() { urings, uringExtraSetupFlags = saved, savedFlags })
	var logs syncBuffer
	p := startProxy(t, pg, func(s *Server) {
		s.IO = IOURing
		s.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx := ctxT(t)
	epollSides := func() int { return loopSides() - uringSides() }
	before := epollSides()
	sessions := loopStats.sessions.Load()
	for i := 0; i < 2; i++ {
		c := p.connect(t)
		var n int
		if err := c.QueryRow(ctx, "select $1::int", 7).Scan(&n); err != nil || n != 7 {
			t.Fatalf("session %d: %v (got %d)", i, err, n)
		}
		if got := epollSides() - before; got != 2*(i+1) {
			t.Errorf("session %d: the epoll loops hold %d more sockets, want %d", i, got, 2*(i+1))
		}
	}
	if got := loopStats.sessions.Load() - sessions; got != 2 {
		t.Errorf("%d sessions went to a loop, want 2", got)
	}
	if len(urings.loops) != 0 || urings.err == nil {
		t.Fatalf("io_uring loops started although setup was made to fail (err %v)", urings.err)
	}
	out := logs.String()
	if n := strings.Count(out, "io_uring is not available"); n != 1 {
		t.Errorf("the fallback was logged %d times, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "io_uring_setup: invalid argument") {
		t.Errorf("the log does not say why:\n%s", out)
	}
}

// TestURingRingRunsDry gives the ring loop one provided buffer and has
// eight sessions read large results (20 MB) slowly, so that sends to the slow
// clients hold every buffer: receives then find the ring empty and go to
// the sessions' own buffers, and every row still arrives.
func TestURingRingRunsDry(t *testing.T) {
	pg := pgtest.Start(t)
	saved, savedCount := urings, uringBufCount
	urings, uringBufCount = &uringPool{}, 1
	t.Cleanup(func() { urings, uringBufCount = saved, savedCount })
	p := startProxy(t, pg, func(s *Server) { s.IO = IOURing })
	ctx := ctxT(t)
	dry := uringDry.Load()
	const sessions, rowsWanted, width = 8, 20000, 1000 // 20 MB each: more than the socket buffers hold
	errs := make(chan error, sessions)
	for i := 0; i < sessions; i++ {
		c := p.connect(t)
		go func() {
			r, err := c.Query(ctx, "select repeat('y', $1) from generate_series(1, $2)", width, rowsWanted)
			if err != nil {
				errs <- err
				return
			}
			n := 0
			for r.Next() {
				var s string
				if err := r.Scan(&s); err != nil || len(s) != width {
					errs <- fmt.Errorf("row %d: %v (%d bytes)", n, err, len(s))
					r.Close()
					return
				}
				n++
				if n%100 == 0 {
					time.Sleep(5 * time.Millisecond)
				}
			}
			r.Close()
			if err := r.Err(); err != nil || n != rowsWanted {
				errs <- fmt.Errorf("%d rows of %d: %v", n, rowsWanted, err)
				return
			}
			errs <- nil
		}()
	}
	for i := 0; i < sessions; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if _, err := urings.loop(); err != nil {
		t.Logf("io_uring not available (%v): checked the fallback", err)
		return
	}
	if uringDry.Load() == dry {
		t.Error("the ring never ran dry: the test did not test the fallback to own buffers")
	}
}
