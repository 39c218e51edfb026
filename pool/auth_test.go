package pool

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
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

// frontDoor is a small proxy for the tests: it reads a client's
// StartupMessage, authenticates the client with an Authenticator, logs in
// to the real server with Login and the credential the authentication
// leaves, sends the client the server's ParameterStatus, BackendKeyData and
// ReadyForQuery, and then relays bytes both ways.
type frontDoor struct {
	addr   string
	pg     *pgtest.Server
	auth   *Authenticator
	logins atomic.Int32 // server logins made for authenticated clients

	results chan authResult // one per connection that sent a StartupMessage
}

type authResult struct {
	user string
	auth *ClientAuth
	err  error
}

func startFrontDoor(t *testing.T, pg *pgtest.Server, auth *Authenticator) *frontDoor {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &frontDoor{addr: ln.Addr().String(), pg: pg, auth: auth, results: make(chan authResult, 100)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { f.serve(t, conn) })
		}
	})
	return f
}

// next is the result of the next authentication.
func (f *frontDoor) next(t *testing.T) authResult {
	t.Helper()
	select {
	case r := <-f.results:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no authentication ran")
		return authResult{}
	}
}

func (f *frontDoor) serve(t *testing.T, conn net.Conn) {
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	params, err := readStartupParams(conn)
	if err != nil {
		return
	}
	user := params["user"]
	secret, auth, err := f.auth.Authenticate(ctx, conn, user)
	f.results <- authResult{user: user, auth: auth, err: err}
	if err != nil {
		return
	}
	server, err := net.Dial("tcp", f.pg.Addr())
	if err != nil {
		t.Error(err)
		return
	}
	defer server.Close()
	sess, err := Login(ctx, server, map[string]string{"user": user, "database": params["database"]}, CredentialFor(secret, auth))
	if err != nil {
		t.Logf("front door: %v", err)
		e := &pgproto3.ErrorResponse{Severity: "FATAL", Code: "08006", Message: err.Error()}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			e.Code, e.Message = pgErr.Code, pgErr.Message
		}
		b, _ := e.Encode(nil)
		conn.Write(b)
		return
	}
	f.logins.Add(1)
	var buf []byte
	for k, v := range sess.Params {
		buf, _ = (&pgproto3.ParameterStatus{Name: k, Value: v}).Encode(buf)
	}
	buf, _ = (&pgproto3.BackendKeyData{ProcessID: sess.PID, SecretKey: sess.Key[4:]}).Encode(buf)
	buf, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(buf)
	if _, err := conn.Write(buf); err != nil {
		return
	}
	conn.SetDeadline(time.Time{})
	go func() {
		io.Copy(server, conn)
		server.(*net.TCPConn).CloseWrite()
	}()
	io.Copy(conn, server)
}

// readStartupParams reads a startup packet by hand, answering SSLRequest
// and GSSENCRequest with 'N', and returns the StartupMessage's parameters.
func readStartupParams(conn net.Conn) (map[string]string, error) {
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n < 8 || n > 10000 {
			return nil, fmt.Errorf("startup packet of %d bytes", n)
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(conn, body); err != nil {
			return nil, err
		}
		switch binary.BigEndian.Uint32(body) {
		case 80877103, 80877104: // SSLRequest, GSSENCRequest
			conn.Write([]byte{'N'})
			continue
		}
		var msg pgproto3.StartupMessage
		if err := msg.Decode(body); err != nil {
			return nil, err
		}
		return msg.Parameters, nil
	}
}

// superLogin is an AuthQuery login as the superuser.
func superLogin(pg *pgtest.Server) func(context.Context) (net.Conn, error) {
	return (&authLogin{pg: pg}).login
}

