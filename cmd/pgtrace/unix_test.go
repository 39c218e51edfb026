package main

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestUnixSocketUpstreamMetrics runs pgtrace in front of PostgreSQL's Unix
// socket: queries relay, and the metrics name the socket as server.address
// with no server.port, as the semantic conventions say for Unix sockets.
func TestUnixSocketUpstreamMetrics(t *testing.T) {
	pg := pgtest.Managed(t)
	sock := pg.Socket()
	p := startPgtrace(t, "--upstream", sock)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(p.ready.str("listen"), pgtest.ScramUser, pgtest.ScramPassword, pg.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "select count(*) from pg_class where relname = 'pg_unix_socket_test'").Scan(&n); err != nil {
		t.Fatal(err)
	}

	url := "http://" + p.ready.str("admin") + "/metrics"
	want := `server_address="` + sock + `"`
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := httpGet(t, url)
		if code != 200 {
			t.Fatalf("GET /metrics = %d:\n%s", code, body)
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "db_client_operation_duration_seconds_count{") && strings.Contains(line, "pg_class") {
				if !strings.Contains(line, want) || strings.Contains(line, "server_port=") {
					t.Fatalf("duration series %s: want %s and no server_port", line, want)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never counted the query:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestUnixSocketListen serves clients on a Unix socket named as PostgreSQL
// names its own, so that psql -h <dir> -p <port> and pgx find it: it
// replaces a socket file left by a process that is gone, refuses one that
// a live server answers on, and removes its own on shutdown.
func TestUnixSocketListen(t *testing.T) {
	pg := pgtest.Start(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, ".s.PGSQL.6432")
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	p := startPgtrace(t, "--listen", sock, "--upstream", pg.Addr())
	if got := p.ready.str("listen"); got != sock {
		t.Fatalf("ready line: listen %q, want %q", got, sock)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("socket %s: %v, %v; want mode 0777", sock, fi, err)
	}

	ctx := t.Context()
	conn, err := pgx.Connect(ctx, "host="+dir+" port=6432 sslmode=disable user="+pg.User+" password="+pg.Password+" dbname="+pg.Database)
	if err != nil {
		t.Fatalf("pgx through the socket: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "select $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("query: %d, %v", n, err)
	}

	bin, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	psql := exec.CommandContext(ctx, filepath.Join(bin, "psql"), "-X", "-A", "-t", "-h", dir, "-p", "6432",
		"-U", pg.User, "-d", pg.Database, "-c", "select 40 + 2")
	psql.Env = append(os.Environ(), "PGPASSWORD="+pg.Password, "PGSSLMODE=disable")
	if out, err := psql.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("psql -h %s -p 6432: %q, %v", dir, out, err)
	}

	// A second pgtrace must not take the live socket away.
	err = run(ctx, []string{"pgtrace", "serve", "--listen", sock, "--admin-listen", "", "--upstream", pg.Addr()},
		strings.NewReader(""), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "a server already listens on this socket") {
		t.Fatalf("second pgtrace on %s: %v", sock, err)
	}
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("the first pgtrace after the second gave up: %v", err)
	}

	conn.Close(ctx)
	if err := p.stop(t, context.Canceled); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after shutdown: %v", err)
	}
}

// TestListenKeepsBusyLiveSocket: a live server whose accept backlog is
// full answers a dial with EAGAIN rather than ECONNREFUSED. Its socket is
// not stale and must not be taken away.
func TestListenKeepsBusyLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".s.PGSQL.6432")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	for range 2 { // fill the backlog
		if c, err := net.Dial("unix", path); err == nil {
			defer c.Close()
		}
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	var lc net.ListenConfig
	l, err := listenClients(context.Background(), &lc, path)
	if err == nil {
		l.Close()
		t.Fatal("listenClients took a live server's socket")
	}
	if after, err := os.Stat(path); err != nil || !os.SameFile(before, after) {
		t.Errorf("the live server's socket was replaced or removed: %v", err)
	}
}
