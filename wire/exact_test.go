package wire

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// recordingListener records what the proxy reads from and writes to its
// clients.
type recordingListener struct {
	net.Listener
	fromClient, toClient *lockedBuffer
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, l: l}, nil
}

type recordingConn struct {
	net.Conn
	l *recordingListener
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.fromClient.Write(p[:n])
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.l.toClient.Write(p[:n])
	return n, err
}

// TestByteExact records both legs of a session with a varied workload and
// requires them to be identical: the relay forwards the original bytes.
func TestByteExact(t *testing.T) {
	pg := pgtest.Start(t)
	fwd := newForwarder(t, pg.Addr())
	rl := &recordingListener{Listener: mustListen(t), fromClient: &lockedBuffer{}, toClient: &lockedBuffer{}}
	p := serveProxy(t, pg, rl, func(s *Server) { s.Upstream = fwd.addr })

	ctx := ctxT(t)
	c := p.connect(t)
	pid := c.PgConn().PID()
	if _, err := c.Exec(ctx, "create temp table ex(id int, s text); insert into ex select g, repeat('y', g) from generate_series(1, 3000) g"); err != nil {
		t.Fatal(err)
	}
	var sum int64
	if err := c.QueryRow(ctx, "select sum(length(s)) from ex where id > $1", 10).Scan(&sum); err != nil {
		t.Fatal(err)
	}
	// A Bind larger than the relay's buffer streams through; a Query
	// larger than it is read whole into a temporary buffer; a DataRow
	// larger than it streams back.
	big := strings.Repeat("b", 100_000)
	var l int
	if err := c.QueryRow(ctx, "select length($1::text)", big).Scan(&l); err != nil || l != len(big) {
		t.Fatalf("big bind: %d, %v", l, err)
	}
	if _, err := c.PgConn().Exec(ctx, "select '"+big+"' as q, repeat('r', 300000)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	b := &pgx.Batch{}
	for i := 0; i < 20; i++ {
		b.Queue("select s from ex where id = $1", i*100+1)
	}
	b.Queue("select 1/0")
	c.SendBatch(ctx, b).Close()
	rows := make([][]any, 500)
	for i := range rows {
		rows[i] = []any{i, fmt.Sprint(i)}
	}
	if _, err := c.CopyFrom(ctx, pgx.Identifier{"ex"}, []string{"id", "s"}, pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PgConn().CopyTo(ctx, new(bytes.Buffer), "copy ex to stdout"); err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	p.rec.wait(t, "ConnClosed", func(evs []Event) bool {
		for _, e := range evs {
			if e.Kind == ConnClosed && e.Conn.BackendPID == pid {
				return true
			}
		}
		return false
	})
	fwd.wg.Wait()

	fromClient, toUpstream := rl.fromClient.Bytes(), fwd.toUpstream.Bytes()
	fromUpstream, toClient := fwd.fromUpstream.Bytes(), rl.toClient.Bytes()
	if len(fromClient) < 1000 || len(fromUpstream) < 1000 {
		t.Fatalf("recorded only %d and %d bytes", len(fromClient), len(fromUpstream))
	}
	if !bytes.Equal(fromClient, toUpstream) {
		t.Errorf("client→upstream differs: %d bytes from the client, %d to the upstream, first difference at %d",
			len(fromClient), len(toUpstream), firstDiff(fromClient, toUpstream))
	}
	if !bytes.Equal(fromUpstream, toClient) {
		t.Errorf("upstream→client differs: %d bytes from the upstream, %d to the client, first difference at %d",
			len(fromUpstream), len(toClient), firstDiff(fromUpstream, toClient))
	}
	t.Logf("client→upstream %d bytes, upstream→client %d bytes, identical", len(fromClient), len(fromUpstream))
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
