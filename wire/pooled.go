package wire

import (
	"context"
	"errors"
	"net"
	"time"
)

// Pooled modes. In session and transaction pool modes the proxy does not
// open an upstream connection per client: after the client's startup
// packet, wire hands the session to a Pooler (package pool), which
// authenticates the client itself and lends it server connections. wire
// still owns the client connection until then (limits, TLS, the startup
// packet) and still observes every statement: the Pooler shows it each
// message as the client sent it and as the client receives it, through
// the session's Tracker, so that events, spans and findings are those of a
// 1:1 relay.

// Pooler serves client sessions in a pooled mode. Its methods are called
// from session goroutines, concurrently.
type Pooler interface {
	// ServeSession runs the session from just after its StartupMessage
	// until it ends: authentication, the relay, the client's Terminate or
	// disconnection. It owns ps.Client() until it returns and closes it
	// before returning. The error says why the session ended (nil for a
	// clean end); ps.End may say which side ended it.
	ServeSession(ctx context.Context, ps *PooledSession) error
	// Cancel handles a CancelRequest whose key (the BackendKeyData body,
	// process id and secret) may be one the Pooler handed out: it cancels
	// the query that session runs now, if any.
	Cancel(ctx context.Context, key []byte) error
}

// PooledSession is a client session handed to a Pooler.
type PooledSession struct {
	s        *session
	fe       *frontendCopier
	be       *backendCopier
	startup  *startupPacket
	side     Side
	lostWith error
}

// Client is the client connection (its TLS layer, when the client asked
// for TLS).
func (ps *PooledSession) Client() net.Conn { return ps.s.client }

// ConnID is the session's ConnInfo.ID, unique in the process.
func (ps *PooledSession) ConnID() uint64 { return ps.s.info.ID }

// User and Database are the StartupMessage's (the database defaults to the
// user, as PostgreSQL does).
func (ps *PooledSession) User() string     { return ps.startup.user }
func (ps *PooledSession) Database() string { return ps.startup.database }

// Params are the StartupMessage's parameters other than user and
// database, in the order sent (application_name, client_encoding,
// options, …). The slice must not be changed.
func (ps *PooledSession) Params() [][2]string { return ps.startup.params }

// ClientMessage shows the tracker a message the client sent, before the
// Pooler acts on it. body is the message body; bodyLen its full length,
// more than len(body) when only the start of a large message is at hand
// (whole false). body is not kept.
func (ps *PooledSession) ClientMessage(typ byte, body []byte, bodyLen int, whole bool) {
	ps.fe.message(typ, body, bodyLen, whole)
}

// ServerMessage shows the tracker a message the client receives, from the
// server or from the Pooler itself (its own authentication exchange, a
// ParseComplete for a statement the server connection already had), just
// before it is written to the client. Events it completes leave with the
// next Flushed.
func (ps *PooledSession) ServerMessage(typ byte, body []byte, bodyLen int, whole bool) error {
	return ps.be.message(typ, body, bodyLen, whole)
}

// Flushed says that the messages shown with ServerMessage have been
// written to the client: the events they completed go to the observers.
func (ps *PooledSession) Flushed() { ps.be.flushed() }

// Idle reports whether every request the client sent has been answered.
// A server connection may go back to the pool only then (and when the
// client is not in a transaction).
func (ps *PooledSession) Idle() bool {
	ps.s.mu.Lock()
	defer ps.s.mu.Unlock()
	return ps.s.reqs.empty()
}

// NextAnswer is the sequence number of the oldest request the client sent
// that awaits its answer, or of the next one it will send when none does:
// what the answer now arriving from the server belongs to, when the
// Pooler did not ask something of its own in between.
func (ps *PooledSession) NextAnswer() uint64 {
	ps.s.mu.Lock()
	defer ps.s.mu.Unlock()
	if f := ps.s.reqs.front(); f != nil {
		return f.seq
	}
	return ps.s.reqs.pushed
}

// Pushed is the number of requests the client has sent so far: the
// sequence number of its next one.
func (ps *PooledSession) Pushed() uint64 {
	ps.s.mu.Lock()
	defer ps.s.mu.Unlock()
	return ps.s.reqs.pushed
}

// NotePoolWait records that the client waited d, from start, for a
// server connection before its next statement could run: the statement
// carries the wait (Statement.PoolWait).
func (ps *PooledSession) NotePoolWait(start time.Time, d time.Duration) {
	s := ps.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; s.reqs.at(i) != nil; i++ {
		if p := s.reqs.at(i); p.ev != nil {
			p.ev.st.PoolWait, p.ev.st.PoolWaitStart = d, start
			return
		}
	}
	s.poolWait, s.poolWaitStart = d, start
}

// SetApplication records the application_name the session runs under, as
// the Pooler knows it (a server connection's ParameterStatus is not shown
// to the tracker when the Pooler answers for itself).
func (ps *PooledSession) SetApplication(name string) {
	ps.s.mu.Lock()
	ps.s.info.Application = name
	ps.s.mu.Unlock()
}

// End says which side ended the session and, for a lost upstream, why:
// the requests still awaiting an answer then end as failed with 08006.
func (ps *PooledSession) End(side Side, lost error) { ps.side, ps.lostWith = side, lost }

// errPoolerClosed is the reason of a session whose Pooler returned without
// one.
var errPoolerClosed = errors.New("pooled session ended")

// servePooled hands the session to the Pooler and reports its end.
func (s *session) servePooled(startup *startupPacket) {
	fe := newPooledFrontend(s)
	be := &backendCopier{s: s}
	ps := &PooledSession{s: s, fe: fe, be: be, startup: startup}
	s.dialStart = time.Now()
	err := s.srv.Pooler.ServeSession(s.ctx, ps)
	s.closeAll()
	side := ps.side
	if side == SideNone {
		side = SideClient
		if errors.Is(err, ErrServerClosed) || s.ctx.Err() != nil {
			side = SideProxy
		}
	}
	if ps.lostWith != nil {
		be.abandon(ps.lostWith)
	}
	be.endPortals(time.Now())
	be.release(0)
	be.flushed()
	if err != nil && !errors.Is(err, errPoolerClosed) {
		s.log.Debug("pooled session ended", "side", side.String(), "err", err)
	}
	s.emit(&Event{Kind: ConnClosed, Side: side, Err: err, Statements: s.statements.Load()})
}

// newPooledFrontend is a frontendCopier that only observes: the Pooler
// forwards the messages.
func newPooledFrontend(s *session) *frontendCopier {
	fc := &frontendCopier{s: s}
	s.mu.Lock()
	s.fe = fc
	s.mu.Unlock()
	return fc
}
