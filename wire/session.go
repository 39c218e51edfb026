package wire

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// session is one client connection and, once the startup packet is read,
// its upstream connection.
//
// Goroutines: serve runs the startup phase, then relays the two directions
// (frontendCopier: client → upstream, backendCopier: upstream → client),
// either on an event loop (loop_linux.go) or with one goroutine each, and
// waits for the first direction to end. Only the backendCopier writes to
// the client while both run; serve writes its own ErrorResponses only after
// both have stopped (the loop has handed the sockets back).
type session struct {
	srv      *Server
	log      *slog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	rejected bool // over MaxClientConnections: answer 53300 after startup

	// client and upstream are set during the startup phase (client is
	// replaced by its TLS wrapper) under mu, so abort can close them.
	client, upstream net.Conn

	mu          sync.Mutex // guards the fields below
	info        ConnInfo
	reqs        requestQueue // requests awaiting their answer
	ready       bool         // the first ReadyForQuery arrived
	replication bool         // a replication session: relayed, not observed
	key         []byte       // BackendKeyData body (pid + secret key), for CancelRequest
	aborted     bool
	rel         relayLoop       // set while an event loop relays the session
	fe          *frontendCopier // its prepared statement names are under mu

	// A pool wait noted before the statement it delays was sent
	// (PooledSession.NotePoolWait), under mu.
	poolWait      time.Duration
	poolWaitStart time.Time

	statements  atomic.Int64
	copyIn      atomic.Int64 // CopyData/CopyDone/CopyFail bytes not yet attributed
	terminating atomic.Bool  // the client sent Terminate
	dialStart   time.Time
}

func newSession(srv *Server, c net.Conn) *session {
	ctx, cancel := context.WithCancel(srv.baseCtx)
	s := &session{srv: srv, ctx: ctx, cancel: cancel, client: c}
	s.info = ConnInfo{
		ID:         srv.nextID.Add(1),
		ServerAddr: srv.Upstream,
		OpenedAt:   time.Now(),
	}
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		s.info.ClientAddr = ta.AddrPort()
		if a := s.info.ClientAddr.Addr(); a.Is4In6() {
			s.info.ClientAddr = netip.AddrPortFrom(a.Unmap(), s.info.ClientAddr.Port())
		}
	}
	s.log = srv.log.With("conn", s.info.ID, "client", c.RemoteAddr().String())
	return s
}

// relayLoop is an event loop's hold on a session's sockets (loop_linux.go,
// loop_uring_linux.go).
type relayLoop interface {
	// stop makes the loop end the relay soon (forced shutdown).
	stop()
	// sockets are the loop's descriptors of the client and upstream
	// sockets, which takeBack turns into connections again.
	sockets() (client, upstream int)
}

// endReason is how one relay direction ended.
type endReason struct {
	side  Side
	err   error // nil for a clean close
	proto bool  // the client broke the protocol (err is a *ProtocolError)
	lost  bool  // the upstream connection broke without a FATAL error
}

func (e *endReason) Error() string {
	if e.err == nil {
		return e.side.String() + " closed the connection"
	}
	return e.err.Error()
}

func (e *endReason) Unwrap() error { return e.err }

