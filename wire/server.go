package wire

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The relay I/O modes of Server.IO.
const (
	// IOEpoll relays on a few event-loop goroutines, each waiting on an
	// epoll set and reading and writing with plain system calls.
	IOEpoll = "epoll"
	// IOURing relays on event loops that submit each send, and the next
	// receive behind it, in the io_uring_enter that waits for the next
	// completion.
	IOURing = "uring"
	// IOGoroutines relays each session with two copier goroutines on the
	// runtime's network poller; portable.
	IOGoroutines = "goroutines"
)

// IOModes lists the values Server.IO accepts, the default first.
var IOModes = []string{IOURing, IOEpoll, IOGoroutines}

// defaultIO is the mode of a Server whose IO is empty; tests set it from
// PGTRACE_TEST_IO to run the whole suite in another mode.
var defaultIO = IOURing

func (srv *Server) ioMode() string {
	if srv.IO == "" {
		return defaultIO
	}
	return srv.IO
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("wire: server closed")

// Server relays PostgreSQL sessions from clients to one upstream.
//
// The exported fields are read when Serve is first called and must not
// change afterwards. A Server must not be copied after first use.
type Server struct {
	// Upstream is the host:port of the upstream PostgreSQL, or the path of
	// its Unix socket (see Network).
	Upstream string
	// DialTimeout bounds connecting to the upstream, including the upstream
	// TLS handshake. Zero means 5s.
	DialTimeout time.Duration
	// ClientTLS, if nil, makes the relay answer 'N' to SSLRequest; otherwise
	// it answers 'S' and terminates TLS toward the client with this config.
	// GSSENCRequest is always answered 'N'.
	ClientTLS *tls.Config
	// UpstreamTLS says how to secure the connection to the upstream.
	UpstreamTLS UpstreamTLS
	// MaxClientConnections caps concurrent client sessions; 0 means no cap.
	// A client over the cap gets ErrorResponse 53300 after its startup packet.
	// CancelRequests are forwarded even at the cap.
	MaxClientConnections int
	// Pooler, if set, serves every client session after its startup packet
	// (session and transaction pool modes): see Pooler. Nil is the 1:1
	// relay, one upstream connection per client.
	Pooler Pooler
	// Observer receives the events; nil means no events are made.
	Observer Observer
	// QueueSize is the capacity of the event queue in front of the Observer.
	// Zero means 65536. When the queue is full, events are dropped and
	// counted (DroppedEvents).
	QueueSize int
	// Logger receives the relay's own reports: a session's end and why, an
	// upstream that is unreachable or lost, an invalid message. wire
	// decides nothing about what is printed: nil means nothing is logged,
	// and the caller sets the level and format (cmd/pgtrace does).
	Logger *slog.Logger
	// IO is how plain (TCP or Unix socket) sessions are relayed once their
	// startup packet has gone upstream, on Linux: IOURing (the default
	// when empty), IOEpoll or IOGoroutines. Sessions with TLS on either
	// side and replication sessions always use goroutines. Where io_uring
	// cannot be used (a kernel older than 6.1, io_uring disabled or
	// filtered out), IOURing relays with the epoll loop and logs one
	// warning. Outside Linux every session uses goroutines.
	IO string

	initOnce     sync.Once
	log          *slog.Logger
	events       chan *Event
	dispatchDone chan struct{}
	dropped      atomic.Uint64
	forgotten    atomic.Uint64 // statement names dropped at maxPrepared
	nextID       atomic.Uint64
	active       atomic.Int64 // admitted sessions (not rejected at the cap)

	// baseCtx is the parent of every session's context; cancelled when
	// Shutdown gives up waiting.
	baseCtx context.Context
	cancel  context.CancelFunc

	mu        sync.Mutex
	shutting  bool
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup // one per session goroutine
	stopOnce  sync.Once      // closes the event queue
}

// UpstreamTLS configures TLS toward the upstream, like libpq's sslmode.
type UpstreamTLS struct {
	// Mode is "disable" (the default when empty), "prefer" (TLS when the
	// upstream offers it, without verification), "require" (TLS, without
	// verification) or "verify-full" (TLS, verifying chain and host name).
	Mode string
	// RootCAs verifies the upstream for verify-full; nil means the system pool.
	RootCAs *x509.CertPool
	// ServerName is the name verify-full checks; "" means Upstream's host.
	ServerName string
}

// ConnState is a live session as Connections reports it.
type ConnState struct {
	ConnInfo
	// State is "startup", "active", "idle", "idle in transaction" or
	// "idle in transaction (aborted)" — like pg_stat_activity.state — or
	// "replication" for a replication session (relayed, not observed).
	State string
	// StatementStart is when the oldest request still awaiting its answer
	// was read from the client; zero when idle.
	StatementStart time.Time
	// Statements counts the statements finished so far.
	Statements int64
}

const defaultDialTimeout = 5 * time.Second

// Network returns the network of an address given as host:port ("tcp") or
// as the path of a Unix socket, such as /var/run/postgresql/.s.PGSQL.5432
// ("unix"): anything that starts with "/". Upstream and pgtrace's own
// --listen take both forms.
func Network(addr string) (network, address string) {
	if strings.HasPrefix(addr, "/") {
		return "unix", addr
	}
	return "tcp", addr
}

// startupTimeout bounds the startup phase of a client: TLS negotiation and
// the StartupMessage (not the authentication exchange, which the upstream
// times itself: authentication_timeout).
const startupTimeout = 30 * time.Second

func (srv *Server) init() {
	srv.initOnce.Do(func() {
		srv.log = srv.Logger
		if srv.log == nil {
			srv.log = slog.New(slog.DiscardHandler)
		}
		n := srv.QueueSize
		if n <= 0 {
			n = 65536
		}
		srv.events = make(chan *Event, n)
		srv.dispatchDone = make(chan struct{})
		srv.baseCtx, srv.cancel = context.WithCancel(context.Background())
		srv.listeners = make(map[net.Listener]struct{})
		srv.sessions = make(map[*session]struct{})
		go srv.dispatch()
	})
}

func (srv *Server) validate() error {
	if srv.Upstream == "" {
		return errors.New("wire: Server.Upstream is empty")
	}
	network, _ := Network(srv.Upstream)
	if network == "tcp" {
		if _, _, err := net.SplitHostPort(srv.Upstream); err != nil {
			return fmt.Errorf("wire: Server.Upstream %q: %w", srv.Upstream, err)
		}
	}
	if srv.IO != "" && !slices.Contains(IOModes, srv.IO) {
		return fmt.Errorf("wire: Server.IO %q: want %s", srv.IO, strings.Join(IOModes, ", "))
	}
	switch srv.UpstreamTLS.Mode {
	case "", "disable", "prefer":
	case "require", "verify-full":
		if network == "unix" {
			return fmt.Errorf("wire: UpstreamTLS.Mode %q: PostgreSQL has no TLS on a Unix socket (%s)", srv.UpstreamTLS.Mode, srv.Upstream)
		}
	default:
		return fmt.Errorf("wire: UpstreamTLS.Mode %q: want disable, prefer, require or verify-full", srv.UpstreamTLS.Mode)
	}
	return nil
}

// Serve accepts client connections on l and relays each in its own
// goroutines. It blocks until l fails, ctx ends (it then closes l and
// returns ctx.Err(); running sessions continue until Shutdown) or Shutdown is
// called (it returns ErrServerClosed). Temporary accept errors (such as
// running out of file descriptors) are retried with a backoff up to 1s.
// Serve may be called for several listeners.
func (srv *Server) Serve(ctx context.Context, l net.Listener) error {
	srv.init()
	if err := srv.validate(); err != nil {
		return err
	}
	srv.mu.Lock()
	if srv.shutting {
		srv.mu.Unlock()
		return ErrServerClosed
	}
	srv.listeners[l] = struct{}{}
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.listeners, l)
		srv.mu.Unlock()
	}()

	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			srv.mu.Lock()
			shutting := srv.shutting
			srv.mu.Unlock()
			if shutting {
				return ErrServerClosed
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if temporary(err) {
				if delay == 0 {
					delay = 5 * time.Millisecond
				} else {
					delay = min(2*delay, time.Second)
				}
				srv.log.Warn("accept failed; retrying", "err", err, "retry_in", delay)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
				}
				continue
			}
			return fmt.Errorf("wire: accept on %s: %w", l.Addr(), err)
		}
		delay = 0
		srv.startSession(c)
	}
}