// doorSources: plain_user and trust_user from an auth file, everyone else
// from the server's pg_authid.
func doorSources(pg *pgtest.Server) SecretSource {
	return Sources{
		Userlist{
			pgtest.PlainUser: plainSecret(pgtest.PlainUser, pgtest.PlainPassword),
			pgtest.TrustUser: plainSecret(pgtest.TrustUser, "trust-door-pass"),
		},
		&AuthQuery{Login: superLogin(pg)},
	}
}

type clientCase struct {
	user, password string
	ok             bool
	method         AuthMethod // the exchange that runs
	passThrough    bool       // the server login uses the client's SCRAM key
}

// clientCases are what each client tries against a front door with method.
func clientCases(method AuthMethod) []clientCase {
	md5UserOK := method == AuthMD5 // an md5 secret cannot serve SCRAM
	plainMethod := method
	return []clientCase{
		{pgtest.ScramUser, pgtest.ScramPassword, true, AuthSCRAM, true},
		{pgtest.ScramUser, "wrong", false, AuthSCRAM, false},
		{pgtest.MD5User, pgtest.MD5Password, md5UserOK, method, false},
		{pgtest.MD5User, "wrong", false, method, false},
		{pgtest.PlainUser, pgtest.PlainPassword, true, plainMethod, false},
		{pgtest.PlainUser, "wrong", false, plainMethod, false},
		{pgtest.TrustUser, "trust-door-pass", true, plainMethod, false},
		{"no_such_user", "whatever", false, method, false},
	}
}

// TestPgxAuthenticates: pgx logs in to the front door with SCRAM and md5,
// right and wrong passwords, known and unknown users. A wrong password and
// an unknown user get the same FATAL 28P01 and nothing else happens: no
// server login. A SCRAM client of scram_user is passed through to the
// server with its ClientKey and the verifier from pg_authid.
func TestPgxAuthenticates(t *testing.T) {
	pg := pgtest.Managed(t)
	for _, method := range []AuthMethod{AuthSCRAM, AuthMD5} {
		f := startFrontDoor(t, pg, &Authenticator{Source: doorSources(pg), Method: method})
		for _, tc := range clientCases(method) {
			t.Run(fmt.Sprintf("%s/%s/%s", method, tc.user, tc.password), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				logins := f.logins.Load()
				conn, err := pgx.Connect(ctx, pgtest.DSNAt(f.addr, tc.user, tc.password, "postgres"))
				res := f.next(t)
				if tc.ok {
					if err != nil {
						t.Fatalf("connect: %v (front door: %v)", err, res.err)
					}
					defer conn.Close(ctx)
					var user string
					var pid uint32
					if err := conn.QueryRow(ctx, "SELECT current_user, pg_backend_pid()").Scan(&user, &pid); err != nil {
						t.Fatal(err)
					}
					if user != tc.user || pid != conn.PgConn().PID() {
						t.Fatalf("current_user %s, backend %d; BackendKeyData said %d", user, pid, conn.PgConn().PID())
					}
					if res.auth.Method != tc.method || (res.auth.ClientKey != nil) != tc.passThrough {
						t.Fatalf("authentication %v, want method %s, pass-through %t", res.auth, tc.method, tc.passThrough)
					}
					return
				}
				if err == nil {
					conn.Close(ctx)
					t.Fatal("connected")
				}
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "28P01" || pgErr.Severity != "FATAL" ||
					pgErr.Message != `password authentication failed for user "`+tc.user+`"` {
					t.Fatalf("err = %#v", err)
				}
				if !errors.Is(res.err, ErrAuthFailed) || sqlState(res.err) != "28P01" {
					t.Fatalf("Authenticate: %v", res.err)
				}
				if errors.Is(res.err, ErrNoSuchUser) != (tc.user == "no_such_user") {
					t.Fatalf("Authenticate: %v: ErrNoSuchUser for %s", res.err, tc.user)
				}
				if n := f.logins.Load(); n != logins {
					t.Fatal("a server login followed a failed authentication")
				}
			})
		}
	}
}

