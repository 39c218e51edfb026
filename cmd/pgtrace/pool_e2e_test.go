package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestPooledAuth runs the command in transaction mode with an auth file
// that holds each kind of secret, and an auth query for the users it
// lacks: pgx logs in with SCRAM and md5, the server connections log in with
// the same secret (SCRAM by pass-through of the client's key), and a wrong
// password gets 28P01 and nothing else.
func TestPooledAuth(t *testing.T) {
	pg := pgtest.Managed(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	// A role the auth file lacks: the auth query finds its secret.
	admin.Exec(ctx, "SET password_encryption = 'scram-sha-256'")
	admin.Exec(ctx, "CREATE ROLE pooled_aq LOGIN PASSWORD 'aq-pass'")
	// The SCRAM verifier and the md5 secret as the server stores them.
	var scramSecret, md5Secret string
	if err := admin.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", pgtest.ScramUser).Scan(&scramSecret); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", pgtest.MD5User).Scan(&md5Secret); err != nil {
		t.Fatal(err)
	}
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	userlist := fmt.Sprintf("%q %q\n%q %q\n%q %q\n", pgtest.ScramUser, scramSecret, pgtest.MD5User, md5Secret, pg.User, pg.Password)
	if err := os.WriteFile(authFile, []byte(userlist), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, authType := range []string{"scram-sha-256", "md5"} {
		t.Run(authType, func(t *testing.T) {
			p := startPgtrace(t, "--upstream", pg.Addr(), "--pool-mode", "transaction", "--pool-size", "2",
				"--auth-file", authFile, "--auth-type", authType, "--auth-user", pg.User)
			listen := p.ready.str("listen")
			cases := []struct {
				user, password string
				ok             bool
			}{
				{pgtest.ScramUser, pgtest.ScramPassword, true},          // SCRAM secret: SCRAM, pass-through to the server
				{pgtest.MD5User, pgtest.MD5Password, authType == "md5"}, // an md5 secret cannot do SCRAM
				{"pooled_aq", "aq-pass", true},                          // not in the file: the auth query finds its SCRAM secret
				{pgtest.ScramUser, "wrong", false},
				{"nosuch", "x", false},
			}
			for _, c := range cases {
				conn, err := pgx.Connect(ctx, pgtest.DSNAt(listen, c.user, c.password, pg.Database))
				var pgErr *pgconn.PgError
				switch {
				case c.ok && err != nil:
					t.Errorf("%s: %v", c.user, err)
				case !c.ok && (err == nil || !errors.As(err, &pgErr) || pgErr.Code != "28P01"):
					t.Errorf("%s with a bad password: %v, want 28P01", c.user, err)
				}
				if err != nil {
					continue
				}
				var who string
				if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != c.user {
					t.Errorf("%s: current_user %q, %v", c.user, who, err)
				}
				conn.Close(ctx)
			}
			if strings.Contains(p.logs.String(), pgtest.ScramPassword) || strings.Contains(p.logs.String(), scramSecret) {
				t.Errorf("a secret reached the log")
			}
		})
	}
}

// TestPooledCancel: a CancelRequest with the key pgtrace gave the client
// reaches the server connection the client has now.
func TestPooledCancel(t *testing.T) {
	pg := pgtest.Managed(t)
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	os.WriteFile(authFile, []byte(fmt.Sprintf("%q %q\n", pg.User, pg.Password)), 0o600)
	p := startPgtrace(t, "--upstream", pg.Addr(), "--pool-mode", "transaction", "--auth-file", authFile)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(p.ready.str("listen"), pg.User, pg.Password, pg.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	go func() {
		time.Sleep(300 * time.Millisecond)
		// pgx sends the CancelRequest with the key pgtrace gave it.
		if err := conn.PgConn().CancelRequest(ctx); err != nil {
			t.Errorf("CancelRequest: %v", err)
		}
	}()
	start := time.Now()
	_, err = conn.Exec(ctx, "SELECT pg_sleep(30)")
	var pgErr *pgconn.PgError
	if took := time.Since(start); took > 10*time.Second || !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		t.Fatalf("cancelled query: %v after %v, want 57014 soon", err, took)
	}
	// The server connection is fine for the next statement.
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the cancel: %d, %v", one, err)
	}
}
