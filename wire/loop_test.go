package wire

import (
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestSlowClientDoesNotStall reads a large result slowly through the proxy
// while another session runs queries: the slow reader's bytes wait in the
// relay (the loop stops reading its upstream) without holding anyone else up,
// and every row arrives.
func TestSlowClientDoesNotStall(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	slow, other := p.connect(t), p.connect(t)
	ctx := ctxT(t)
	waits := loopStats.waits.Load()

	const rowsWanted, width = 20000, 1000 // 20 MB
	var wg sync.WaitGroup
	var rows, bytes int
	var slowErr error
	slowDone := make(chan time.Time, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r, err := slow.Query(ctx, "select repeat('x', $1) from generate_series(1, $2)", width, rowsWanted)
		if err != nil {
			slowErr = err
			return
		}
		for r.Next() {
			var s string
			if err := r.Scan(&s); err != nil {
				slowErr = err
				break
			}
			rows++
			bytes += len(s)
			if rows%200 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
		r.Close()
		if slowErr == nil {
			slowErr = r.Err()
		}
		slowDone <- time.Now()
	}()

	time.Sleep(50 * time.Millisecond) // let the slow reader fall behind
	for i := 0; i < 100; i++ {
		var n int
		if err := other.QueryRow(ctx, "select $1::int", i).Scan(&n); err != nil || n != i {
			t.Fatalf("bystander query %d: %v (got %d)", i, err, n)
		}
	}
	bystanderDone := time.Now()
	wg.Wait()
	if slowErr != nil {
		t.Fatal(slowErr)
	}
	if rows != rowsWanted || bytes != rowsWanted*width {
		t.Errorf("slow reader got %d rows, %d bytes; want %d, %d", rows, bytes, rowsWanted, rowsWanted*width)
	}
	if end := <-slowDone; !bystanderDone.Before(end) {
		t.Errorf("the bystander finished after the slow reader: it waited for it")
	}
	if loopMode() {
		if loopStats.sessions.Load() == 0 {
			t.Error("no session was relayed by an event loop")
		}
		// The ring loop cannot see a send wait: the kernel holds it and
		// the receive linked behind it.
		if defaultIO == IOEpoll && loopStats.waits.Load() == waits {
			t.Error("the slow reader never made the relay wait: the test did not test backpressure")
		}
	}
}
