package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// runTool runs a PostgreSQL client program against dsn and returns its
// combined output and exit error.
func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install the PostgreSQL client programs (%v)", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10", "PSQLRC=/dev/null")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// textsOf returns the statements of all sessions whose text contains sub.
func textsOf(evs []Event, sub string) []Statement {
	var out []Statement
	for _, e := range evs {
		if e.Kind == StatementDone && strings.Contains(e.Stmt.Text, sub) {
			out = append(out, *e.Stmt)
		}
	}
	return out
}

func TestPsql(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	dsn := p.dsn(p.pg.User, p.pg.Password)

	t.Run("multi-statement", func(t *testing.T) {
		const q = "create table psql_multi(x int); insert into psql_multi select generate_series(1,5); select count(*) from psql_multi; drop table psql_multi"
		out, err := runTool(t, "psql", dsn, "-X", "-At", "-c", q)
		if err != nil || !strings.Contains(out, "5") {
			t.Fatalf("psql: %v\n%s", err, out)
		}
		got := p.rec.wait(t, "4 statements", func(evs []Event) bool { return len(textsOf(evs, "psql_multi")) >= 4 })
		st := textsOf(got, "psql_multi")
		tags := []string{"CREATE TABLE", "INSERT 0 5", "SELECT 1", "DROP TABLE"}
		for i, s := range st {
			if s.Index != i || s.CommandTag != tags[i] || s.Text != q || s.Protocol != ProtocolSimple {
				t.Errorf("stmt %d: index %d tag %q", i, s.Index, s.CommandTag)
			}
		}
		if st[1].Rows != 5 {
			t.Errorf("insert rows %d", st[1].Rows)
		}
	})

	t.Run("copy in and out", func(t *testing.T) {
		dir := t.TempDir()
		in := filepath.Join(dir, "in.tsv")
		outFile := filepath.Join(dir, "out.tsv")
		var data bytes.Buffer
		for i := 0; i < 5000; i++ {
			fmt.Fprintf(&data, "%d\trow %d with tab\\tand backslash\\\\ and unicode é\n", i, i)
		}
		if err := os.WriteFile(in, data.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf("create table psql_copy(id int, s text);\n\\copy psql_copy from '%s'\n\\copy (select * from psql_copy order by id) to '%s'\ndrop table psql_copy;\n", in, outFile)
		sf := filepath.Join(dir, "script.sql")
		if err := os.WriteFile(sf, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := runTool(t, "psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-f", sf); err != nil {
			t.Fatalf("psql: %v\n%s", err, out)
		}
		back, err := os.ReadFile(outFile)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, data.Bytes()) {
			t.Fatalf("copied out %d bytes, differ from the %d copied in", len(back), data.Len())
		}
		evs := p.rec.wait(t, "copy statements", func(evs []Event) bool {
			n := 0
			for _, s := range textsOf(evs, "psql_copy") {
				if s.Copy {
					n++
				}
			}
			return n >= 2
		})
		for _, s := range textsOf(evs, "psql_copy") {
			if s.Copy && (s.Rows != 5000 || s.CommandTag != "COPY 5000") {
				t.Errorf("copy statement %q: rows %d tag %q", s.Text, s.Rows, s.CommandTag)
			}
		}
	})

	t.Run("error mid-script", func(t *testing.T) {
		dir := t.TempDir()
		sf := filepath.Join(dir, "script.sql")
		os.WriteFile(sf, []byte("select 'psql_err_1';\nselect psql_err_nosuch;\nselect 'psql_err_3';\n"), 0o644)
		out, err := runTool(t, "psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-f", sf)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(out, "psql_err_nosuch") {
			t.Fatalf("psql: %v (want exit 3)\n%s", err, out)
		}
		evs := p.rec.wait(t, "2 statements", func(evs []Event) bool { return len(textsOf(evs, "psql_err")) >= 2 })
		// Give a wrongly relayed third statement a moment to show up.
		time.Sleep(100 * time.Millisecond)
		evs = p.rec.wait(t, "", func([]Event) bool { return true })
		st := textsOf(evs, "psql_err")
		if len(st) != 2 || st[0].Outcome != OutcomeComplete || st[1].SQLState != "42703" {
			t.Fatalf("statements: %+v", st)
		}
	})
}

func TestPgbench(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	dsn := p.dsn(p.pg.User, p.pg.Password)
	if out, err := runTool(t, "pgbench", "-i", "-q", "-s", "1", dsn); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			before := len(p.rec.wait(t, "", func([]Event) bool { return true }))
			out, err := runTool(t, "pgbench", "-n", "-S", "-M", mode, "-c", "4", "-t", "50", dsn)
			if err != nil {
				t.Fatalf("pgbench: %v\n%s", err, out)
			}
			if !strings.Contains(out, "number of transactions actually processed: 200/200") {
				t.Fatalf("pgbench output:\n%s", out)
			}
			evs := p.rec.wait(t, "200 selects", func(evs []Event) bool {
				return len(textsOf(evs[before:], "SELECT abalance FROM pgbench_accounts")) >= 200
			})
			time.Sleep(50 * time.Millisecond) // let an extra, wrong event show up
			evs = p.rec.wait(t, "", func([]Event) bool { return true })
			st := textsOf(evs[before:], "SELECT abalance FROM pgbench_accounts")
			if len(st) != 200 {
				t.Fatalf("got %d statements, want 200", len(st))
			}
			for _, s := range st {
				if s.Outcome != OutcomeComplete || s.Rows != 1 || s.TxStatus != TxIdle {
					t.Fatalf("statement: %+v", s)
				}
				// Prepared: parsed once per client, then executed by
				// name, every time with its text.
				if named := s.StatementName != ""; named != (mode == "prepared") {
					t.Fatalf("statement name %q in mode %s", s.StatementName, mode)
				}
				wantProto := ProtocolExtended
				if mode == "simple" {
					wantProto = ProtocolSimple
				}
				if s.Protocol != wantProto {
					t.Fatalf("protocol %d, want %d", s.Protocol, wantProto)
				}
			}
		})
	}
}

