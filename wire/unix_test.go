package wire

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
			if runtime.GOOS == "linux" && loopStats.sessions.Load() == sessions {
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
