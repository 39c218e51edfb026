package wire

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// fakeUpstream accepts sessions, answers any startup with a trust login
// (AuthenticationOk, BackendKeyData, ReadyForQuery) and then idles.
func fakeUpstream(t *testing.T) string {
	l := mustListen(t)
	t.Cleanup(func() { l.Close() })
	login := concat(msg('R', "\x00\x00\x00\x00"), msg('K', "\x00\x00\x00\x01\x00\x00\x00\x02"), msg('Z', "I"))
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := readStartup(c); err != nil {
					return
				}
				c.Write(login)
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return l.Addr().String()
}

// idleClients opens n logged-in, idle sessions to addr.
func idleClients(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	startup := []byte{0, 0, 0, 0, 0, 3, 0, 0}
	startup = append(startup, "user\x00idle\x00\x00"...)
	binary.BigEndian.PutUint32(startup, uint32(len(startup)))
	conns := make([]net.Conn, 0, n)
	buf := make([]byte, 64)
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		conns = append(conns, c)
		c.Write(startup)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		// AuthenticationOk (9) + BackendKeyData (13) + ReadyForQuery (6).
		if _, err := io.ReadFull(c, buf[:28]); err != nil {
			t.Fatalf("client %d login: %v", i, err)
		}
	}
	return conns
}

func goMemory() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// TestIdleConnectionMemory measures the Go memory (heap and stacks) the
// relay holds per idle session, against a fake upstream so that PostgreSQL
// backends are not needed: 1000 sessions through the proxy minus 1000
// direct ones. Goal: at most 64 KiB per connection.
func TestIdleConnectionMemory(t *testing.T) {
	const n = 1000
	up := fakeUpstream(t)

	base := goMemory()
	direct := idleClients(t, up, n)
	directCost := goMemory() - base
	for _, c := range direct {
		c.Close()
	}

	srv := &Server{Upstream: up, Observer: ObserverFunc(func(Event) {}), Logger: testLogger(t)}
	l := mustListen(t)
	go srv.Serve(context.Background(), l)
	defer srv.Shutdown(context.Background())
	time.Sleep(100 * time.Millisecond) // the direct sessions' goroutines end
	base = goMemory()
	proxied := idleClients(t, l.Addr().String(), n)
	defer func() {
		for _, c := range proxied {
			c.Close()
		}
	}()
	if got := srv.ActiveConnections(); got != n {
		t.Fatalf("ActiveConnections = %d", got)
	}
	proxiedCost := goMemory() - base
	per := (int64(proxiedCost) - int64(directCost)) / n
	t.Logf("%d idle sessions: %d KiB direct, %d KiB through the proxy: the relay holds %.1f KiB per session",
		n, directCost>>10, proxiedCost>>10, float64(per)/1024)
	if per > 64<<10 {
		t.Errorf("relay holds %d KiB per idle session, goal 64 KiB", per>>10)
	}
}
