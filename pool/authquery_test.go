package pool

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/google/go-cmp/cmp"
)

// authLogin logs in to the test server as the superuser, with Login, and
// counts the logins.
type authLogin struct {
	pg     *pgtest.Server
	logins atomic.Int32
}

func (a *authLogin) login(ctx context.Context) (net.Conn, error) {
	a.logins.Add(1)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", a.pg.Addr())
	if err != nil {
		return nil, err
	}
	params := map[string]string{"user": pgtest.SuperUser, "database": "postgres", "application_name": "pool-auth-query"}
	if _, err := Login(ctx, conn, params, ServerCredential{Password: pgtest.SuperPassword}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// TestAuthQueryDefault runs PgBouncer's default auth query on the real
// server, as the superuser, for each kind of role.
func TestAuthQueryDefault(t *testing.T) {
	pg := pgtest.Managed(t)
	expired := createRole(t, pg, "PASSWORD 'expired-pass' VALID UNTIL '2001-01-01'")
	future := createRole(t, pg, "PASSWORD 'future-pass' VALID UNTIL 'infinity'")
	nologin := createRole(t, pg, "PASSWORD 'nologin-pass'")
	if _, err := superConn(t, pg).Exec(t.Context(), "ALTER ROLE "+nologin+" NOLOGIN"); err != nil {
		t.Fatal(err)
	}
	al := &authLogin{pg: pg}
	aq := &AuthQuery{Login: al.login, CacheTTL: -1}
	tests := []struct {
		user string
		kind SecretKind // 0: no such user
	}{
		{pgtest.ScramUser, SecretSCRAM},
		{pgtest.MD5User, SecretMD5},
		{pgtest.PlainUser, SecretSCRAM},
		{pgtest.SuperUser, SecretSCRAM},
		{future, SecretSCRAM},
		{pgtest.TrustUser, 0}, // no password: NULL
		{expired, 0},          // VALID UNTIL passed: NULL
		{nologin, 0},          // NOLOGIN: no row
		{"no_such_role", 0},
		{"x' OR 'a'='a", 0}, // $1 is a parameter, not text in the query
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			got, err := aq.Lookup(t.Context(), tt.user)
			if tt.kind == 0 {
				if !errors.Is(err, ErrNoSuchUser) {
					t.Fatalf("Lookup = %v, %v; want ErrNoSuchUser", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := ParseSecret(tt.user, rolpassword(t, pg, tt.user))
			if got.Kind != tt.kind || !cmp.Equal(got, want) {
				t.Fatalf("Lookup = %v, want %v from pg_authid", got, want)
			}
		})
	}
	if n := int(al.logins.Load()); n != len(tests) {
		t.Fatalf("%d logins for %d uncached lookups", n, len(tests))
	}
}

func TestAuthQueryCustom(t *testing.T) {
	pg := pgtest.Managed(t)
	tests := []struct {
		query string
		want  Secret
		err   string // in the error; "-" for ErrNoSuchUser
		code  string // the server's SQLSTATE
	}{
		{query: "SELECT $1::text, 'sekrit'", want: plainSecret("someone", "sekrit")},
		{query: "SELECT $1::text, 'md5' || md5('pw' || $1::text)", want: Secret{User: "someone", Kind: SecretMD5, MD5: md5Secret("pw", "someone")}},
		{query: "SELECT $1::text, NULL::text", err: "-"},
		{query: "SELECT $1::text WHERE false", err: "expected 2 columns"},
		{query: "SELECT NULL::text, $1::text", err: "NULL user name"},
		{query: "SELECT $1::text, 'x' FROM generate_series(1, 2)", err: "returned 2 rows"},
		{query: "SELEC $1", err: "syntax error", code: "42601"},
		{query: "SELECT $1::text, 1/0", err: "division by zero", code: "22012"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			al := &authLogin{pg: pg}
			var released []net.Conn
			aq := &AuthQuery{Login: al.login, Query: tt.query, Release: func(c net.Conn) { released = append(released, c) }}
			got, err := aq.Lookup(t.Context(), "someone")
			for _, c := range released {
				// A released connection is idle and in sync: it answers a query.
				if rows := simpleQuery(t, c, "SELECT 42"); rows[0][0] != "42" {
					t.Fatalf("released connection answers %v", rows)
				}
				c.Close()
			}
			switch {
			case tt.err == "-":
				if !errors.Is(err, ErrNoSuchUser) {
					t.Fatalf("err = %v, want ErrNoSuchUser", err)
				}
			case tt.err != "":
				if err == nil || !strings.Contains(err.Error(), tt.err) || sqlState(err) != tt.code {
					t.Fatalf("err = %v (SQLSTATE %q), want %q (%q)", err, sqlState(err), tt.err, tt.code)
				}
			case err != nil:
				t.Fatal(err)
			default:
				if !cmp.Equal(got, tt.want) {
					t.Fatalf("Lookup = %v, want %v", got, tt.want)
				}
			}
			if len(released) != 1 {
				t.Fatalf("%d connections released, want 1 (the query ends at ReadyForQuery)", len(released))
			}
		})
	}
}

func TestAuthQueryCache(t *testing.T) {
	pg := pgtest.Managed(t)
	al := &authLogin{pg: pg}
	now := time.Unix(1000, 0)
	aq := &AuthQuery{Login: al.login, CacheTTL: 30 * time.Second, now: func() time.Time { return now }}
	lookup := func(user string, wantLogins int32) {
		t.Helper()
		if _, err := aq.Lookup(t.Context(), user); err != nil && !errors.Is(err, ErrNoSuchUser) {
			t.Fatal(err)
		}
		if n := al.logins.Load(); n != wantLogins {
			t.Fatalf("after Lookup(%s): %d logins, want %d", user, n, wantLogins)
		}
	}
	lookup(pgtest.ScramUser, 1)
	lookup(pgtest.ScramUser, 1) // cached
	lookup("no_such_role", 2)
	lookup("no_such_role", 2) // "no such user" is cached too
	now = now.Add(29 * time.Second)
	lookup(pgtest.ScramUser, 2)
	now = now.Add(2 * time.Second)
	lookup(pgtest.ScramUser, 3) // expired
	lookup("no_such_role", 4)

	// Bounded.
	aq.CacheSize = 2
	for _, u := range []string{"r1", "r2", "r3", "r4", "r5"} {
		aq.Lookup(t.Context(), u)
	}
	aq.mu.Lock()
	n := len(aq.cache)
	aq.mu.Unlock()
	if n > 2 {
		t.Fatalf("%d answers kept, CacheSize 2", n)
	}

	// Errors are not kept.
	fails := 0
	bad := &AuthQuery{Login: func(context.Context) (net.Conn, error) { fails++; return nil, errors.New("server down") }}
	for range 2 {
		if _, err := bad.Lookup(t.Context(), "u"); err == nil || errors.Is(err, ErrNoSuchUser) || !strings.Contains(err.Error(), "server down") {
			t.Fatalf("err = %v", err)
		}
	}
	if fails != 2 {
		t.Fatalf("%d logins for 2 failing lookups", fails)
	}
}

// TestAuthQueryConcurrent: many logins of one user at once run one query.
func TestAuthQueryConcurrent(t *testing.T) {
	pg := pgtest.Managed(t)
	al := &authLogin{pg: pg}
	gate := make(chan struct{})
	aq := &AuthQuery{Login: func(ctx context.Context) (net.Conn, error) {
		<-gate
		return al.login(ctx)
	}}
	var wg sync.WaitGroup
	results := make([]Secret, 16)
	errs := make([]error, 16)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = aq.Lookup(t.Context(), pgtest.MD5User) })
	}
	time.Sleep(100 * time.Millisecond) // let them all wait
	close(gate)
	wg.Wait()
	for i := range results {
		if errs[i] != nil || results[i].Kind != SecretMD5 {
			t.Fatalf("lookup %d: %v, %v", i, results[i], errs[i])
		}
	}
	if n := al.logins.Load(); n != 1 {
		t.Fatalf("%d logins for 16 concurrent lookups of one user", n)
	}
}

