package pool

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dotmac/pgtrace/wire"
)

// Pooler serves client sessions in a pooled mode: it is the wire.Pooler
// that cmd/pgtrace gives the relay for --pool-mode session or transaction.
type Pooler struct {
	cfg  Config
	log  *slog.Logger
	dial dialFunc
	reg  *registry
	auth *Authenticator

	ctx    context.Context // ends at Close
	cancel context.CancelFunc

	mu    sync.Mutex
	pools map[Key]*Pool
	// byKey finds a session by the BackendKeyData the pooler gave its
	// client, for CancelRequest.
	byKey map[[8]byte]*relay

	misreleased atomic.Int64 // server connections given back twice (a bug; tests read it)
}

var _ wire.Pooler = (*Pooler)(nil)

// New returns a Pooler for cfg. dial connects to the upstream
// (wire.Server.DialUpstream).
func New(cfg Config, dial func(ctx context.Context) (net.Conn, error)) (*Pooler, error) {
	switch cfg.Mode {
	case ModeSession, ModeTransaction:
	default:
		return nil, fmt.Errorf("pool mode %q: want %s or %s", cfg.Mode, ModeSession, ModeTransaction)
	}
	if cfg.Secrets == nil {
		return nil, errors.New("pool: no secret source (an auth file or an auth query) to authenticate clients")
	}
	if dial == nil {
		return nil, errors.New("pool: no dialer")
	}
	cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Pooler{
		cfg: cfg, log: cfg.Logger, dial: dial, reg: newRegistry(),
		auth: &Authenticator{Source: cfg.Secrets, Method: cfg.Auth},
		ctx:  ctx, cancel: cancel,
		pools: make(map[Key]*Pool), byKey: make(map[[8]byte]*relay),
	}, nil
}

// Config returns the configuration in use, defaults filled in.
func (p *Pooler) Config() Config { return p.cfg }

// pool returns the pool of key, making it when new.
func (p *Pooler) pool(key Key) *Pool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pl := p.pools[key]
	if pl == nil {
		pl = &Pool{key: key, p: p, lent: make(map[*serverConn]struct{})}
		p.pools[key] = pl
	}
	return pl
}

// Run keeps the pools: it closes idle connections past their time and
// opens the minimum idle ones, every few seconds, until ctx ends or Close.
func (p *Pooler) Run(ctx context.Context) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			for _, pl := range p.poolList() {
				pl.maintain(now)
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-p.ctx.Done():
			return nil
		}
	}
}

func (p *Pooler) poolList() []*Pool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*Pool, 0, len(p.pools))
	for _, pl := range p.pools {
		out = append(out, pl)
	}
	return out
}

// Close closes every idle server connection and refuses new clients;
// connections lent out close when their clients are done with them.
func (p *Pooler) Close() {
	p.cancel()
	for _, pl := range p.poolList() {
		pl.close()
	}
}

// Stats describes every pool, by name.
func (p *Pooler) Stats() []Stats {
	var out []Stats
	for _, pl := range p.poolList() {
		out = append(out, pl.stats())
	}
	slices.SortFunc(out, func(a, b Stats) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// newKey makes a BackendKeyData body (process id, secret key) for a
// client and registers r under it.
func (p *Pooler) newKey(r *relay) []byte {
	var k [8]byte
	for {
		rand.Read(k[:])
		k[0] &= 0x7f // a positive process id, as PostgreSQL's
		p.mu.Lock()
		if _, taken := p.byKey[k]; !taken && binary.BigEndian.Uint32(k[:4]) != 0 {
			p.byKey[k] = r
			p.mu.Unlock()
			return k[:]
		}
		p.mu.Unlock()
	}
}

func (p *Pooler) forgetKey(key []byte) {
	var k [8]byte
	copy(k[:], key)
	p.mu.Lock()
	delete(p.byKey, k)
	p.mu.Unlock()
}

// Cancel forwards a client's CancelRequest to the server connection its
// session has now; a session without one runs nothing to cancel.
func (p *Pooler) Cancel(ctx context.Context, key []byte) error {
	if len(key) != 8 {
		return fmt.Errorf("cancel key of %d bytes, want 8", len(key))
	}
	var k [8]byte
	copy(k[:], key)
	p.mu.Lock()
	r := p.byKey[k]
	p.mu.Unlock()
	if r == nil {
		return errors.New("cancel request with an unknown key")
	}
	r.mu.Lock()
	sc := r.server
	if sc == nil && r.waitCancel != nil {
		// The client waits for a server connection: its statement has
		// not started, and will not.
		r.waitCanceled = true
		r.waitCancel()
	}
	r.mu.Unlock()
	if sc == nil || len(sc.key) < 8 {
		return nil
	}
	c, err := p.dial(ctx)
	if err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	defer c.Close()
	pkt := make([]byte, 8+len(sc.key))
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)))
	binary.BigEndian.PutUint32(pkt[4:], 80877102)
	copy(pkt[8:], sc.key)
	if _, err := c.Write(pkt); err != nil {
		return fmt.Errorf("send CancelRequest: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	var b [1]byte
	c.Read(b[:]) // PostgreSQL closes the connection once it has the request
	return nil
}

// Misreleased is the number of server connections given back that were not
// lent: 0 unless there is a bug (tests check it).
func (p *Pooler) Misreleased() int64 { return p.misreleased.Load() }