// psqlRun runs psql against addr and returns its output.
func psqlRun(t *testing.T, addr, user, password, sql string) (stdout, stderr string, err error) {
	t.Helper()
	psql, lerr := exec.LookPath("psql")
	if lerr != nil {
		t.Fatalf("psql is needed (the postgresql-client package, installed by .ci/run): %v", lerr)
	}
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-w", "-At", "-c", sql,
		"host="+host+" port="+port+" user="+user+" dbname=postgres sslmode=disable gssencmode=disable")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGPASSFILE="+os.DevNull, "PGCONNECT_TIMEOUT=10")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return strings.TrimSpace(out.String()), errOut.String(), err
}

// TestPsqlAuthenticates: psql (libpq) logs in to the front door, as pgx
// does in TestPgxAuthenticates.
func TestPsqlAuthenticates(t *testing.T) {
	pg := pgtest.Managed(t)
	for _, method := range []AuthMethod{AuthSCRAM, AuthMD5} {
		f := startFrontDoor(t, pg, &Authenticator{Source: doorSources(pg), Method: method})
		for _, tc := range clientCases(method) {
			t.Run(fmt.Sprintf("%s/%s/%s", method, tc.user, tc.password), func(t *testing.T) {
				logins := f.logins.Load()
				out, errOut, err := psqlRun(t, f.addr, tc.user, tc.password, "SELECT current_user")
				res := f.next(t)
				if tc.ok {
					if err != nil || out != tc.user {
						t.Fatalf("psql: %v: %q %s (front door: %v)", err, out, errOut, res.err)
					}
					if res.auth.Method != tc.method || (res.auth.ClientKey != nil) != tc.passThrough {
						t.Fatalf("authentication %v, want method %s, pass-through %t", res.auth, tc.method, tc.passThrough)
					}
					return
				}
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 2 {
					t.Fatalf("psql: %v, want exit status 2: %s", err, errOut)
				}
				if want := `FATAL:  password authentication failed for user "` + tc.user + `"`; !strings.Contains(errOut, want) {
					t.Fatalf("psql says %q, want %q", errOut, want)
				}
				if !errors.Is(res.err, ErrAuthFailed) || sqlState(res.err) != "28P01" {
					t.Fatalf("Authenticate: %v", res.err)
				}
				if n := f.logins.Load(); n != logins {
					t.Fatal("a server login followed a failed authentication")
				}
			})
		}
	}
}

// TestPsqlSASLPrep: a password that SASLprep changes (a ligature, NFKC)
// works from psql through the front door, against a plain password in the
// auth file, and the front door logs in to the server with it too.
func TestPsqlSASLPrep(t *testing.T) {
	pg := pgtest.Managed(t)
	const pw = "\ufb01x-p\u00e4ss\u00a0w\u00f6rd"
	role := createRole(t, pg, "PASSWORD '"+pw+"'")
	f := startFrontDoor(t, pg, &Authenticator{Source: Userlist{role: plainSecret(role, pw)}, Method: AuthSCRAM})
	out, errOut, err := psqlRun(t, f.addr, role, pw, "SELECT current_user")
	if err != nil || out != role {
		t.Fatalf("psql: %v: %q %s (front door: %v)", err, out, errOut, f.next(t).err)
	}
}

// rawClient speaks the protocol by hand to see every message the front
// door sends.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t *testing.T, addr, user string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &rawClient{t: t, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
	c.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": user, "database": "postgres"}})
	return c
}