// TestAuthQueryReuse: with Release, one server connection serves lookup
// after lookup.
func TestAuthQueryReuse(t *testing.T) {
	pg := pgtest.Managed(t)
	al := &authLogin{pg: pg}
	var idle net.Conn
	aq := &AuthQuery{
		CacheTTL: -1,
		Login: func(ctx context.Context) (net.Conn, error) {
			if c := idle; c != nil {
				idle = nil
				return c, nil
			}
			return al.login(ctx)
		},
		Release: func(c net.Conn) { idle = c },
	}
	t.Cleanup(func() {
		if idle != nil {
			idle.Close()
		}
	})
	for _, u := range []string{pgtest.ScramUser, pgtest.MD5User, "no_such_role", pgtest.ScramUser} {
		if _, err := aq.Lookup(t.Context(), u); err != nil && !errors.Is(err, ErrNoSuchUser) {
			t.Fatalf("Lookup(%s): %v", u, err)
		}
	}
	if n := al.logins.Load(); n != 1 {
		t.Fatalf("%d logins for 4 lookups on a reused connection", n)
	}
}

func TestAuthQueryTimeout(t *testing.T) {
	addr := silentServer(t)
	var closed atomic.Bool
	aq := &AuthQuery{
		Timeout: 200 * time.Millisecond,
		Login: func(ctx context.Context) (net.Conn, error) {
			c, err := net.Dial("tcp", addr)
			return &closeSpy{Conn: c, closed: &closed}, err
		},
		Release: func(net.Conn) { t.Error("a timed-out connection was released") },
	}
	start := time.Now()
	_, err := aq.Lookup(t.Context(), "u")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Lookup returned after %v", d)
	}
	if !closed.Load() {
		t.Fatal("the timed-out connection was not closed")
	}
}

