package pool_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/pool"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// hookLog records what the pool hooks report.
type hookLog struct {
	mu      sync.Mutex
	waits   []wait
	created []error
	used    []time.Duration
	closed  []string
}

type wait struct {
	key      pool.Key
	start    time.Time
	d        time.Duration
	timedOut bool
}

func (h *hookLog) hooks() pool.Hooks {
	return pool.Hooks{
		Waited: func(key pool.Key, start time.Time, d time.Duration, timedOut bool) {
			h.mu.Lock()
			h.waits = append(h.waits, wait{key, start, d, timedOut})
			h.mu.Unlock()
		},
		Created: func(_ pool.Key, _ time.Duration, err error) {
			h.mu.Lock()
			h.created = append(h.created, err)
			h.mu.Unlock()
		},
		Used: func(_ pool.Key, d time.Duration) {
			h.mu.Lock()
			h.used = append(h.used, d)
			h.mu.Unlock()
		},
		Closed: func(_ pool.Key, reason string) {
			h.mu.Lock()
			h.closed = append(h.closed, reason)
			h.mu.Unlock()
		},
	}
}

func (h *hookLog) snapshot() (waits []wait, created []error, used []time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]wait(nil), h.waits...), append([]error(nil), h.created...), append([]time.Duration(nil), h.used...)
}

// TestHooksAndStats: with one server connection, a client holding a
// transaction makes another wait. While it waits, Stats says who holds
// the connection and since when the other waits; the hooks report every
// acquisition's wait (the waiting client's as long as the transaction
// kept it), each use, and the one login; a client that waits past
// MaxWait times out and is counted.
func TestHooksAndStats(t *testing.T) {
	var h hookLog
	p := startPooled(t, pool.ModeTransaction, func(c *pool.Config) {
		c.Size = 1
		c.MaxWait = 1500 * time.Millisecond
		c.Hooks = h.hooks()
	})
	ctx := context.Background()
	holder := p.connect(t, pgx.QueryExecModeExec)
	waiter := p.connect(t, pgx.QueryExecModeExec)
	key := pool.Key{Database: p.pg.Database, User: poolUser}

	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	asked := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "SELECT 2")
		done <- err
	}()
	// The waiter shows in the pool's state.
	var st pool.Stats
	deadline := time.Now().Add(10 * time.Second)
	for {
		stats := p.p.Stats()
		if len(stats) == 1 && stats[0].Waiting == 1 {
			st = stats[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no client waiting in the pool: %+v", stats)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.Name != key.Name() || st.Size != 1 || st.Used != 1 || st.Idle != 0 {
		t.Errorf("stats %+v, want pool %s of size 1 with 1 used, 0 idle", st, key.Name())
	}
	if st.WaitingSince.IsZero() || st.WaitingSince.Before(asked.Add(-time.Second)) || st.LongestWaitMs <= 0 {
		t.Errorf("waiting since %v (%.1f ms), want about %v", st.WaitingSince, st.LongestWaitMs, asked)
	}
	if len(st.Clients) != 1 || st.Clients[0].ServerPID == 0 || st.Clients[0].ConnID == 0 {
		t.Errorf("clients holding a connection: %+v, want the one in a transaction", st.Clients)
	}
	time.Sleep(300 * time.Millisecond)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the waiting client: %v", err)
	}

	waits, created, used := h.snapshot()
	var long *wait
	for i := range waits {
		if waits[i].key != key {
			t.Errorf("a wait for pool %v, want %v", waits[i].key, key)
		}
		if waits[i].d >= 250*time.Millisecond {
			long = &waits[i]
		}
	}
	// Logins (the first acquires for the pool's parameters), BEGIN…COMMIT,
	// SELECT 2: every acquisition reports its wait.
	if len(waits) < 3 {
		t.Errorf("%d waits reported, want one per acquisition (at least 3)", len(waits))
	}
	if long == nil || long.timedOut || long.start.Before(asked.Add(-time.Second)) {
		t.Errorf("waits %+v: want one of at least 250ms, from about %v", waits, asked)
	}
	if len(created) != 1 || created[0] != nil {
		t.Errorf("logins %v, want one", created)
	}
	if len(used) < 2 {
		t.Errorf("uses %v, want the transaction's and SELECT 2's", used)
	}

	// Past MaxWait: 53300, a timed-out wait, counted.
	tx, err = holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	_, err = waiter.Exec(ctx, "SELECT 3")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Fatalf("past MaxWait: %v, want 53300", err)
	}
	waits, _, _ = h.snapshot()
	if last := waits[len(waits)-1]; !last.timedOut || last.d < 1400*time.Millisecond {
		t.Errorf("last wait %+v, want a timed-out one of 1.5s", last)
	}
	if st := p.p.Stats()[0]; st.Timeouts != 1 || st.Waiting != 0 || !st.WaitingSince.IsZero() {
		t.Errorf("after the timeout: %+v, want 1 timeout and no one waiting", st)
	}
}