func (c *rawClient) send(msgs ...pgproto3.FrontendMessage) {
	c.t.Helper()
	for _, m := range msgs {
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawClient) receive() pgproto3.BackendMessage {
	c.t.Helper()
	m, err := c.fe.Receive()
	if err != nil {
		c.t.Fatalf("receive: %v", err)
	}
	return m
}

// failed checks that the next message is FATAL 28P01 and that the front
// door then closes the connection.
func (c *rawClient) failed(user string) {
	c.t.Helper()
	e, ok := c.receive().(*pgproto3.ErrorResponse)
	if !ok || e.Code != "28P01" || e.Severity != "FATAL" || e.Message != `password authentication failed for user "`+user+`"` {
		c.t.Fatalf("got %#v, want FATAL 28P01", e)
	}
	if m, err := c.fe.Receive(); err == nil {
		c.t.Fatalf("after the ErrorResponse: %#v, want the connection closed", m)
	}
}

// scramAttempt runs a SCRAM exchange with a wrong password and returns the
// salt the server announced.
func scramAttempt(t *testing.T, addr, user string) string {
	c := dialRaw(t, addr, user)
	sasl, ok := c.receive().(*pgproto3.AuthenticationSASL)
	if !ok || len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
		t.Fatalf("got %#v, want AuthenticationSASL SCRAM-SHA-256", sasl)
	}
	sc := NewSCRAMClient("wrong password")
	c.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: sc.ClientFirst()})
	cont, ok := c.receive().(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("got %#v, want AuthenticationSASLContinue", cont)
	}
	serverFirst := string(cont.Data) // valid until the next Receive
	final, err := sc.ClientFinal([]byte(serverFirst))
	if err != nil {
		t.Fatal(err)
	}
	c.send(&pgproto3.SASLResponse{Data: final})
	c.failed(user)
	_, rest, _ := strings.Cut(serverFirst, ",s=")
	salt, _, _ := strings.Cut(rest, ",")
	return salt
}

// TestWrongPasswordNothingElse: message by message, a wrong password and an
// unknown user get the same exchange, one ErrorResponse 28P01, and a
// closed connection. An unknown user's SCRAM salt is stable, as a real
// user's is.
func TestWrongPasswordNothingElse(t *testing.T) {
	pg := pgtest.Managed(t)
	scram := startFrontDoor(t, pg, &Authenticator{Source: doorSources(pg), Method: AuthSCRAM})
	for _, user := range []string{pgtest.ScramUser, "no_such_user"} {
		s1, s2 := scramAttempt(t, scram.addr, user), scramAttempt(t, scram.addr, user)
		if s1 != s2 || len(s1) != 24 {
			t.Fatalf("%s: salts %q then %q, want one 16-byte salt", user, s1, s2)
		}
	}
	if scram.logins.Load() != 0 {
		t.Fatal("a server login followed a failed authentication")
	}

	md5Door := startFrontDoor(t, pg, &Authenticator{Source: doorSources(pg), Method: AuthMD5})
	for _, user := range []string{pgtest.MD5User, pgtest.PlainUser, "no_such_user"} {
		c := dialRaw(t, md5Door.addr, user)
		req, ok := c.receive().(*pgproto3.AuthenticationMD5Password)
		if !ok {
			t.Fatalf("%s: got %#v, want AuthenticationMD5Password", user, req)
		}
		c.send(&pgproto3.PasswordMessage{Password: md5Hex(md5Secret("wrong", user)[3:], string(req.Salt[:]))})
		c.failed(user)
	}
	if md5Door.logins.Load() != 0 {
		t.Fatal("a server login followed a failed authentication")
	}
}

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	deadline := time.Now().Add(30 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	return client, server
}

func rawMsg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)+4))
	return append(b, body...)
}

func saslInitial(mech, data string) []byte {
	n := make([]byte, 4)
	binary.BigEndian.PutUint32(n, uint32(len(data)))
	return rawMsg('p', mech+"\x00"+string(n)+data)
}