type closeSpy struct {
	net.Conn
	closed *atomic.Bool
}

func (c *closeSpy) Close() error { c.closed.Store(true); return c.Conn.Close() }

// TestSources: the auth file first, then the auth query, as PgBouncer.
func TestSources(t *testing.T) {
	pg := pgtest.Managed(t)
	al := &authLogin{pg: pg}
	src := Sources{
		Userlist{pgtest.ScramUser: plainSecret(pgtest.ScramUser, "from-the-file")},
		&AuthQuery{Login: al.login},
	}
	s, err := src.Lookup(t.Context(), pgtest.ScramUser)
	if err != nil || s.Kind != SecretPlain || s.Plain != "from-the-file" {
		t.Fatalf("Lookup(scram_user) = %v, %v; want the file's", s, err)
	}
	if al.logins.Load() != 0 {
		t.Fatal("the auth query ran for a user in the file")
	}
	if s, err = src.Lookup(t.Context(), pgtest.MD5User); err != nil || s.Kind != SecretMD5 {
		t.Fatalf("Lookup(md5_user) = %v, %v; want the auth query's", s, err)
	}
	if _, err = src.Lookup(t.Context(), "no_such_role"); !errors.Is(err, ErrNoSuchUser) {
		t.Fatalf("Lookup(no_such_role) err = %v", err)
	}
	down := Sources{Userlist{}, &AuthQuery{Login: func(context.Context) (net.Conn, error) { return nil, errors.New("server down") }}, Userlist{"x": plainSecret("x", "y")}}
	if _, err = down.Lookup(t.Context(), "x"); err == nil || errors.Is(err, ErrNoSuchUser) {
		t.Fatalf("a failing source was skipped: err = %v", err)
	}
}
