package pool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// dialLogin dials the test server and logs in with Login.
func dialLogin(ctx context.Context, t *testing.T, pg *pgtest.Server, params map[string]string, cred ServerCredential) (net.Conn, *ServerSession, error) {
	t.Helper()
	conn, err := net.Dial("tcp", pg.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sess, err := Login(ctx, conn, params, cred)
	return conn, sess, err
}

// simpleQuery runs sql on a logged-in connection and returns the rows as
// text. It fails the test on an ErrorResponse.
func simpleQuery(t *testing.T, conn net.Conn, sql string) [][]string {
	t.Helper()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	defer conn.SetDeadline(time.Time{})
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	for {
		typ, body, err := readMsgExact(conn, 1<<20)
		if err != nil {
			t.Fatalf("query %q: %v", sql, err)
		}
		switch typ {
		case 'D':
			var msg pgproto3.DataRow
			if err := msg.Decode(body); err != nil {
				t.Fatal(err)
			}
			var row []string
			for _, v := range msg.Values {
				row = append(row, string(v))
			}
			rows = append(rows, row)
		case 'E':
			var msg pgproto3.ErrorResponse
			msg.Decode(body)
			t.Fatalf("query %q: %s (SQLSTATE %s)", sql, msg.Message, msg.Code)
		case 'Z':
			return rows
		}
	}
}

// superConn is a pgx connection as the superuser.
func superConn(t *testing.T, pg *pgtest.Server) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// rolpassword is the role's stored password, from pg_authid.
func rolpassword(t *testing.T, pg *pgtest.Server, role string) string {
	t.Helper()
	var pw string
	if err := superConn(t, pg).QueryRow(t.Context(), "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&pw); err != nil {
		t.Fatalf("rolpassword of %s: %v", role, err)
	}
	return pw
}

var roleSeq atomic.Int64

// createRole creates a login role of the test's own, dropped when it ends.
func createRole(t *testing.T, pg *pgtest.Server, options string) string {
	t.Helper()
	name := fmt.Sprintf("pool_role_%d_%d", time.Now().UnixNano()%1e6, roleSeq.Add(1))
	c := superConn(t, pg)
	if _, err := c.Exec(t.Context(), "CREATE ROLE "+name+" LOGIN "+options); err != nil {
		t.Fatalf("create role: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), pg.DSN())
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		c.Exec(context.Background(), "DROP ROLE IF EXISTS "+name)
	})
	return name
}

func sqlState(err error) string {
	var se interface{ SQLState() string }
	if errors.As(err, &se) {
		return se.SQLState()
	}
	return ""
}

// TestLoginMethods logs in to the real server with each authentication
// method of the managed cluster and each kind of credential.
func TestLoginMethods(t *testing.T) {
	pg := pgtest.Managed(t)
	md5Stored := ParseSecret(pgtest.MD5User, rolpassword(t, pg, pgtest.MD5User))
	if md5Stored.Kind != SecretMD5 {
		t.Fatalf("md5_user's stored password is a %s secret", md5Stored.Kind)
	}
	scramStored := ParseSecret(pgtest.ScramUser, rolpassword(t, pg, pgtest.ScramUser))
	if scramStored.Kind != SecretSCRAM {
		t.Fatalf("scram_user's stored password is a %s secret", scramStored.Kind)
	}
	scramKey := clientKeyOf(t, pgtest.ScramPassword, scramStored.SCRAM)
	otherVerifier, _ := NewSCRAMVerifier(pgtest.ScramPassword, 0)
	otherKey := clientKeyOf(t, pgtest.ScramPassword, otherVerifier)

	tests := []struct {
		name    string
		user    string
		cred    ServerCredential
		code    string // the server's SQLSTATE
		wantErr error  // or this
	}{
		{name: "trust", user: pgtest.TrustUser},
		{name: "md5/password", user: pgtest.MD5User, cred: ServerCredential{Password: pgtest.MD5Password}},
		{name: "md5/secret", user: pgtest.MD5User, cred: ServerCredential{Secret: &md5Stored}},
		{name: "md5/plain secret", user: pgtest.MD5User, cred: ServerCredential{Secret: &Secret{Kind: SecretPlain, Plain: pgtest.MD5Password}}},
		{name: "md5/wrong", user: pgtest.MD5User, cred: ServerCredential{Password: "nope"}, code: "28P01"},
		{name: "md5/scram secret", user: pgtest.MD5User, cred: ServerCredential{Secret: &scramStored, ClientKey: scramKey}, wantErr: ErrUnusableCredential},
		{name: "scram/password", user: pgtest.ScramUser, cred: ServerCredential{Password: pgtest.ScramPassword}},
		{name: "scram/pass-through", user: pgtest.ScramUser, cred: ServerCredential{Secret: &scramStored, ClientKey: scramKey}},
		{name: "scram/wrong", user: pgtest.ScramUser, cred: ServerCredential{Password: "nope"}, code: "28P01"},
		{name: "scram/secret without key", user: pgtest.ScramUser, cred: ServerCredential{Secret: &scramStored}, wantErr: ErrUnusableCredential},
		{name: "scram/key of another verifier", user: pgtest.ScramUser, cred: ServerCredential{Secret: &scramStored, ClientKey: otherKey}, wantErr: ErrUnusableCredential},
		{name: "scram/other verifier", user: pgtest.ScramUser, cred: ServerCredential{Secret: &Secret{Kind: SecretSCRAM, SCRAM: otherVerifier}, ClientKey: otherKey}},
		{name: "scram/md5 secret", user: pgtest.ScramUser, cred: ServerCredential{Secret: &md5Stored}, wantErr: ErrUnusableCredential},
		{name: "password/password", user: pgtest.PlainUser, cred: ServerCredential{Password: pgtest.PlainPassword}},
		{name: "password/wrong", user: pgtest.PlainUser, cred: ServerCredential{Password: "nope"}, code: "28P01"},
		{name: "password/md5 secret", user: pgtest.PlainUser, cred: ServerCredential{Secret: &md5Stored}, wantErr: ErrUnusableCredential},
		{name: "superuser", user: pgtest.SuperUser, cred: ServerCredential{Password: pgtest.SuperPassword}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			params := map[string]string{"user": tt.user, "database": "postgres", "application_name": "pool-login-test"}
			conn, sess, err := dialLogin(ctx, t, pg, params, tt.cred)
			if tt.name == "scram/other verifier" {
				// The server's salt is not this verifier's: refused before a proof is sent.
				if err == nil || !strings.Contains(err.Error(), "salt and iteration count") {
					t.Fatalf("err = %v, want the salt mismatch", err)
				}
				return
			}
			switch {
			case tt.code != "":
				if got := sqlState(err); got != tt.code {
					t.Fatalf("err = %v (SQLSTATE %q), want SQLSTATE %s", err, got, tt.code)
				}
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, tt.user) {
					t.Fatalf("err = %#v", err)
				}
				return
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if sess.Params["server_version"] == "" || sess.Params["application_name"] != "pool-login-test" {
				t.Fatalf("ParameterStatus: %v", sess.Params)
			}
			if len(sess.Key) < 8 || binary.BigEndian.Uint32(sess.Key) != sess.PID {
				t.Fatalf("BackendKeyData %x, PID %d", sess.Key, sess.PID)
			}
			rows := simpleQuery(t, conn, "SELECT current_user, pg_backend_pid()")
			if rows[0][0] != tt.user || rows[0][1] != strconv.Itoa(int(sess.PID)) {
				t.Fatalf("logged in as %v, session PID %d", rows[0], sess.PID)
			}
		})
	}
}