// TestAuthenticateClientProtocol drives AuthenticateClient with scripted
// clients: malformed answers get FATAL 08P01 (or 0A000), a client that
// leaves gets nothing, and a secret that cannot match fails like a wrong
// password.
func TestAuthenticateClientProtocol(t *testing.T) {
	pwSecret := plainSecret("u", "pw")
	tests := []struct {
		name   string
		secret Secret
		method AuthMethod
		client func(c net.Conn, fe *pgproto3.Frontend) // answers the first request
		reads  bool                                    // client reads the request itself
		code   string                                  // SQLSTATE sent; "" for none
		want   string                                  // in the error
	}{
		{name: "query instead of SASL", secret: pwSecret, method: AuthSCRAM, code: "08P01", want: "expected SASL initial response",
			client: func(c net.Conn, _ *pgproto3.Frontend) { c.Write(rawMsg('Q', "select 1\x00")) }},
		{name: "other mechanism", secret: pwSecret, method: AuthSCRAM, code: "08P01", want: "invalid SASL authentication mechanism",
			client: func(c net.Conn, _ *pgproto3.Frontend) { c.Write(saslInitial("SCRAM-SHA-1", "n,,n=,r=abc")) }},
		{name: "SASL length mismatch", secret: pwSecret, method: AuthSCRAM, code: "08P01", want: "data length",
			client: func(c net.Conn, _ *pgproto3.Frontend) {
				c.Write(rawMsg('p', "SCRAM-SHA-256\x00\x00\x00\x00\x20n,,n=,r=a"))
			}},
		{name: "channel binding", secret: pwSecret, method: AuthSCRAM, code: "0A000", want: "channel binding",
			client: func(c net.Conn, _ *pgproto3.Frontend) {
				c.Write(saslInitial("SCRAM-SHA-256", "p=tls-server-end-point,,n=,r=abc"))
			}},
		{name: "malformed client-final", secret: pwSecret, method: AuthSCRAM, code: "08P01", want: "channel-binding attribute",
			client: func(c net.Conn, fe *pgproto3.Frontend) {
				c.Write(saslInitial("SCRAM-SHA-256", "n,,n=,r=abc"))
				fe.Receive() // AuthenticationSASLContinue
				c.Write(rawMsg('p', "c=eSws,r=abc,p=AAAA"))
			}},
		{name: "password without NUL", secret: pwSecret, method: AuthMD5, code: "08P01", want: "invalid password packet",
			client: func(c net.Conn, _ *pgproto3.Frontend) { c.Write(rawMsg('p', "md5abc")) }},
		{name: "huge message", secret: pwSecret, method: AuthMD5, code: "08P01", want: "invalid message length",
			client: func(c net.Conn, _ *pgproto3.Frontend) { c.Write([]byte{'p', 0, 1, 0, 4}) }},
		{name: "client leaves", secret: pwSecret, method: AuthMD5, want: "closed the connection",
			client: func(c net.Conn, _ *pgproto3.Frontend) { c.Close() }},
		{name: "client terminates", secret: pwSecret, method: AuthSCRAM, want: "terminated",
			client: func(c net.Conn, _ *pgproto3.Frontend) { c.Write(rawMsg('X', "")) }},
		{name: "empty password, md5", secret: plainSecret("u", ""), method: AuthMD5, code: "28P01", want: "empty", reads: true,
			client: func(c net.Conn, fe *pgproto3.Frontend) {
				m, _ := fe.Receive()
				salt := m.(*pgproto3.AuthenticationMD5Password).Salt
				c.Write(rawMsg('p', md5Hex(md5Secret("", "u")[3:], string(salt[:]))+"\x00"))
			}},
		{name: "empty password, scram", secret: plainSecret("u", ""), method: AuthSCRAM, code: "28P01", want: "empty", reads: true,
			client: scramAnswer("")},
		{name: "md5 secret, scram", secret: Secret{User: "u", Kind: SecretMD5, MD5: md5Secret("pw", "u")}, method: AuthSCRAM, code: "28P01", want: "md5 secret", reads: true,
			client: scramAnswer("pw")},
		{name: "zero secret", secret: Secret{}, method: AuthMD5, code: "28P01", want: "empty",
			client: func(c net.Conn, _ *pgproto3.Frontend) { c.Write(rawMsg('p', "md5x\x00")) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := tcpPair(t)
			fe := pgproto3.NewFrontend(client, client)
			done := make(chan struct{})
			go func() {
				defer close(done)
				if !tt.reads {
					fe.Receive() // the authentication request
				}
				tt.client(client, fe)
			}()
			_, err := AuthenticateClient(server, "u", tt.secret, tt.method)
			<-done
			var ce *ClientAuthError
			if !errors.As(err, &ce) || ce.SQLState() != tt.code || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v (SQLSTATE %q), want %q with %q", err, sqlState(err), tt.code, tt.want)
			}
			if tt.code == "28P01" && !errors.Is(err, ErrAuthFailed) {
				t.Fatalf("err = %v, want ErrAuthFailed", err)
			}
			if tt.code == "" || tt.name == "client leaves" {
				return
			}
			// The client got exactly one ErrorResponse with that code.
			var got *pgproto3.ErrorResponse
			for {
				m, err := fe.Receive()
				if err != nil {
					t.Fatalf("no ErrorResponse: %v", err)
				}
				if e, ok := m.(*pgproto3.ErrorResponse); ok {
					got = e
					break
				}
				if _, ok := m.(*pgproto3.AuthenticationOk); ok {
					t.Fatal("AuthenticationOk sent")
				}
			}
			if got.Code != tt.code || got.Severity != "FATAL" {
				t.Fatalf("ErrorResponse %#v, want FATAL %s", got, tt.code)
			}
		})
	}
}

