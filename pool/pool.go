package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
)

// Mode is how clients share server connections.
type Mode string

const (
	// ModeSession lends a client a server connection from its first
	// request to its end; the connection is reset (Config.ResetQuery)
	// before the next client gets it.
	ModeSession Mode = "session"
	// ModeTransaction lends a client a server connection only while it is
	// in a transaction or has a request the server has not answered: the
	// connection goes back to the pool at a ReadyForQuery with status I.
	ModeTransaction Mode = "transaction"
)

// Key names a pool: clients of one database and user share its server
// connections.
type Key struct{ Database, User string }

// Name is the pool's db.client.connection.pool.name: database/user.
func (k Key) Name() string { return k.Database + "/" + k.User }

// Config configures a Pooler. Zero values take the defaults named.
type Config struct {
	Mode Mode // required
	// Size is the server connections per pool. Default 20.
	Size int
	// MinIdle is the idle server connections each pool keeps open, once
	// it has been used. Default 0.
	MinIdle int
	// MaxWait is how long a client waits for a server connection before it
	// gets ErrorResponse 53300. Default 2 minutes (PgBouncer's
	// query_wait_timeout).
	MaxWait time.Duration
	// IdleTimeout closes a server connection idle this long. Default 10
	// minutes (PgBouncer's server_idle_timeout).
	IdleTimeout time.Duration
	// Lifetime closes a server connection this old when it comes back.
	// Default 1 hour (PgBouncer's server_lifetime).
	Lifetime time.Duration
	// ResetQuery runs on a server connection before it goes to the next
	// client in session mode. Default "DISCARD ALL"; set NoResetQuery for
	// none.
	ResetQuery   string
	NoResetQuery bool
	// MaxPreparedStatements bounds the protocol-level prepared statements
	// each server connection keeps for clients in transaction mode (the
	// least recently used are closed). Default 200 (PgBouncer's
	// max_prepared_statements).
	MaxPreparedStatements int

	// IgnoreStartupParameters are startup parameters (or settings in the
	// options parameter) a client may send and that are dropped; a client
	// that sends any other untracked one is refused with 08P01, as by
	// PgBouncer's ignore_startup_parameters. Names are case-insensitive;
	// "options" accepts every options string.
	IgnoreStartupParameters []string

	// Secrets finds a client's secret: the auth file, then an auth query.
	Secrets SecretSource
	// Auth is how clients prove their password. Default AuthSCRAM.
	Auth AuthMethod

	// Hooks receive what the pools do, for metrics, spans and findings.
	Hooks Hooks
	// Logger receives the pools' reports; nil logs nothing.
	Logger *slog.Logger
}

// Hooks are called as the pools work. Any may be nil. They are called
// from session goroutines and must not block.
type Hooks struct {
	// Waited: a client waited d for a server connection of pool key,
	// from start; timedOut when it gave up. It is called for every
	// acquisition: d is 0 when an idle connection was at hand, the login
	// time when a new one was opened for the client.
	Waited func(key Key, start time.Time, d time.Duration, timedOut bool)
	// Created: a server connection of pool key was opened and logged in
	// in d, or failed with err.
	Created func(key Key, d time.Duration, err error)
	// Used: a client had a server connection of pool key for d.
	Used func(key Key, d time.Duration)
	// Closed: a server connection of pool key was closed, for reason
	// ("idle", "lifetime", "broken", "client_gone", "reset_failed",
	// "shutdown").
	Closed func(key Key, reason string)
}

const (
	defaultSize                  = 20
	defaultMaxWait               = 2 * time.Minute
	defaultIdleTimeout           = 10 * time.Minute
	defaultLifetime              = time.Hour
	defaultResetQuery            = "DISCARD ALL"
	defaultMaxPreparedStatements = 200
	// checkAfter: an idle server connection unused this long is checked
	// before it is lent (it may have been closed by the server).
	checkAfter = 30 * time.Second
)