func (s *session) serve() {
	defer s.cancel()
	startup, err := s.negotiate()
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			s.log.Warn("invalid startup packet from client", "err", err)
			s.writeClient(errorResponse("FATAL", "08P01", "pgtrace: "+err.Error()))
		} else {
			s.log.Debug("client left during startup", "err", err)
		}
		s.closeAll()
		return
	}
	if startup.code == codeCancelRequest {
		s.closeAll()
		if s.srv.Pooler != nil {
			if err := s.srv.Pooler.Cancel(s.ctx, startup.raw[8:]); err != nil {
				s.log.Warn("CancelRequest", "err", err)
			}
			return
		}
		if err := s.srv.forwardCancel(s.ctx, startup.raw); err != nil {
			s.log.Warn("forward CancelRequest", "err", err)
		}
		return
	}
	if s.rejected {
		s.log.Warn("rejected client: too many connections", "max_client_connections", s.srv.MaxClientConnections)
		s.writeClient(errorResponse("FATAL", "53300", "pgtrace: sorry, too many connections"))
		s.closeAll()
		return
	}
	s.client.SetDeadline(time.Time{})

	s.mu.Lock()
	s.info.User = startup.user
	s.info.Database = startup.database
	s.info.Application = startup.application
	s.info.Schema = startup.schema
	s.replication = startup.replication
	s.mu.Unlock()
	s.emit(&Event{Kind: ConnOpened})

	if s.srv.Pooler != nil {
		if s.replication {
			s.writeClient(errorResponse("FATAL", "0A000", "pgtrace: replication connections are not pooled; connect them to PostgreSQL directly"))
			s.closeAll()
			s.emit(&Event{Kind: ConnClosed, Side: SideProxy, Err: errors.New("replication connection refused in a pooled mode")})
			return
		}
		s.servePooled(startup)
		return
	}

	s.dialStart = time.Now()
	up, err := s.srv.dialUpstream(s.ctx)
	if err == nil {
		if _, werr := up.Write(startup.raw); werr != nil {
			up.Close()
			err = fmt.Errorf("send startup to upstream %s: %w", s.srv.Upstream, werr)
		}
	}
	if err != nil {
		s.log.Warn("upstream unreachable", "upstream", s.srv.Upstream, "err", err)
		s.writeClient(errorResponse("FATAL", "08001", fmt.Sprintf("pgtrace: cannot connect to upstream %s: %v", s.srv.Upstream, err)))
		s.closeAll()
		s.emit(&Event{Kind: ConnAuthFailed, ConnectDuration: time.Since(s.dialStart), Err: err})
		s.emit(&Event{Kind: ConnClosed, Side: SideUpstream, Err: err})
		return
	}
	s.mu.Lock()
	aborted := s.aborted
	if !aborted {
		s.upstream = up
	}
	s.mu.Unlock()
	if aborted {
		// abort closed the client before the upstream was known.
		up.Close()
		s.emit(&Event{Kind: ConnClosed, Side: SideProxy, Err: ErrServerClosed})
		return
	}
	s.relay()
}