// TestLoginServerErrors: the server's ErrorResponse comes back with its
// SQLSTATE, readable as export/ reads it.
func TestLoginServerErrors(t *testing.T) {
	pg := pgtest.Managed(t)
	limited := createRole(t, pg, "PASSWORD 'limited-pass' CONNECTION LIMIT 0")
	tests := []struct {
		name   string
		params map[string]string
		cred   ServerCredential
		code   string
	}{
		{"unknown database", map[string]string{"user": pgtest.ScramUser, "database": "no_such_db"}, ServerCredential{Password: pgtest.ScramPassword}, "3D000"},
		{"too many connections", map[string]string{"user": limited, "database": "postgres"}, ServerCredential{Password: "limited-pass"}, "53300"},
		{"unknown role", map[string]string{"user": "no_such_role", "database": "postgres"}, ServerCredential{Password: "x"}, "28P01"},
		{"bad setting", map[string]string{"user": pgtest.TrustUser, "database": "postgres", "work_mem": "lots"}, ServerCredential{}, "22023"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := dialLogin(t.Context(), t, pg, tt.params, tt.cred)
			if got := sqlState(err); got != tt.code {
				t.Fatalf("err = %v (SQLSTATE %q), want %s", err, got, tt.code)
			}
			if tt.params["database"] != "" && !strings.Contains(err.Error(), tt.params["database"]) {
				t.Fatalf("error %q does not name the database", err)
			}
		})
	}
	if _, err := Login(t.Context(), nil, map[string]string{"database": "x"}, ServerCredential{}); err == nil {
		t.Fatal("Login without a user succeeded")
	}
}

// silentServer accepts connections and never answers.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln.Addr().String()
}

func TestLoginContext(t *testing.T) {
	addr := silentServer(t)
	params := map[string]string{"user": "u"}
	for _, tt := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(t.Context(), 200*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := tt.ctx()
			defer cancel()
			start := time.Now()
			_, err = Login(ctx, conn, params, ServerCredential{})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("Login returned after %v", d)
			}
		})
	}
}

// scriptedServer runs script on the first connection to a loopback
// listener, after reading the StartupMessage, and returns its address.
func scriptedServer(t *testing.T, script func(be *pgproto3.Backend, conn net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		be := pgproto3.NewBackend(conn, conn)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			return
		}
		script(be, conn)
	}()
	return ln.Addr().String()
}

func scriptSend(be *pgproto3.Backend, msgs ...pgproto3.BackendMessage) {
	for _, m := range msgs {
		be.Send(m)
	}
	be.Flush()
}