func TestTerminateBackend(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg, nil)
	victim := p.connect(t)
	bystander := p.connect(t)
	admin := direct(t, pg)
	ctx := ctxT(t)
	vpid := victim.PgConn().PID()

	errc := make(chan error, 1)
	go func() {
		_, err := victim.Exec(ctx, "select pg_sleep(30)")
		errc <- err
	}()
	waitActive(t, admin, vpid)
	if _, err := admin.Exec(ctx, "select pg_terminate_backend($1)", vpid); err != nil {
		t.Fatal(err)
	}
	err := <-errc
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "57P01" {
		t.Errorf("victim: %v, want 57P01", err)
	}
	var n int
	if err := bystander.QueryRow(ctx, "select 42").Scan(&n); err != nil || n != 42 {
		t.Fatalf("bystander: %d, %v", n, err)
	}
	evs := p.rec.wait(t, "victim closed", func(evs []Event) bool {
		for _, e := range evs {
			if e.Kind == ConnClosed && e.Conn.BackendPID == vpid {
				return true
			}
		}
		return false
	})
	if st := stmts(evs, vpid); len(st) != 1 {
		t.Errorf("victim: %d statement events, want the one that was terminated", len(st))
	}
	for _, e := range evs {
		if e.Conn.BackendPID != vpid {
			continue
		}
		switch e.Kind {
		case StatementDone:
			if e.Stmt.SQLState != "57P01" || e.Stmt.Severity != "FATAL" {
				t.Errorf("victim statement: %+v", e.Stmt)
			}
		case ConnClosed:
			var se *ServerError
			if e.Side != SideUpstream || !errors.As(e.Err, &se) || se.Code != "57P01" {
				t.Errorf("victim closed: side %v err %v", e.Side, e.Err)
			}
		}
	}
}

// waitActive waits until pg_stat_activity shows pid running pg_sleep.
func waitActive(t *testing.T, admin *pgx.Conn, pid uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		err := admin.QueryRow(context.Background(),
			"select count(*) from pg_stat_activity where pid = $1 and state = 'active' and query like '%pg_sleep%'", pid).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d never became active", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClientKilledMidQuery(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg, nil)
	c := p.connect(t)
	admin := direct(t, pg)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	hj, err := c.PgConn().Hijack()
	if err != nil {
		t.Fatal(err)
	}
	q, _ := (&pgproto3.Query{String: "select pg_sleep(30)"}).Encode(nil)
	if _, err := hj.Conn.Write(q); err != nil {
		t.Fatal(err)
	}
	waitActive(t, admin, pid)
	hj.Conn.Close() // the client vanishes without Terminate

	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := admin.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = $1", pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d still in pg_stat_activity 10s after its client vanished", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	evs := p.rec.wait(t, "closed", func(evs []Event) bool {
		for _, e := range evs {
			if e.Kind == ConnClosed && e.Conn.BackendPID == pid {
				return true
			}
		}
		return false
	})
	for _, e := range evs {
		if e.Kind == ConnClosed && e.Conn.BackendPID == pid && (e.Side != SideClient || e.Err == nil) {
			t.Errorf("closed: side %v err %v", e.Side, e.Err)
		}
	}
}