// negotiate runs the client's startup phase: SSLRequest and GSSENCRequest
// (answered, TLS terminated when configured) until a StartupMessage or a
// CancelRequest arrives.
func (s *session) negotiate() (*startupPacket, error) {
	s.client.SetDeadline(time.Now().Add(startupTimeout))
	tlsDone := false
	for {
		p, err := readStartup(s.client)
		if err != nil {
			return nil, err
		}
		switch p.code {
		case codeGSSENCRequest:
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case codeSSLRequest:
			if tlsDone {
				return nil, &ProtocolError{Len: 8, Err: errors.New("SSLRequest after TLS was established")}
			}
			if s.srv.ClientTLS == nil {
				if _, err := s.client.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if _, err := s.client.Write([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(s.client, s.srv.ClientTLS)
			if err := tc.HandshakeContext(s.ctx); err != nil {
				return nil, fmt.Errorf("client TLS handshake: %w", err)
			}
			s.mu.Lock()
			s.client = tc
			s.mu.Unlock()
			tlsDone = true
		default:
			return p, nil
		}
	}
}

// relay relays both directions, on an event loop or with two copier
// goroutines, and ends the session when the first direction ends.
func (s *session) relay() {
	fe := newFrontendCopier(s)
	be := newBackendCopier(s)
	errc := make(chan *endReason, 2) // both directions send; the first one wins
	looped := s.startLoopRelay(fe, be, errc)
	if !looped {
		go fe.copyToBackend(errc)
		go be.copyFromBackend(errc)
	}
	first := <-errc
	if looped {
		s.takeBack(s.rel)
	}
	s.mu.Lock()
	if s.aborted {
		first = &endReason{side: SideProxy, err: ErrServerClosed}
	}
	s.mu.Unlock()

	switch {
	case first.proto:
		// The client sent garbage: tell it so, once the backendCopier (the
		// only other writer to the client) has stopped.
		s.log.Warn("invalid message from client", "err", first.err)
		s.upstream.Close()
		s.client.SetWriteDeadline(time.Now().Add(time.Second))
		<-errc
		s.replyError(be, errorResponse("FATAL", "08P01", "pgtrace: "+first.err.Error()))
		s.closeAll()
	case first.lost:
		// Stop the other direction first: when the write to the upstream
		// failed, the backendCopier may still be writing to the client
		// (bounded, for a client that does not read), and the
		// frontendCopier may be waiting on the client.
		s.log.Warn("upstream connection lost", "upstream", s.srv.Upstream, "err", first.err)
		s.upstream.Close()
		s.client.SetReadDeadline(time.Now())
		s.client.SetWriteDeadline(time.Now().Add(time.Second)) // a client that does not read
		<-errc
		s.replyError(be, errorResponse("FATAL", "08006", fmt.Sprintf("pgtrace: lost connection to upstream %s: %v", s.srv.Upstream, first.err)))
		s.closeAll()
	case first.side == SideClient && first.err != nil && s.busy():
		// The client vanished mid-query: cancel the query so the backend
		// notices and goes away now, not when the query ends.
		s.log.Info("client vanished mid-query; cancelling it upstream", "err", first.err)
		s.cancelUpstream()
		s.closeAll()
		<-errc
	default:
		s.closeAll()
		<-errc
	}

	// Both copiers have returned. An upstream that said FATAL (e.g.
	// pg_terminate_backend) ended the session, even when the client was
	// quicker to hang up after reading it.
	if first.side != SideProxy && be.fatalErr != nil {
		first = &endReason{side: SideUpstream, err: be.fatalErr}
	}
	// Statements that finished but saw no ReadyForQuery (a FATAL error ends
	// the session without one) leave now, with TxStatus 0. When the upstream
	// was lost, the requests it never answered end as failed with 08006,
	// as the client was told.
	if first.lost {
		be.abandon(first.err)
	}
	be.endPortals(time.Now())
	be.release(0)
	be.flushed()
	switch {
	case first.err == nil:
		s.log.Debug(first.side.String() + " closed the connection")
	case first.side == SideProxy:
		s.log.Debug("proxy closed the connection", "err", first.err)
	default:
		s.log.Debug(first.side.String()+" ended the connection", "err", first.err)
	}
	s.emit(&Event{
		Kind:       ConnClosed,
		Side:       first.side,
		Err:        first.err,
		Statements: s.statements.Load(),
		BytesIn:    fe.f.in,
		BytesOut:   be.f.in,
	})
}

// busy reports whether a request is awaiting its answer.
func (s *session) busy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.reqs.empty()
}

// cancelUpstream sends a CancelRequest for the session's backend.
func (s *session) cancelUpstream() {
	s.mu.Lock()
	key := s.key
	s.mu.Unlock()
	if key == nil || s.replication {
		return
	}
	pkt := make([]byte, 8+len(key))
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)))
	binary.BigEndian.PutUint32(pkt[4:], codeCancelRequest)
	copy(pkt[8:], key)
	ctx, cancel := context.WithTimeout(s.srv.baseCtx, s.srv.dialTimeout())
	defer cancel()
	if err := s.srv.forwardCancel(ctx, pkt); err != nil {
		s.log.Warn("cancel query of vanished client", "err", err)
	}
}

// abort closes both sides at once (forced shutdown).
func (s *session) abort() {
	s.mu.Lock()
	s.aborted = true
	rel := s.rel
	s.mu.Unlock()
	s.cancel()
	if rel != nil {
		rel.stop()
	}
	s.closeAll()
}

// closeAll closes both connections; closing again does nothing.
func (s *session) closeAll() {
	s.mu.Lock()
	c, u := s.client, s.upstream
	s.mu.Unlock()
	c.Close()
	if u != nil {
		u.Close()
	}
}

// replyError writes the proxy's own ErrorResponse to the client, once
// both relay directions have stopped, at a message boundary: after the
// server's framed bytes that had not gone yet (the event loop may stop
// with some waiting for the client), and not at all while a streamed
// message is half written. A client that does not take it within a second,
// or that is left with half a message, is cut off: its connection closes
// without a TLS close_notify, which would wait five seconds more.
func (s *session) replyError(be *backendCopier, msg []byte) {
	f := be.f
	s.client.SetWriteDeadline(time.Now().Add(time.Second))
	var err error
	if f.fw < f.r {
		if _, err = s.client.Write(f.buf[f.fw:f.r]); err == nil {
			f.fw = f.r
		}
	}
	if err == nil && !f.midMessage {
		_, err = s.client.Write(msg)
	}
	if err != nil {
		s.log.Debug("write error response to client", "err", err)
	}
	if err != nil || f.midMessage {
		if tc, ok := s.client.(*tls.Conn); ok {
			tc.NetConn().Close()
		}
	}
}

