package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SecretSource finds a user's secret. A user it does not know gives an
// error wrapping ErrNoSuchUser.
type SecretSource interface {
	Lookup(ctx context.Context, user string) (Secret, error)
}

// Sources asks each source in turn, as PgBouncer looks in its auth_file
// before it runs the auth_query: the first that knows the user answers, an
// ErrNoSuchUser moves on to the next, and any other error stops there.
type Sources []SecretSource

// Lookup returns the first secret found.
func (s Sources) Lookup(ctx context.Context, user string) (Secret, error) {
	for _, src := range s {
		secret, err := src.Lookup(ctx, user)
		if errors.Is(err, ErrNoSuchUser) {
			continue
		}
		return secret, err
	}
	return Secret{}, fmt.Errorf("user %q: %w", user, ErrNoSuchUser)
}

// DefaultAuthQuery is PgBouncer's default auth_query since 1.24.1: a
// password past its VALID UNTIL reads as NULL, and a role that cannot log
// in as no row (CVE-2025-2291; PgBouncer up to 1.24.0 ran
// "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"). Reading
// pg_authid takes a superuser; PgBouncer's documentation recommends a
// SECURITY DEFINER function called by a role with fewer rights.
const DefaultAuthQuery = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin"

// Defaults of AuthQuery's zero fields.
const (
	DefaultAuthQueryTimeout = 10 * time.Second
	DefaultAuthCacheTTL     = 30 * time.Second
	DefaultAuthCacheSize    = 1000
)

// maxAuthQueryMessage bounds a server message answering the auth query.
const maxAuthQueryMessage = 1 << 20

// AuthQuery is a SecretSource that asks the server, as PgBouncer's
// auth_user and auth_query do: it runs Query with the user name as $1,
// over the extended protocol, on a connection logged in as the auth user.
// The query returns one row of two text columns, the user name and its
// stored password (plain, md5 or SCRAM, see ParseSecret); no row or a NULL
// password means no such user.
//
// Unlike PgBouncer, which runs the query for every login, AuthQuery keeps
// answers (found or not found) for CacheTTL, and runs one query at a time
// per user name, however many clients of that user log in at once. A
// changed or expired password, or a dropped role, is seen at the latest
// CacheTTL later. Errors other than "no such user" are not kept.
//
// Login is required; the other fields have defaults. Set the fields before
// the first Lookup and leave them; Lookup is safe for concurrent use.
type AuthQuery struct {
	// Login returns a server connection logged in as the auth user, idle
	// (after ReadyForQuery), to the database the query runs in. Required.
	Login func(ctx context.Context) (net.Conn, error)
	// Release takes back a connection Lookup is done with, idle again;
	// nil means Lookup closes it. After an error that leaves the
	// connection in an unknown state, Lookup closes it itself.
	Release func(net.Conn)
	// Query is the auth query; "" means DefaultAuthQuery.
	Query string
	// Timeout bounds one lookup, Login included; 0 means
	// DefaultAuthQueryTimeout. The Lookup context's deadline applies too.
	Timeout time.Duration
	// CacheTTL is how long an answer is kept; 0 means DefaultAuthCacheTTL,
	// and a negative value keeps nothing.
	CacheTTL time.Duration
	// CacheSize bounds the number of answers kept; 0 means
	// DefaultAuthCacheSize. When full, expired answers go first, then
	// arbitrary ones.
	CacheSize int

	mu       sync.Mutex
	cache    map[string]authCacheEntry
	inflight map[string]*authLookup
	now      func() time.Time // time.Now; tests move the clock
}

type authCacheEntry struct {
	secret  Secret
	err     error // nil or wrapping ErrNoSuchUser
	expires time.Time
}

// authLookup is a query in flight; others asking for the same user wait
// for it.
type authLookup struct {
	done   chan struct{}
	secret Secret
	err    error
}