// TestLoginMisbehavingServer: servers that ask for what the proxy does not
// speak, or cheat in SCRAM.
func TestLoginMisbehavingServer(t *testing.T) {
	v, _ := NewSCRAMVerifier("pw", 0)
	// scramServe runs a SCRAM exchange and lets tamper change the
	// server-final message.
	scramServe := func(tamper func([]byte) []byte, skipFinal bool) func(*pgproto3.Backend, net.Conn) {
		return func(be *pgproto3.Backend, conn net.Conn) {
			scriptSend(be, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}})
			be.SetAuthType(pgproto3.AuthTypeSASL)
			m, err := be.Receive()
			if err != nil {
				return
			}
			s := NewSCRAMServer(v)
			first, err := s.ServerFirst(m.(*pgproto3.SASLInitialResponse).Data)
			if err != nil {
				return
			}
			scriptSend(be, &pgproto3.AuthenticationSASLContinue{Data: first})
			be.SetAuthType(pgproto3.AuthTypeSASLContinue)
			m, err = be.Receive()
			if err != nil {
				return
			}
			final, err := s.ServerFinal(m.(*pgproto3.SASLResponse).Data)
			if err != nil {
				return
			}
			if skipFinal {
				scriptSend(be, &pgproto3.AuthenticationOk{}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
				return
			}
			scriptSend(be, &pgproto3.AuthenticationSASLFinal{Data: tamper(final)}, &pgproto3.AuthenticationOk{},
				&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
			io.Copy(io.Discard, conn)
		}
	}
	tests := []struct {
		name   string
		script func(*pgproto3.Backend, net.Conn)
		cred   ServerCredential
		want   string // in the error; "" means success
		is     error
	}{
		{name: "scram ok", script: scramServe(func(b []byte) []byte { return b }, false), cred: ServerCredential{Password: "pw"}},
		{name: "scram bad signature", script: scramServe(func(b []byte) []byte {
			return []byte("v=" + strings.Repeat("A", 43) + "=")
		}, false), cred: ServerCredential{Password: "pw"}, want: "invalid server signature"},
		{name: "scram no final", script: scramServe(nil, true), cred: ServerCredential{Password: "pw"}, want: "before the SCRAM exchange completed"},
		{name: "plus only", script: func(be *pgproto3.Backend, _ net.Conn) {
			scriptSend(be, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS"}})
		}, cred: ServerCredential{Password: "pw"}, want: "SCRAM-SHA-256-PLUS", is: ErrUnsupportedAuth},
		{name: "gss", script: func(be *pgproto3.Backend, _ net.Conn) {
			scriptSend(be, &pgproto3.AuthenticationGSS{})
		}, cred: ServerCredential{Password: "pw"}, want: "GSSAPI", is: ErrUnsupportedAuth},
		{name: "sspi", script: func(be *pgproto3.Backend, conn net.Conn) {
			conn.Write([]byte{'R', 0, 0, 0, 8, 0, 0, 0, 9})
		}, cred: ServerCredential{Password: "pw"}, want: "SSPI", is: ErrUnsupportedAuth},
		{name: "error without sqlstate", script: func(be *pgproto3.Backend, _ net.Conn) {
			scriptSend(be, &pgproto3.ErrorResponse{Severity: "FATAL", Message: "go away"})
		}, want: "go away"},
		{name: "ready before ok", script: func(be *pgproto3.Backend, _ net.Conn) {
			scriptSend(be, &pgproto3.ReadyForQuery{TxStatus: 'I'})
		}, want: "before AuthenticationOk"},
		{name: "cleartext without password", script: func(be *pgproto3.Backend, _ net.Conn) {
			scriptSend(be, &pgproto3.AuthenticationCleartextPassword{})
		}, cred: ServerCredential{Secret: &Secret{Kind: SecretSCRAM, SCRAM: v}}, is: ErrUnusableCredential},
		{name: "huge message", script: func(be *pgproto3.Backend, conn net.Conn) {
			conn.Write([]byte{'S', 0x7f, 0, 0, 0})
		}, want: "invalid message length"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", scriptedServer(t, tt.script))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			sess, err := Login(ctx, conn, map[string]string{"user": "u"}, tt.cred)
			if tt.want == "" && tt.is == nil {
				if err != nil {
					t.Fatal(err)
				}
				if sess.PID != 7 || string(sess.Key) != "\x00\x00\x00\x07\x01\x02\x03\x04" {
					t.Fatalf("session %+v", sess)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("err = %v, want %q / %v", err, tt.want, tt.is)
			}
		})
	}
}

// TestLoginSASLPrep: PostgreSQL stores the SCRAM verifier of the
// SASLprep-normalized password; a login with the password as typed works.
func TestLoginSASLPrep(t *testing.T) {
	pg := pgtest.Managed(t)
	const pw = "\ufb01x-p\u00e4ss\u00a0w\u00f6rd" // ligature, umlauts, no-break space
	role := createRole(t, pg, "PASSWORD '"+pw+"'")
	_, _, err := dialLogin(t.Context(), t, pg, map[string]string{"user": role, "database": "postgres"}, ServerCredential{Password: pw})
	if err != nil {
		t.Fatal(err)
	}
}
