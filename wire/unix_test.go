package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestUnixSocketUpstream relays to the upstream over its Unix socket, as a
// proxy next to the database would: logins with each method, statements
// and their events, the event loop taking the session, and a cancel, which
// goes over a fresh connection to the socket.
func TestUnixSocketUpstream(t *testing.T) {
	pg := pgtest.Managed(t)
	sock := pg.Socket()
	p := startProxy(t, pg, func(s *Server) { s.Upstream = sock; s.UpstreamTLS.Mode = "prefer" })
	ctx := ctxT(t)

	for _, tc := range []struct{ user, password string }{
		{pgtest.TrustUser, ""},
		{pgtest.MD5User, pgtest.MD5Password},
		{pgtest.ScramUser, pgtest.ScramPassword},
	} {
		t.Run(tc.user, func(t *testing.T) {
			sessions := loopStats.sessions.Load()
			c := p.connectDSN(t, p.dsn(tc.user, tc.password))
			var who string
			var n int
			if err := c.QueryRow(ctx, "select current_user, count(*) from generate_series(1, $1::int)", 42).Scan(&who, &n); err != nil {
				t.Fatal(err)
			}
			if who != tc.user || n != 42 {
				t.Fatalf("got %q, %d; want %q, 42", who, n, tc.user)
			}
			pid := c.PgConn().PID()
			got := p.rec.waitStmts(t, pid, 1)
			if g := got[0]; !strings.Contains(g.Text, "generate_series") || g.Rows != 1 || g.Outcome != OutcomeComplete {
				t.Errorf("statement event: %+v", g)
			}
			for _, e := range p.rec.wait(t, "ConnAuthenticated", func(evs []Event) bool { return hasKind(evs, ConnAuthenticated, pid) }) {
				if e.Kind == ConnAuthenticated && e.Conn.BackendPID == pid && e.Conn.ServerAddr != sock {
					t.Errorf("ServerAddr = %q, want %q", e.Conn.ServerAddr, sock)
				}
			}
			if loopMode() && loopStats.sessions.Load() == sessions {
				t.Error("the event loop did not take a session on a Unix socket")
			}
		})
	}

	t.Run("cancel", func(t *testing.T) {
		c := p.connect(t)
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if _, err := c.Exec(cctx, "select pg_sleep(30)"); err == nil {
			t.Fatal("pg_sleep(30) returned no error")
		}
		got := p.rec.waitStmts(t, c.PgConn().PID(), 1)
		if g := got[0]; g.SQLState != "57014" || g.Duration() > 5*time.Second {
			t.Errorf("cancelled statement: %+v", g)
		}
	})
}

func hasKind(evs []Event, k EventKind, pid uint32) bool {
	for _, e := range evs {
		if e.Kind == k && e.Conn.BackendPID == pid {
			return true
		}
	}
	return false
}

// TestUnixSocketUpstreamMissing gives the client 08001 naming the socket
// when nothing listens there.
func TestUnixSocketUpstreamMissing(t *testing.T) {
	pg := pgtest.Start(t)
	sock := filepath.Join(t.TempDir(), ".s.PGSQL.5432")
	p := startProxy(t, pg, func(s *Server) { s.Upstream = sock })
	_, err := pgx.Connect(ctxT(t), p.dsn("someone", "pw"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08001" || !strings.Contains(pgErr.Message, sock) {
		t.Fatalf("connect: %v, want 08001 naming %s", err, sock)
	}
}

func TestUnixSocketRefusesTLS(t *testing.T) {
	for _, mode := range []string{"require", "verify-full"} {
		srv := &Server{Upstream: "/run/postgresql/.s.PGSQL.5432", UpstreamTLS: UpstreamTLS{Mode: mode}}
		err := srv.Serve(context.Background(), mustListen(t))
		if err == nil || !strings.Contains(err.Error(), "no TLS on a Unix socket") {
			t.Errorf("mode %s: Serve returned %v", mode, err)
		}
	}
}

// TestUpstreamHangsUpWhileClientIsSlow sends a Query and a Terminate
// together and reads the answer only later, so that the relay waits on the
// client with the result half passed on, and the backend, done, exits. Over
// Unix sockets the backend's exit is a hang-up, which epoll reports however
// much it still has to read: the client must still get the whole result.
func TestUpstreamHangsUpWhileClientIsSlow(t *testing.T) {
	pg := pgtest.Managed(t)
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, ".s.PGSQL.5555"))
	if err != nil {
		t.Fatal(err)
	}
	p := serveProxy(t, pg, l, func(s *Server) { s.Upstream = pg.Socket() })
	dsn := fmt.Sprintf("host=%s port=5555 user=%s password=%s dbname=%s sslmode=disable", dir, pg.User, pg.Password, pg.Database)
	for _, rows := range []int{200, 260, 320, 3000} {
		c := p.connectDSN(t, dsn)
		hj, err := c.PgConn().Hijack()
		if err != nil {
			t.Fatal(err)
		}
		q, _ := (&pgproto3.Query{String: fmt.Sprintf("select repeat('x', 1000) from generate_series(1, %d)", rows)}).Encode(nil)
		q, _ = (&pgproto3.Terminate{}).Encode(q)
		if _, err := hj.Conn.Write(q); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // the backend has answered and exited
		hj.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		fe := pgproto3.NewFrontend(hj.Conn, hj.Conn)
		n, tag := 0, ""
	read:
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatalf("%d rows: after %d rows: %v", rows, n, err)
			}
			switch m := m.(type) {
			case *pgproto3.DataRow:
				n++
			case *pgproto3.CommandComplete:
				tag = string(m.CommandTag)
			case *pgproto3.ReadyForQuery:
				break read
			}
		}
		if _, err := io.ReadAll(hj.Conn); err != nil {
			t.Errorf("%d rows: after ReadyForQuery: %v, want EOF", rows, err)
		}
		hj.Conn.Close()
		if want := fmt.Sprintf("SELECT %d", rows); n != rows || tag != want {
			t.Errorf("got %d rows and %q, want %d and %q", n, tag, rows, want)
		}
	}
}