// temporary reports whether an accept error is worth retrying.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) ||
		errors.Is(err, syscall.ENOMEM)
}

func (srv *Server) startSession(c net.Conn) {
	s := newSession(srv, c)
	srv.mu.Lock()
	if srv.shutting {
		srv.mu.Unlock()
		c.Close()
		return
	}
	srv.sessions[s] = struct{}{}
	srv.wg.Add(1)
	srv.mu.Unlock()

	if n := srv.active.Add(1); srv.MaxClientConnections > 0 && n > int64(srv.MaxClientConnections) {
		srv.active.Add(-1)
		s.rejected = true
	}
	go func() {
		defer srv.wg.Done()
		s.serve()
		if !s.rejected {
			srv.active.Add(-1)
		}
		srv.mu.Lock()
		delete(srv.sessions, s)
		srv.mu.Unlock()
	}()
}

// Shutdown stops accepting, waits for the sessions to end until ctx ends,
// and then closes the sessions still open; the error then says how many
// ("N connection(s) still open after waiting"). Finally it drains the event
// queue into the Observer (waiting for that at most until ctx ends, or 1s
// more if ctx has already ended) and stops the dispatcher. Serve returns
// ErrServerClosed afterwards.
func (srv *Server) Shutdown(ctx context.Context) (err error) {
	srv.init()
	srv.mu.Lock()
	srv.shutting = true
	for l := range srv.listeners {
		l.Close()
	}
	srv.mu.Unlock()

	done := make(chan struct{})
	go func() {
		srv.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		srv.mu.Lock()
		n := len(srv.sessions)
		for s := range srv.sessions {
			s.abort()
		}
		srv.mu.Unlock()
		srv.cancel()
		<-done // aborted sessions end promptly: both their sockets are closed
		err = fmt.Errorf("wire: %d connection(s) still open after waiting: %w", n, ctx.Err())
	}

	srv.stopOnce.Do(func() { close(srv.events) })
	wait := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
	}
	select {
	case <-srv.dispatchDone:
	case <-wait.Done():
		srv.log.Warn("event observer did not drain the queue in time", "queued", len(srv.events))
	}
	return err
}