func TestMalformedClientMessage(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	other := p.connect(t)

	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"length below 4", []byte{'Q', 0, 0, 0, 2}},
		{"negative length", []byte{'Q', 0xff, 0xff, 0xff, 0xf0}},
		{"over 1 GiB", []byte{'d', 0x40, 0, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := p.connect(t)
			hj, err := c.PgConn().Hijack()
			if err != nil {
				t.Fatal(err)
			}
			defer hj.Conn.Close()
			hj.Conn.Write(tc.msg)
			hj.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			fe := pgproto3.NewFrontend(hj.Conn, hj.Conn)
			msg, err := fe.Receive()
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			er, ok := msg.(*pgproto3.ErrorResponse)
			if !ok || er.Code != "08P01" {
				t.Fatalf("got %#v, want ErrorResponse 08P01", msg)
			}
			if _, err := fe.Receive(); err == nil {
				t.Error("connection still open after the protocol error")
			}
		})
	}
	t.Run("startup too long", func(t *testing.T) {
		conn, err := net.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var hdr [8]byte
		binary.BigEndian.PutUint32(hdr[:], 20000)
		binary.BigEndian.PutUint32(hdr[4:], 196608)
		conn.Write(hdr[:])
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(conn)
		if len(b) == 0 || b[0] != 'E' || !bytes.Contains(b, []byte("08P01")) {
			t.Fatalf("got %q, want ErrorResponse 08P01", b)
		}
	})
	// Nobody else noticed.
	if _, err := other.Exec(ctxT(t), "select 1"); err != nil {
		t.Fatal(err)
	}
}

func TestUpstreamDiesMidQuery(t *testing.T) {
	pg := pgtest.Start(t)
	// A TCP forwarder between proxy and upstream that the test can cut.
	fwd := newForwarder(t, pg.Addr())
	p := startProxy(t, pg, func(s *Server) { s.Upstream = fwd.addr })
	c := p.connect(t)
	bystander := startProxy(t, pg, nil).connect(t)
	ctx := ctxT(t)

	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "select pg_sleep(30)")
		errc <- err
	}()
	time.Sleep(300 * time.Millisecond)
	fwd.cut()
	var err error
	select {
	case err = <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("client got nothing 10s after the upstream died")
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08006" {
		t.Fatalf("client got %v, want 08006", err)
	}
	if _, err := bystander.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	got := p.rec.waitStmts(t, c.PgConn().PID(), 1)
	if g := got[0]; g.Text != "select pg_sleep(30)" || g.SQLState != "08006" || g.Outcome != OutcomeError {
		t.Errorf("statement cut off by the lost upstream: %+v", g)
	}
}

// forwarder relays TCP to an address and records what passes each way.
type forwarder struct {
	addr  string
	conns chan net.Conn
	wg    sync.WaitGroup // the copy goroutines
	// toUpstream and fromUpstream record the bytes of all connections.
	toUpstream, fromUpstream lockedBuffer
	// stalled, once set, stops the reading from the proxy, so that what
	// it writes upstream piles up in the buffers on the way.
	stalled atomic.Bool
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

func newForwarder(t *testing.T, target string) *forwarder {
	l := mustListen(t)
	f := &forwarder{addr: l.Addr().String(), conns: make(chan net.Conn, 100)}
	t.Cleanup(func() { l.Close(); f.cut() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f.conns <- c
			f.conns <- u
			f.wg.Add(2)
			go func() {
				defer f.wg.Done()
				io.Copy(u, io.TeeReader(stallReader{c, &f.stalled}, &f.toUpstream))
				u.(*net.TCPConn).CloseWrite()
			}()
			go func() {
				defer f.wg.Done()
				io.Copy(c, io.TeeReader(u, &f.fromUpstream))
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return f
}

// stallReader reads r except while stalled is set.
type stallReader struct {
	r       io.Reader
	stalled *atomic.Bool
}

func (s stallReader) Read(b []byte) (int, error) {
	for s.stalled.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	return s.r.Read(b)
}

// cut closes every forwarded connection abruptly (with a reset).
func (f *forwarder) cut() {
	for {
		select {
		case c := <-f.conns:
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
		default:
			return
		}
	}
}