func (c *Config) withDefaults() {
	if c.Size <= 0 {
		c.Size = defaultSize
	}
	if c.MaxWait <= 0 {
		c.MaxWait = defaultMaxWait
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = defaultIdleTimeout
	}
	if c.Lifetime <= 0 {
		c.Lifetime = defaultLifetime
	}
	if c.ResetQuery == "" && !c.NoResetQuery {
		c.ResetQuery = defaultResetQuery
	}
	if c.NoResetQuery {
		c.ResetQuery = ""
	}
	if c.MaxPreparedStatements <= 0 {
		c.MaxPreparedStatements = defaultMaxPreparedStatements
	}
	if c.Auth == "" {
		c.Auth = AuthSCRAM
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// errPoolTimeout is returned by acquire when MaxWait passed.
var errPoolTimeout = errors.New("no server connection available")

// errPoolClosed is returned by acquire once the pools are closed.
var errPoolClosed = errors.New("the pools are closed")

// Pool is the server connections of one database and user.
type Pool struct {
	key Key
	p   *Pooler

	mu      sync.Mutex
	idle    []*serverConn // most recently used last
	lent    map[*serverConn]struct{}
	used    int       // lent to clients, or being checked before
	opening int       // being opened
	waiters []*waiter // first come, first served
	closed  bool
	// params are the ParameterStatus values of the pool's first login,
	// what clients are told at their own login.
	params paramSet
	// cred logs server connections in: the secret of the pool's user, with
	// a SCRAM pass-through key from a client that proved it.
	cred *ServerCredential

	// Statistics.
	waitTimes  []time.Duration // a ring of the latest waits, for p95
	waitNext   int
	timeouts   uint64
	created    uint64
	lastActive time.Time
}

// waiter is a client waiting for a server connection.
type waiter struct {
	ch    chan acquired
	since time.Time // when the client asked
}

type acquired struct {
	sc  *serverConn
	err error
}

const waitRing = 256

// acquire returns a server connection for a client, waiting up to
// MaxWait. It reports how long the client waited (0 when one was ready).
func (pl *Pool) acquire(ctx context.Context) (*serverConn, time.Duration, error) {
	start := time.Now()
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		return nil, 0, errPoolClosed
	}
	pl.lastActive = start
	for len(pl.idle) > 0 {
		sc := pl.idle[len(pl.idle)-1]
		pl.idle = pl.idle[:len(pl.idle)-1]
		pl.used++ // counted while checked, so that no one opens one more
		pl.mu.Unlock()
		if sc.alive(start) {
			pl.lend(sc)
			pl.noteWait(start, 0, false)
			return sc, 0, nil
		}
		pl.drop(sc, "broken")
		pl.mu.Lock()
		pl.used--
	}
	if pl.used+pl.opening < pl.p.cfg.Size {
		pl.opening++
		pl.mu.Unlock()
		sc, err := pl.open(ctx)
		pl.mu.Lock()
		pl.opening--
		if err != nil {
			pl.mu.Unlock()
			pl.handOff() // a waiter may open one in its place
			return nil, 0, err
		}
		pl.used++
		pl.mu.Unlock()
		pl.lend(sc)
		d := time.Since(start)
		pl.noteWait(start, d, false)
		return sc, d, nil
	}
	w := &waiter{ch: make(chan acquired, 1), since: start}
	pl.waiters = append(pl.waiters, w)
	pl.mu.Unlock()

	t := time.NewTimer(pl.p.cfg.MaxWait)
	defer t.Stop()
	var a acquired
	select {
	case a = <-w.ch:
	case <-t.C:
		a.err = errPoolTimeout
	case <-ctx.Done():
		a.err = ctx.Err()
	}
	if a.err != nil {
		pl.mu.Lock()
		if i := slices.Index(pl.waiters, w); i >= 0 {
			pl.waiters = slices.Delete(pl.waiters, i, i+1)
			if errors.Is(a.err, errPoolTimeout) {
				pl.timeouts++
			}
			pl.mu.Unlock()
		} else {
			// Handed a connection just as the wait ended: give it back.
			pl.mu.Unlock()
			if b := <-w.ch; b.sc != nil {
				pl.lend(b.sc)
				pl.release(b.sc, true)
			}
		}
		d := time.Since(start)
		pl.noteWait(start, d, errors.Is(a.err, errPoolTimeout))
		return nil, d, a.err
	}
	d := time.Since(start)
	pl.noteWait(start, d, false)
	pl.lend(a.sc)
	return a.sc, d, nil
}

// canLend reports whether acquire would not wait now: an idle connection,
// or room to open one.
func (pl *Pool) canLend() bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return len(pl.idle) > 0 || pl.used+pl.opening < pl.p.cfg.Size
}

// lend records that sc is lent to a client.
func (pl *Pool) lend(sc *serverConn) {
	pl.mu.Lock()
	sc.lentAt = time.Now()
	pl.lent[sc] = struct{}{}
	pl.mu.Unlock()
}

func (pl *Pool) noteWait(start time.Time, d time.Duration, timedOut bool) {
	pl.mu.Lock()
	if len(pl.waitTimes) < waitRing {
		pl.waitTimes = append(pl.waitTimes, d)
	} else {
		pl.waitTimes[pl.waitNext] = d
		pl.waitNext = (pl.waitNext + 1) % waitRing
	}
	pl.mu.Unlock()
	if h := pl.p.cfg.Hooks.Waited; h != nil {
		h(pl.key, start, d, timedOut)
	}
}