// Lookup returns the user's secret, from the cache or the server.
func (a *AuthQuery) Lookup(ctx context.Context, user string) (Secret, error) {
	for {
		a.mu.Lock()
		if a.cache == nil {
			a.cache = make(map[string]authCacheEntry)
			a.inflight = make(map[string]*authLookup)
		}
		if e, ok := a.cache[user]; ok && a.clock().Before(e.expires) {
			a.mu.Unlock()
			return e.secret, e.err
		}
		if call, ok := a.inflight[user]; ok {
			a.mu.Unlock()
			select {
			case <-call.done:
			case <-ctx.Done():
				return Secret{}, fmt.Errorf("auth query for user %q: %w", user, ctx.Err())
			}
			if isContextErr(call.err) && ctx.Err() == nil {
				continue // the other caller gave up; ask again
			}
			return call.secret, call.err
		}
		call := &authLookup{done: make(chan struct{})}
		a.inflight[user] = call
		a.mu.Unlock()

		call.secret, call.err = a.query(ctx, user)

		a.mu.Lock()
		delete(a.inflight, user)
		if ttl := a.ttl(); ttl > 0 && (call.err == nil || errors.Is(call.err, ErrNoSuchUser)) {
			a.store(user, authCacheEntry{secret: call.secret, err: call.err, expires: a.clock().Add(ttl)})
		}
		a.mu.Unlock()
		close(call.done)
		return call.secret, call.err
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (a *AuthQuery) clock() time.Time {
	if a.now != nil {
		return a.now()
	}
	return time.Now()
}

func (a *AuthQuery) ttl() time.Duration {
	if a.CacheTTL == 0 {
		return DefaultAuthCacheTTL
	}
	return a.CacheTTL
}

// store keeps an answer; a.mu is held.
func (a *AuthQuery) store(user string, e authCacheEntry) {
	size := a.CacheSize
	if size <= 0 {
		size = DefaultAuthCacheSize
	}
	if _, ok := a.cache[user]; !ok && len(a.cache) >= size {
		now := a.clock()
		for k, old := range a.cache {
			if !now.Before(old.expires) {
				delete(a.cache, k)
			}
		}
		for k := range a.cache {
			if len(a.cache) < size {
				break
			}
			delete(a.cache, k)
		}
	}
	a.cache[user] = e
}

// query runs the auth query on a connection from Login.
func (a *AuthQuery) query(ctx context.Context, user string) (Secret, error) {
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = DefaultAuthQueryTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if a.Login == nil {
		return Secret{}, errors.New("auth query: no Login")
	}
	conn, err := a.Login(ctx)
	if err != nil {
		return Secret{}, fmt.Errorf("auth query for user %q: log in: %w", user, err)
	}
	query := a.Query
	if query == "" {
		query = DefaultAuthQuery
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	secret, idle, err := runAuthQuery(conn, query, user)
	if !stop() {
		// ctx ended: conn's deadline may be in the past now.
		idle = false
		if err == nil || errors.Is(err, ErrNoSuchUser) {
			err = ctx.Err()
		}
	}
	if err != nil && !errors.Is(err, ErrNoSuchUser) {
		if cerr := ctxErr(ctx); cerr != nil && !errors.Is(err, cerr) {
			err = fmt.Errorf("%w: %w", cerr, err)
		}
	}
	if idle && a.Release != nil {
		conn.SetDeadline(time.Time{})
		a.Release(conn)
	} else {
		conn.Close()
	}
	if err != nil {
		return Secret{}, fmt.Errorf("auth query for user %q: %w", user, err)
	}
	return secret, nil
}

// runAuthQuery sends Parse, Bind, Describe, Execute and Sync, as
// PgBouncer's pktbuf_write_ExtQuery does, and reads the answer up to
// ReadyForQuery. idle says whether the connection got there and can serve
// again.
func runAuthQuery(conn net.Conn, query, user string) (secret Secret, idle bool, err error) {
	var buf []byte
	for _, msg := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: query},
		&pgproto3.Bind{Parameters: [][]byte{[]byte(user)}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	} {
		if buf, err = msg.Encode(buf); err != nil {
			return Secret{}, false, err
		}
	}
	if _, err := conn.Write(buf); err != nil {
		return Secret{}, false, fmt.Errorf("write: %w", err)
	}
	var (
		rows     int
		password []byte
		found    bool
		fail     error // the first thing wrong; reported after ReadyForQuery
	)
	failf := func(err error) {
		if fail == nil {
			fail = err
		}
	}
	for {
		typ, body, err := readMsgExact(conn, maxAuthQueryMessage)
		if err != nil {
			return Secret{}, false, fmt.Errorf("read: %w", err)
		}
		switch typ {
		case '1', '2', 'n', 'C', 'S', 'N', 'A':
			// ParseComplete, BindComplete, NoData, CommandComplete,
			// ParameterStatus, NoticeResponse, NotificationResponse.
		case 'T':
			var msg pgproto3.RowDescription
			if err := msg.Decode(body); err != nil {
				return Secret{}, false, fmt.Errorf("decode RowDescription: %w", err)
			}
			if len(msg.Fields) != 2 {
				failf(fmt.Errorf("expected 2 columns from the auth query, not %d", len(msg.Fields)))
			}
		case 'D':
			var msg pgproto3.DataRow
			if err := msg.Decode(body); err != nil {
				return Secret{}, false, fmt.Errorf("decode DataRow: %w", err)
			}
			rows++
			switch {
			case len(msg.Values) != 2:
				failf(fmt.Errorf("expected 2 columns from the auth query, not %d", len(msg.Values)))
			case msg.Values[0] == nil:
				failf(errors.New("the auth query returned a NULL user name"))
			case rows == 1:
				found = msg.Values[1] != nil
				password = append([]byte(nil), msg.Values[1]...)
			}
		case 'I':
			failf(errors.New("the auth query is empty"))
		case 'E':
			var msg pgproto3.ErrorResponse
			if err := msg.Decode(body); err != nil {
				return Secret{}, false, fmt.Errorf("decode ErrorResponse: %w", err)
			}
			failf(pgconn.ErrorResponseToPgError(&msg))
		case 'Z':
			var msg pgproto3.ReadyForQuery
			if err := msg.Decode(body); err != nil {
				return Secret{}, false, fmt.Errorf("decode ReadyForQuery: %w", err)
			}
			idle = msg.TxStatus == 'I'
			switch {
			case fail != nil:
				return Secret{}, idle, fail
			case rows > 1:
				return Secret{}, idle, fmt.Errorf("the auth query returned %d rows", rows)
			case !found:
				return Secret{}, idle, ErrNoSuchUser
			}
			return ParseSecret(user, string(password)), idle, nil
		default:
			return Secret{}, false, fmt.Errorf("unexpected message %q answering the auth query", typ)
		}
	}
}