// scramAnswer is a scripted client that reads the SASL request and runs
// SCRAM with password.
func scramAnswer(password string) func(net.Conn, *pgproto3.Frontend) {
	return func(c net.Conn, fe *pgproto3.Frontend) {
		fe.Receive() // AuthenticationSASL
		sc := NewSCRAMClient(password)
		c.Write(saslInitial("SCRAM-SHA-256", string(sc.ClientFirst())))
		m, err := fe.Receive()
		if err != nil {
			return
		}
		cont, ok := m.(*pgproto3.AuthenticationSASLContinue)
		if !ok {
			return
		}
		final, _ := sc.ClientFinal(cont.Data)
		c.Write(rawMsg('p', string(final)))
	}
}

// TestAuthenticateClientReadsNoMore: bytes a client sends right after its
// last authentication message stay in the connection for the next reader.
func TestAuthenticateClientReadsNoMore(t *testing.T) {
	extra := rawMsg('Q', "SELECT 1\x00")
	for _, method := range []AuthMethod{AuthMD5, AuthSCRAM} {
		t.Run(string(method), func(t *testing.T) {
			client, server := tcpPair(t)
			fe := pgproto3.NewFrontend(client, client)
			go func() {
				m, err := fe.Receive()
				if err != nil {
					return
				}
				switch req := m.(type) {
				case *pgproto3.AuthenticationMD5Password:
					client.Write(append(rawMsg('p', md5Hex(md5Secret("pw", "u")[3:], string(req.Salt[:]))+"\x00"), extra...))
				case *pgproto3.AuthenticationSASL:
					sc := NewSCRAMClient("pw")
					client.Write(saslInitial("SCRAM-SHA-256", string(sc.ClientFirst())))
					m, _ := fe.Receive()
					final, _ := sc.ClientFinal(m.(*pgproto3.AuthenticationSASLContinue).Data)
					client.Write(append(rawMsg('p', string(final)), extra...))
				}
			}()
			auth, err := AuthenticateClient(server, "u", plainSecret("u", "pw"), method)
			if err != nil {
				t.Fatal(err)
			}
			if auth.Method != method || auth.ClientKey != nil {
				t.Fatalf("auth = %v", auth)
			}
			got := make([]byte, len(extra))
			if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, extra) {
				t.Fatalf("next bytes %q, %v; want %q", got, err, extra)
			}
		})
	}
}