// release takes back a server connection a client had. A connection that
// is not reusable (broken, left in a transaction), or that outlived
// Lifetime, is closed.
func (pl *Pool) release(sc *serverConn, reusable bool) {
	now := time.Now()
	closeFor := "" // why sc is closed, if it is
	switch {
	case !reusable:
		closeFor = "broken"
	case now.Sub(sc.created) > pl.p.cfg.Lifetime:
		closeFor = "lifetime"
	}
	var next *waiter // the client sc goes to
	pl.mu.Lock()
	if _, ok := pl.lent[sc]; !ok {
		// Given back twice: a bug, which must not hand one connection
		// to two clients.
		pl.mu.Unlock()
		pl.p.misreleased.Add(1)
		pl.p.log.Error("a server connection was given back that is not lent; ignored", "pool", pl.key.Name())
		return
	}
	lentAt := sc.lentAt
	sc.lentAt = time.Time{}
	delete(pl.lent, sc)
	sc.holder.Store(nil)
	switch {
	case closeFor != "":
		pl.used--
	case pl.closed:
		pl.used--
		closeFor = "shutdown"
	case len(pl.waiters) > 0:
		next = pl.waiters[0] // sc stays counted as used
		pl.waiters = pl.waiters[1:]
		sc.lastUsed = now
	default:
		pl.used--
		sc.lastUsed = now
		pl.idle = append(pl.idle, sc)
	}
	pl.mu.Unlock()
	if h := pl.p.cfg.Hooks.Used; h != nil && !lentAt.IsZero() {
		h(pl.key, now.Sub(lentAt))
	}
	switch {
	case next != nil:
		next.ch <- acquired{sc: sc}
	case closeFor == "shutdown":
		pl.drop(sc, closeFor)
	case closeFor != "":
		pl.drop(sc, closeFor)
		pl.handOff()
	}
}

// handOff opens a connection for the first waiter when a place in the pool
// became free without a connection to hand over.
func (pl *Pool) handOff() {
	pl.mu.Lock()
	if len(pl.waiters) == 0 || pl.closed || pl.used+pl.opening >= pl.p.cfg.Size {
		pl.mu.Unlock()
		return
	}
	w := pl.waiters[0]
	pl.waiters = pl.waiters[1:]
	pl.opening++
	pl.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(pl.p.ctx, pl.p.cfg.MaxWait)
		defer cancel()
		sc, err := pl.open(ctx)
		pl.mu.Lock()
		pl.opening--
		if err == nil {
			pl.used++
		}
		pl.mu.Unlock()
		w.ch <- acquired{sc: sc, err: err}
	}()
}

// drop closes a server connection that left the pool.
func (pl *Pool) drop(sc *serverConn, reason string) {
	sc.close()
	if h := pl.p.cfg.Hooks.Closed; h != nil {
		h(pl.key, reason)
	}
}

// open dials and logs in a new server connection.
func (pl *Pool) open(ctx context.Context) (*serverConn, error) {
	start := time.Now()
	sc, err := pl.login(ctx)
	if h := pl.p.cfg.Hooks.Created; h != nil {
		h(pl.key, time.Since(start), err)
	}
	if err != nil {
		return nil, err
	}
	pl.mu.Lock()
	pl.created++
	if pl.params == nil {
		pl.params = sc.params.clone()
	}
	pl.mu.Unlock()
	return sc, nil
}

// login dials the upstream and logs in as the pool's user.
func (pl *Pool) login(ctx context.Context) (*serverConn, error) {
	pl.mu.Lock()
	cred := pl.cred
	pl.mu.Unlock()
	if cred == nil {
		return nil, fmt.Errorf("pool %s: no credential to log in with", pl.key.Name())
	}
	conn, err := pl.p.dial(ctx)
	if err != nil {
		return nil, err
	}
	ss, err := Login(ctx, conn, map[string]string{"user": pl.key.User, "database": pl.key.Database}, *cred)
	if err != nil {
		conn.Close()
		return nil, err
	}
	now := time.Now()
	return newServerConn(conn, ss, pl, now), nil
}

