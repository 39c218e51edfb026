package main

import (
	"strings"
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