// TestAuthenticatorLookupFails: a source that fails (not "no such user")
// gets FATAL 08006 and no exchange.
func TestAuthenticatorLookupFails(t *testing.T) {
	client, server := tcpPair(t)
	a := &Authenticator{Source: &AuthQuery{Login: func(context.Context) (net.Conn, error) {
		return nil, errors.New("auth server down")
	}}}
	_, _, err := a.Authenticate(t.Context(), server, "u")
	if sqlState(err) != "08006" || !strings.Contains(err.Error(), "auth server down") || errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v", err)
	}
	server.Close()
	m, err := pgproto3.NewFrontend(client, client).Receive()
	if e, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "08006" || strings.Contains(e.Message, "down") {
		t.Fatalf("client got %#v, %v", m, err)
	}
}

func TestMockSecret(t *testing.T) {
	a, b := &Authenticator{Method: AuthSCRAM}, &Authenticator{Method: AuthSCRAM}
	s1, s2 := a.MockSecret("ghost"), a.MockSecret("ghost")
	if s1.Kind != SecretSCRAM || !bytes.Equal(s1.SCRAM.Salt, s2.SCRAM.Salt) || len(s1.SCRAM.Salt) != scramSaltLen {
		t.Fatalf("mock secrets of one user differ: %x %x", s1.SCRAM.Salt, s2.SCRAM.Salt)
	}
	if bytes.Equal(s1.SCRAM.Salt, a.MockSecret("other").SCRAM.Salt) || bytes.Equal(s1.SCRAM.Salt, b.MockSecret("ghost").SCRAM.Salt) {
		t.Fatal("mock salts repeat across users or authenticators")
	}
	if m := (&Authenticator{}).MockSecret("ghost"); m.Kind != SecretMD5 || !isMD5Secret(m.MD5) {
		t.Fatalf("md5 mock secret %v", m)
	}
	if len(s1.SCRAM.StoredKey) != scramKeyLen || len(s1.SCRAM.ServerKey) != scramKeyLen {
		t.Fatal("mock keys are not 32 bytes")
	}
}

// TestSecretsDoNotPrint prints secrets every way a log or an API might and
// finds no password and no key in the output.
func TestSecretsDoNotPrint(t *testing.T) {
	v := mustVerifier(t, rfcVerifier)
	salt, stored, server := "W22ZaJ0SNY7soEsUEjb6gQ", "WG5d8oPm3OtcPnkdi4Uo7Bke", "wfPLwcE6nTWhTAmQ7tl2Keoi"
	values := []any{
		plainSecret("u", "hunter2-plain"),
		Secret{User: "u", Kind: SecretMD5, MD5: "md545f2603610af569b6155c45067268c6b"},
		Secret{User: "u", Kind: SecretSCRAM, SCRAM: v},
		v,
		*v,
		ServerCredential{Password: "hunter2-plain"},
		ServerCredential{Secret: &Secret{User: "u", Kind: SecretSCRAM, SCRAM: v}, ClientKey: []byte("client-key-bytes")},
		&ClientAuth{Method: AuthSCRAM, ClientKey: []byte("client-key-bytes")},
	}
	secrets := []string{"hunter2-plain", "45f2603610af569b", salt, stored, server, "client-key-bytes", "636c69656e74", "Y2xpZW50LWtleS1ieXRlcw"}
	for i, v := range values {
		var out bytes.Buffer
		fmt.Fprintf(&out, "%v|%+v|%#v|%s|", v, v, v, v)
		slog.New(slog.NewTextHandler(&out, nil)).Info("x", "v", v)
		slog.New(slog.NewJSONHandler(&out, nil)).Info("x", "v", v)
		if b, err := json.Marshal(v); err == nil {
			out.Write(b)
		}
		for _, s := range secrets {
			if strings.Contains(out.String(), s) {
				t.Errorf("value %d (%T) printed %q:\n%s", i, v, s, out.String())
			}
		}
	}
}
