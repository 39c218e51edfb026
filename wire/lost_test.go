package wire

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestUpstreamResetUnderWrite resets the upstream connection while the
// client streams COPY data into it and the relay waits for room to write:
// the write fails first. The client must get 08006, as when a read from
// the upstream fails, and the COPY must end as failed with 08006.
func TestUpstreamResetUnderWrite(t *testing.T) {
	pg := pgtest.Start(t)
	fwd := newForwarder(t, pg.Addr())
	p := startProxy(t, pg, func(s *Server) { s.Upstream = fwd.addr })
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()
	if _, err := c.Exec(ctx, "create temp table reset_copy(s text)"); err != nil {
		t.Fatal(err)
	}
	// The COPY is driven by hand: pgx's CopyFrom can panic when the server
	// ends the connection with a FATAL error mid-COPY (jackc/pgx#2364).
	hj, err := c.PgConn().Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	fe := pgproto3.NewFrontend(hj.Conn, hj.Conn)
	hj.Conn.SetDeadline(time.Now().Add(20 * time.Second))
	send(t, fe, &pgproto3.Query{String: "copy reset_copy from stdin"})
	receiveUntil[*pgproto3.CopyInResponse](t, fe)
	row, _ := (&pgproto3.CopyData{Data: []byte(strings.Repeat("z", 1000) + "\n")}).Encode(nil)
	go func() { // streams until the connection breaks
		for {
			if _, err := hj.Conn.Write(row); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // the COPY is under way
	// Once the forwarder stops reading, its buffers fill within
	// milliseconds and the relay waits to write upstream (it may already
	// have been waiting, for PostgreSQL is slower than the client).
	fwd.stalled.Store(true)
	time.Sleep(500 * time.Millisecond)
	fwd.cut()
	m, err := fe.Receive()
	if e, ok := m.(*pgproto3.ErrorResponse); !ok || e.Code != "08006" {
		t.Errorf("client got %#v, %v; want ErrorResponse 08006", m, err)
	}
	evs := p.rec.wait(t, "ConnClosed", func(evs []Event) bool { return hasKind(evs, ConnClosed, pid) })
	got := stmts(evs, pid)
	if len(got) != 2 || got[1].SQLState != "08006" || got[1].Text != "copy reset_copy from stdin" {
		t.Errorf("statement events %+v; want the COPY failed with 08006", got)
	}
}

// TestUpstreamResetClientNotReading: a TLS session (relayed by goroutines,
// not the event loop) whose client pipelines queries with large results
// and never reads; then the upstream is reset. The write to the upstream
// fails first, and the session must still end, though the relay's writes
// to the client block.
func TestUpstreamResetClientNotReading(t *testing.T) {
	pg := pgtest.Start(t)
	fwd := newForwarder(t, pg.Addr())
	pki := newTestPKI(t)
	p := startProxy(t, pg, func(s *Server) {
		s.Upstream = fwd.addr
		s.ClientTLS = &tls.Config{Certificates: []tls.Certificate{pki.server}}
	})
	c := p.connectDSN(t, strings.Replace(p.dsn(p.pg.User, p.pg.Password), "sslmode=disable", "sslmode=require", 1))
	pid := c.PgConn().PID()
	hj, err := c.PgConn().Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hj.Conn.Close()
	// Queries of 100 KB with results of 2 MB, more of both than every
	// buffer on the way holds; the client never reads.
	q, _ := (&pgproto3.Query{String: "select repeat('x', 100000) from generate_series(1, 20) /*" +
		strings.Repeat("p", 100000) + "*/"}).Encode(nil)
	go func() {
		for range 200 {
			if _, err := hj.Conn.Write(q); err != nil {
				return
			}
		}
	}()
	time.Sleep(time.Second) // every buffer fills
	fwd.cut()
	start := time.Now()
	p.rec.wait(t, "the session to end", func(evs []Event) bool { return hasKind(evs, ConnClosed, pid) })
	t.Logf("ended %v after the reset", time.Since(start))
}