// writeClient writes a message of the relay's own to the client. Only for
// when no copier writes to the client.
func (s *session) writeClient(b []byte) {
	if _, err := s.client.Write(b); err != nil {
		s.log.Debug("write error response to client", "err", err)
	}
}

// emit sends e with the session's current ConnInfo.
func (s *session) emit(e *Event) {
	if s.stamp(e) {
		s.srv.emit(e)
	}
}

// stamp sets e's Time (when zero) and Conn, the session's current ConnInfo,
// making e ready to send. It reports false when events are not made (no
// Observer, or a replication session).
func (s *session) stamp(e *Event) bool {
	if s.srv.Observer == nil || s.replication {
		return false
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	s.mu.Lock()
	e.Conn = s.info
	s.mu.Unlock()
	return true
}

// state is the session as Connections reports it; ok is false before the
// startup packet arrived (and for sessions rejected at the cap).
func (s *session) state() (ConnState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rejected || s.info.User == "" {
		return ConnState{}, false
	}
	st := ConnState{ConnInfo: s.info, Statements: s.statements.Load()}
	switch {
	case s.replication:
		st.State = "replication"
	case !s.ready:
		st.State = "startup"
	case !s.reqs.empty():
		st.State = "active"
		for i := 0; s.reqs.at(i) != nil; i++ {
			if p := s.reqs.at(i); p.ev != nil {
				st.StatementStart = p.ev.st.Start
				break
			}
		}
	case s.info.TxStatus == TxInBlock:
		st.State = "idle in transaction"
	case s.info.TxStatus == TxFailed:
		st.State = "idle in transaction (aborted)"
	default:
		st.State = "idle"
	}
	return st, true
}

func (srv *Server) dialTimeout() time.Duration {
	if srv.DialTimeout > 0 {
		return srv.DialTimeout
	}
	return defaultDialTimeout
}

// DialUpstream connects to the upstream as the relay does: its address,
// TLS settings and dial timeout. A Pooler logs its server connections in
// over it.
func (srv *Server) DialUpstream(ctx context.Context) (net.Conn, error) {
	return srv.dialUpstream(ctx)
}

// dialUpstream connects to the upstream and negotiates TLS per UpstreamTLS.
// Over a Unix socket it asks for no TLS, as libpq does: PostgreSQL serves
// none there (validate refuses the modes that require it).
func (srv *Server) dialUpstream(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, srv.dialTimeout())
	defer cancel()
	var d net.Dialer
	network, addr := Network(srv.Upstream)
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dial upstream %s: %w", srv.Upstream, err)
	}
	mode := srv.UpstreamTLS.Mode
	if mode == "" || mode == "disable" || network == "unix" {
		return c, nil
	}
	tc, err := srv.upstreamTLS(ctx, c, mode)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("upstream %s: %w", srv.Upstream, err)
	}
	return tc, nil
}

func (srv *Server) upstreamTLS(ctx context.Context, c net.Conn, mode string) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	req := []byte{0, 0, 0, 8, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(req[4:], codeSSLRequest)
	if _, err := c.Write(req); err != nil {
		return nil, fmt.Errorf("send SSLRequest: %w", err)
	}
	var resp [1]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return nil, fmt.Errorf("read SSLRequest response: %w", err)
	}
	switch resp[0] {
	case 'S':
	case 'N':
		if mode == "prefer" {
			return c, nil
		}
		return nil, fmt.Errorf("server does not support TLS (sslmode=%s)", mode)
	default:
		return nil, fmt.Errorf("unexpected response %q to SSLRequest", resp[0])
	}
	cfg := &tls.Config{InsecureSkipVerify: true}
	if mode == "verify-full" {
		name := srv.UpstreamTLS.ServerName
		if name == "" {
			name, _, _ = net.SplitHostPort(srv.Upstream)
		}
		cfg = &tls.Config{RootCAs: srv.UpstreamTLS.RootCAs, ServerName: name}
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// forwardCancel sends a CancelRequest packet to the upstream on a fresh
// connection and closes it.
func (srv *Server) forwardCancel(ctx context.Context, pkt []byte) error {
	c, err := srv.dialUpstream(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		return fmt.Errorf("send CancelRequest to upstream %s: %w", srv.Upstream, err)
	}
	// PostgreSQL closes the connection after reading the request; wait for
	// that so the cancel is in before we report it sent.
	c.SetReadDeadline(time.Now().Add(time.Second))
	var b [1]byte
	c.Read(b[:])
	return nil
}