// maintain closes idle connections past IdleTimeout and opens up to
// MinIdle. The Pooler calls it every few seconds.
func (pl *Pool) maintain(now time.Time) {
	pl.mu.Lock()
	var old []*serverConn
	keep := pl.idle[:0]
	for _, sc := range pl.idle {
		if now.Sub(sc.lastUsed) > pl.p.cfg.IdleTimeout || now.Sub(sc.created) > pl.p.cfg.Lifetime {
			old = append(old, sc)
		} else {
			keep = append(keep, sc)
		}
	}
	clear(pl.idle[len(keep):])
	pl.idle = keep
	missing := 0
	if pl.params != nil && !pl.closed { // the pool has been used
		missing = min(pl.p.cfg.MinIdle-len(pl.idle), pl.p.cfg.Size-pl.used-pl.opening-len(pl.idle))
	}
	pl.opening += max(missing, 0)
	pl.mu.Unlock()
	for _, sc := range old {
		reason := "idle"
		if now.Sub(sc.created) > pl.p.cfg.Lifetime {
			reason = "lifetime"
		}
		pl.drop(sc, reason)
	}
	for range max(missing, 0) {
		ctx, cancel := context.WithTimeout(pl.p.ctx, pl.p.cfg.MaxWait)
		sc, err := pl.open(ctx)
		cancel()
		pl.mu.Lock()
		pl.opening--
		if err == nil {
			pl.idle = append(pl.idle, sc)
		}
		pl.mu.Unlock()
		if err != nil {
			pl.p.log.Warn("open an idle server connection", "pool", pl.key.Name(), "err", err)
			break
		}
	}
}

// close closes the idle connections and refuses new clients; connections
// lent out close when they come back.
func (pl *Pool) close() {
	pl.mu.Lock()
	pl.closed = true
	idle := pl.idle
	pl.idle = nil
	waiters := pl.waiters
	pl.waiters = nil
	pl.mu.Unlock()
	for _, sc := range idle {
		pl.drop(sc, "shutdown")
	}
	for _, w := range waiters {
		w.ch <- acquired{err: errPoolClosed}
	}
}

// Stats describes one pool, for /api/pools and the metrics.
type Stats struct {
	Name     string        `json:"name"` // database/user
	Database string        `json:"database"`
	User     string        `json:"user"`
	Size     int           `json:"size"` // the most server connections
	MinIdle  int           `json:"min_idle"`
	Used     int           `json:"used"`    // lent to clients
	Idle     int           `json:"idle"`    // open, waiting for a client
	Opening  int           `json:"opening"` // being opened
	Waiting  int           `json:"waiting"` // clients waiting for a connection
	WaitP95  time.Duration `json:"-"`
	// WaitP95Ms is the 95th percentile of the waits of the latest 256
	// acquisitions (0 for one that found an idle connection), in ms.
	WaitP95Ms float64 `json:"wait_p95_ms"`
	Timeouts  uint64  `json:"timeouts"` // clients that gave up waiting
	Created   uint64  `json:"created"`  // server connections opened
	// WaitingSince is when the client that has waited longest began to
	// wait; zero when none waits. LongestWaitMs is how long ago, in ms.
	WaitingSince  time.Time `json:"-"`
	LongestWaitMs float64   `json:"longest_wait_ms"`
	// Clients are the client sessions that hold a server connection now.
	Clients []HolderStats `json:"clients"`
}

// HolderStats is a client that holds a server connection.
type HolderStats struct {
	ConnID     uint64    `json:"conn_id"`
	ServerPID  uint32    `json:"server_pid"`
	Since      time.Time `json:"since"`
	ClientAddr string    `json:"client_addr"`
}

func (pl *Pool) stats() Stats {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	s := Stats{
		Name: pl.key.Name(), Database: pl.key.Database, User: pl.key.User,
		Size: pl.p.cfg.Size, MinIdle: pl.p.cfg.MinIdle,
		Used: pl.used, Idle: len(pl.idle), Opening: pl.opening, Waiting: len(pl.waiters),
		Timeouts: pl.timeouts, Created: pl.created, Clients: []HolderStats{},
	}
	for sc := range pl.lent {
		h := sc.holder.Load()
		if h == nil {
			continue
		}
		s.Clients = append(s.Clients, HolderStats{ConnID: h.connID, ClientAddr: h.addr, ServerPID: sc.pid, Since: sc.lentAt})
	}
	slices.SortFunc(s.Clients, func(a, b HolderStats) int { return a.Since.Compare(b.Since) })
	if len(pl.waiters) > 0 {
		s.WaitingSince = pl.waiters[0].since // first come, first served: the oldest
		s.LongestWaitMs = float64(time.Since(s.WaitingSince)) / float64(time.Millisecond)
	}
	if n := len(pl.waitTimes); n > 0 {
		w := slices.Clone(pl.waitTimes)
		slices.Sort(w)
		s.WaitP95 = w[min(n-1, n*95/100)]
		s.WaitP95Ms = float64(s.WaitP95) / float64(time.Millisecond)
	}
	return s
}

// dialFunc dials the upstream (wire.PooledSession.DialUpstream).
type dialFunc func(ctx context.Context) (net.Conn, error)
