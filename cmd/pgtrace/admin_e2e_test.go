package main

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dotmac/pgtrace/admin"
	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestTopQueriesLeaveOutPing: pgx's Ping sends "-- ping", an empty
// statement. Through a real pgtrace it does not crowd the top queries of
// /api/queries (and so of the page); ?empty=true shows it, labelled.
func TestTopQueriesLeaveOutPing(t *testing.T) {
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr())
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(p.ready.str("listen"), pg.User, pg.Password, pg.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for range 20 {
		if err := conn.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT 1 AS marker"); err != nil {
		t.Fatal(err)
	}

	type entry struct{ Query, Summary string }
	queries := func(q string) []entry {
		t.Helper()
		code, body := httpGet(t, "http://"+p.ready.str("admin")+"/api/queries"+q)
		if code != 200 {
			t.Fatalf("GET /api/queries%s: %d %s", q, code, body)
		}
		var out struct{ Queries []entry }
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		return out.Queries
	}
	has := func(es []entry, pred func(entry) bool) bool {
		for _, e := range es {
			if pred(e) {
				return true
			}
		}
		return false
	}
	isMarker := func(e entry) bool { return strings.Contains(e.Query, "marker") }
	isEmpty := func(e entry) bool { return e.Summary == "EMPTY" }
	deadline := time.Now().Add(10 * time.Second)
	for !has(queries("?empty=true"), isEmpty) || !has(queries(""), isMarker) {
		if time.Now().After(deadline) {
			t.Fatalf("the pings and the marker did not reach /api/queries: %v", queries("?empty=true"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if es := queries(""); has(es, isEmpty) || has(es, func(e entry) bool { return e.Query == "" }) {
		t.Errorf("/api/queries lists the empty statement or an entry without text: %+v", es)
	}
	for _, e := range queries("?empty=true") {
		if isEmpty(e) && e.Query != admin.EmptyStatementLabel {
			t.Errorf("empty statement entry %+v, want the label %q", e, admin.EmptyStatementLabel)
		}
	}
}

// TestAdminToken: off loopback the admin server needs a token, and pgtrace
// refuses to start without one, saying what to set; with one (from a file,
// as a mounted secret), the probes stay open, `pgtrace health` works, and
// the rest asks for the token.
func TestAdminToken(t *testing.T) {
	// Refused at start, before anything listens.
	var stderr strings.Builder
	code := execute(t.Context(), []string{"pgtrace", "--listen=127.0.0.1:0", "--admin-listen=0.0.0.0:0"}, nil, io.Discard, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "set --admin-token or --admin-token-file (PGTRACE_ADMIN_TOKEN, PGTRACE_ADMIN_TOKEN_FILE)") {
		t.Errorf("--admin-listen 0.0.0.0:0 without a token: exit %d, stderr %q; want exit 2 naming the flags", code, stderr.String())
	}
	// A token file that cannot be read, or holds too short a token.
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		filepath.Join(dir, "missing"): "--admin-token-file: open",
		short:                         "--admin-token-file " + short + ": the token has 6 characters",
	} {
		stderr.Reset()
		code := execute(t.Context(), []string{"pgtrace", "--listen=127.0.0.1:0", "--admin-listen=0.0.0.0:0", "--admin-token-file", file}, nil, io.Discard, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), want) {
			t.Errorf("--admin-token-file %s: exit %d, stderr %q; want exit 1 and %q", file, code, stderr.String(), want)
		}
	}

	const token = "4f0c2d1e9b8a7f6e5d4c3b2a19081726"
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil { // a trailing newline, as echo writes
		t.Fatal(err)
	}
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr(), "--admin-listen=0.0.0.0:0", "--admin-token-file", file)
	if got := p.ready.str("admin_auth"); !strings.HasPrefix(got, "token") {
		t.Errorf("ready line admin_auth = %q, want token", got)
	}
	_, port, _ := net.SplitHostPort(p.ready.str("admin"))
	base := "http://127.0.0.1:" + port
	do := func(path, auth string) (int, string) {
		req, _ := http.NewRequest("GET", base+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tt := range []struct {
		path, auth string
		want       int
	}{
		{"/healthz", "", 200},
		{"/readyz", "", 200},
		{"/metrics", "", 401},
		{"/api/queries", "", 401},
		{"/", "", 401},
		{"/api/queries", "Bearer wrong-token-wrong-token", 401},
		{"/metrics", "Bearer " + token, 200},
		{"/api/queries", "Bearer " + token, 200},
		{"/", "Basic " + base64.StdEncoding.EncodeToString([]byte(":"+token)), 200},
	} {
		if code, body := do(tt.path, tt.auth); code != tt.want {
			t.Errorf("GET %s (Authorization %q) = %d %q, want %d", tt.path, tt.auth, code, body, tt.want)
		}
	}
	var out strings.Builder
	if code := execute(t.Context(), []string{"pgtrace", "health", "--ready", "--admin-listen", "0.0.0.0:" + port}, nil, &out, &out); code != 0 {
		t.Errorf("pgtrace health --ready with a token-protected admin server: exit %d, %s", code, out.String())
	}
}