// Connections returns a snapshot of the live sessions, oldest first.
func (srv *Server) Connections() []ConnState {
	srv.init()
	srv.mu.Lock()
	out := make([]ConnState, 0, len(srv.sessions))
	for s := range srv.sessions {
		if st, ok := s.state(); ok {
			out = append(out, st)
		}
	}
	srv.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ActiveConnections is the number of client sessions admitted and not yet
// ended (sessions rejected at MaxClientConnections do not count).
func (srv *Server) ActiveConnections() int { return int(srv.active.Load()) }

// DroppedEvents is the number of events dropped because the queue was full.
func (srv *Server) DroppedEvents() uint64 { return srv.dropped.Load() }

// ForgottenStatements is the number of prepared statement names the relay
// forgot because a session prepared more than it keeps (10,000): their
// later executions are reported without a text, and so without the trace
// context and tags of the text.
func (srv *Server) ForgottenStatements() uint64 { return srv.forgotten.Load() }

// emit queues e for the Observer without ever blocking.
func (srv *Server) emit(e *Event) {
	select {
	case srv.events <- e:
	default:
		srv.dropped.Add(1)
	}
}

// dispatchPause is how long the dispatcher waits, after draining the queue,
// before it looks again. While events keep coming it wakes at most once per
// pause rather than once per event: a send to the queue wakes the
// dispatcher only when it is parked on the empty queue, and every such
// wake-up costs the relay a scheduler hand-off (on a busy machine, a
// thread wake-up). An observer that keeps up sees an event at most about
// this much later.
//
// Ten milliseconds rather than one, because each pause ends in the
// runtime's search for work, which at 1 ms cost several µs of CPU per
// transaction (bench/RESULTS.md, "The dispatcher's pause"); the queue
// holds 65,536 events, far more than 10 ms of traffic.
const dispatchPause = 10 * time.Millisecond

// dispatch calls the Observer for each queued event, in queue order, until
// Shutdown closes the queue.
func (srv *Server) dispatch() {
	defer close(srv.dispatchDone)
	for e := range srv.events {
		srv.observe(e)
		// Drain what else is queued, then pause so that the events of the
		// next dispatchPause are taken in one wake-up.
		for drained := false; !drained; {
			select {
			case e, ok := <-srv.events:
				if !ok {
					return
				}
				srv.observe(e)
			default:
				drained = true
			}
		}
		time.Sleep(dispatchPause)
	}
}

func (srv *Server) observe(e *Event) {
	defer func() {
		if r := recover(); r != nil {
			srv.log.Error("event observer panicked", "event", e.Kind.String(), "panic", r)
		}
	}()
	srv.Observer.Observe(*e)
}
