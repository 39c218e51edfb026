package wire

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loop relays the steady state of plain (TCP or Unix socket)
// sessions, the way PgBouncer does: a few goroutines each wait on an epoll
// set for all their sessions' sockets and, when one is readable, read it
// once, frame what arrived and write it on, with no goroutine hand-off in
// between. The per-session copier goroutines cost a netpoll wake-up, a
// scheduler hand-off and an extra read that finds nothing for every message
// batch; on a virtual machine, where each of those is a costly trap, that
// doubled the relay's CPU per round trip (bench/RESULTS.md).
//
// A session joins a loop after its startup packet went upstream and leaves
// it at its first end (EOF, error, protocol error), when the loop hands the
// sockets back to the session goroutine as net.Conns for the error replies
// and the closing, exactly as after the copier goroutines. Sessions with TLS
// on either side and replication sessions keep the copier goroutines.
//
// This is the relay of --io epoll, and of --io uring where io_uring cannot
// be set up; the io_uring loop (loop_uring_linux.go) follows the same
// rules with other system calls.

// eventLoop is one epoll set and the goroutine that serves it.
type eventLoop struct {
	ep    int
	mu    sync.Mutex // guards sides
	sides map[int32]*loopSide
	// scratch is where a side whose framer holds no bytes reads: what
	// must stay after the read (the start of a message still to come,
	// bytes the other socket did not take) moves to the framer's own
	// buffer, so an idle session holds no buffer. Loop goroutine only.
	scratch []byte
	own     [][]byte // own buffers given back, for reuse (at most loopFreeOwn)
}

// loopFreeOwn bounds the own buffers a loop keeps for reuse.
const loopFreeOwn = 64

// loopSide is one socket of a session in a loop and the direction that
// reads it.
type loopSide struct {
	fd    int
	other *loopSide // the session's other socket: where this side's messages go
	rel   *loopRelay
	f     *framer // buffer and framing state; its src and dst are unused
	obs   frameObserver
	fl    flushObserver // obs, when it wants flushed calls
	end   func(error) *endReason
	// waiting is true while framed bytes wait for the other socket to take
	// them: this socket is not read until they have gone.
	waiting bool
	// hungUp is true when the socket hung up while waiting: it is no longer
	// polled, and once the waiting bytes have gone it is read to its end.
	hungUp bool
}

// loopRelay is one session in a loop.
type loopRelay struct {
	l                *eventLoop
	client, upstream loopSide
	errc             chan<- *endReason
	done             bool // the loop has ended the relay (loop goroutine only)

	mu       sync.Mutex
	released bool // the loop no longer uses the sockets: the session owns them
}

// loopStats counts, for tests, the sessions the loops took and the times a
// side had to wait for the other socket to take its bytes.
var loopStats struct{ sessions, waits atomic.Int64 }

var (
	loopsOnce sync.Once
	loops     []*eventLoop
	loopsErr  error
	loopNext  atomic.Uint32
)

// nextLoop returns a loop for a new session, starting the loops on first
// use: one per two Ps, at least one.
func nextLoop() (*eventLoop, error) {
	loopsOnce.Do(func() {
		n := max(1, runtime.GOMAXPROCS(0)/2)
		for range n {
			ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			if err != nil {
				loopsErr = fmt.Errorf("epoll_create1: %w", err)
				return
			}
			l := &eventLoop{ep: ep, sides: make(map[int32]*loopSide), scratch: make([]byte, frameBufSize)}
			loops = append(loops, l)
			go l.run()
		}
	})
	if loopsErr != nil && len(loops) == 0 {
		return nil, loopsErr
	}
	return loops[int(loopNext.Add(1))%len(loops)], nil
}

// startLoopRelay moves the session's relay onto an event loop when both of
// its connections are plain sockets (TCP or Unix, not TLS). It reports
// false when the session must use the copier goroutines; then the
// session's connections are untouched. The loop sends two end reasons on
// errc, the first one the real one, after it has let go of the sockets;
// takeBack must run before the session touches its connections again.
func (s *session) startLoopRelay(fe *frontendCopier, be *backendCopier, errc chan<- *endReason) bool {
	mode := s.srv.ioMode()
	if s.replication || mode == IOGoroutines {
		return false
	}
	s.mu.Lock()
	c, u := s.client, s.upstream
	s.mu.Unlock()
	if !plainSocket(c) || !plainSocket(u) {
		return false
	}
	if mode == IOURing && s.startURingRelay(c, u, fe, be, errc) {
		return true
	}
	l, err := nextLoop()
	if err != nil {
		s.log.Debug("event loop unavailable; relaying with goroutines", "err", err)
		return false
	}
	cfd, ufd, err := dupPair(c, u)
	if err != nil {
		s.log.Debug("event loop: cannot take the sockets", "err", err)
		return false
	}
	rel := &loopRelay{l: l, errc: errc}
	rel.client = loopSide{fd: cfd, other: &rel.upstream, rel: rel, f: fe.f, obs: fe, end: fe.end}
	rel.upstream = loopSide{fd: ufd, other: &rel.client, rel: rel, f: be.f, obs: be, fl: be, end: be.end}
	if err := l.add(rel); err != nil {
		unix.Close(cfd)
		unix.Close(ufd)
		s.log.Debug("event loop: register sockets", "err", err)
		return false
	}
	// From here the loop owns the duplicates; the originals leave Go's
	// poller so that it is not woken for the loop's sockets.
	s.mu.Lock()
	s.rel = rel
	aborted := s.aborted // abort closed the originals before it could see rel
	s.mu.Unlock()
	if aborted {
		rel.stop()
	}
	loopStats.sessions.Add(1)
	c.Close()
	u.Close()
	return true
}

func (rel *loopRelay) sockets() (client, upstream int) { return rel.client.fd, rel.upstream.fd }

// takeBack gives the session its connections back once the loop has ended
// the relay (after the first receive from errc).
func (s *session) takeBack(rel relayLoop) {
	cfd, ufd := rel.sockets()
	c := fdConn(cfd)
	u := fdConn(ufd)
	s.mu.Lock()
	s.client, s.upstream = c, u
	aborted := s.aborted
	s.mu.Unlock()
	if aborted {
		// abort closed the old connections before these existed.
		c.Close()
		u.Close()
	}
}

// stop makes the loop end the relay soon (forced shutdown): shutting the
// sockets down makes them readable with EOF.
func (rel *loopRelay) stop() {
	rel.mu.Lock()
	defer rel.mu.Unlock()
	if !rel.released {
		unix.Shutdown(rel.client.fd, unix.SHUT_RDWR)
		unix.Shutdown(rel.upstream.fd, unix.SHUT_RDWR)
	}
}

// plainSocket reports whether c is a TCP or Unix socket, which the loop can
// take over.
func plainSocket(c net.Conn) bool {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
		return true
	}
	return false
}

// dupFD returns a close-on-exec duplicate of c's socket; c is one that
// plainSocket accepts.
func dupFD(c net.Conn) (int, error) {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

// dupPair returns duplicates of the client's and the upstream's sockets
// (dupFD), or neither.
func dupPair(c, u net.Conn) (cfd, ufd int, err error) {
	if cfd, err = dupFD(c); err != nil {
		return -1, -1, fmt.Errorf("take client socket: %w", err)
	}
	if ufd, err = dupFD(u); err != nil {
		unix.Close(cfd)
		return -1, -1, fmt.Errorf("take upstream socket: %w", err)
	}
	return cfd, ufd, nil
}

// fdConn wraps a socket the loop let go of in a net.Conn again and closes
// fd; when that fails the conn is one whose every call fails.
func fdConn(fd int) net.Conn {
	f := os.NewFile(uintptr(fd), "socket")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		a, b := net.Pipe()
		b.Close()
		return a
	}
	return c
}

func (l *eventLoop) add(rel *loopRelay) error {
	l.mu.Lock()
	l.sides[int32(rel.client.fd)] = &rel.client
	l.sides[int32(rel.upstream.fd)] = &rel.upstream
	l.mu.Unlock()
	for _, sd := range []*loopSide{&rel.client, &rel.upstream} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(sd.fd)}
		if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, sd.fd, &ev); err != nil {
			l.remove(rel)
			return fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	return nil
}

// remove takes rel's sockets out of the loop.
func (l *eventLoop) remove(rel *loopRelay) {
	l.mu.Lock()
	delete(l.sides, int32(rel.client.fd))
	delete(l.sides, int32(rel.upstream.fd))
	l.mu.Unlock()
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, rel.client.fd, nil)
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, rel.upstream.fd, nil)
}

// rawWaitMillis is how long a loop waits for events without giving up its
// P (see run); 0 when there is only one P, which the loop must not hold.
//
// Ten milliseconds, not one: an epoll_wait that blocks arms a kernel timer
// for its timeout, and a timeout shorter than the timers the CPU already
// has (the scheduler tick) makes the kernel reprogram the clock at each
// wait and again when the wait ends early, which on a virtual machine is
// a trap each time. With one client, which makes the loop wait twice per
// transaction, a 1 ms timeout cost the loop 3-5 µs more CPU per
// transaction than a 10 or 50 ms one (by hand, 2026-11-26, per-thread CPU
// under pgbench -S -c 1; bench/RESULTS.md). The runtime's sysmon preempts
// a goroutine that has run for 10 ms anyway.
var rawWaitMillis = func() int {
	if runtime.GOMAXPROCS(0) > 1 {
		return 10
	}
	return 0
}()

func (l *eventLoop) run() {
	// The loop keeps one thread, scheduled as SCHED_BATCH: the kernel then
	// does not let it preempt the thread that woke it (a backend that just
	// answered, a client that just asked), so readiness piles up and one
	// wake-up serves several sessions, as PgBouncer's single thread ends
	// up doing. On the 2-vCPU VMs measured (bench/RESULTS.md) that cut the
	// loop's context switches per transaction by about a third. An
	// unprivileged process may make this change; if it fails, the loop
	// runs as it is.
	runtime.LockOSThread()
	unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH}, 0)
	events := make([]unix.EpollEvent, 128)
	for {
		// While traffic flows, wait in a raw epoll_wait that keeps this
		// goroutine's P: a scheduled syscall that blocks makes the runtime
		// hand the P on and take one back (thread wake-ups that cost more
		// than the relaying), and keeps sysmon polling. After
		// rawWaitMillis without traffic, wait as an ordinary syscall so an
		// idle loop holds no P. The runtime's preemption signal interrupts
		// the raw wait (EINTR), so a stop-the-world never waits on it.
		n, err := 0, error(nil)
		if rawWaitMillis > 0 {
			n, err = rawEpollWait(l.ep, events, rawWaitMillis)
		}
		if n == 0 && err == nil {
			n, err = unix.EpollWait(l.ep, events, -1)
		}
		if err != nil {
			if err == unix.EINTR {
				// Most likely the runtime's preemption signal: yield
				// here, since the raw wait has no preemption point.
				runtime.Gosched()
				continue
			}
			// Not expected with a valid epoll fd and buffer; keep serving.
			continue
		}
		for i := range n {
			l.handle(events[i].Fd, events[i].Events)
		}
	}
}

// handle serves one readiness event. Events may be stale (for a socket
// whose session has ended, or whose number a new session reuses): every
// step tolerates a socket with nothing to read or nothing to write.
func (l *eventLoop) handle(fd int32, ev uint32) {
	l.mu.Lock()
	sd := l.sides[fd]
	l.mu.Unlock()
	if sd == nil || sd.rel.done {
		return
	}
	// Writable: the other side's bytes that were waiting can go.
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) != 0 && sd.other.waiting {
		if err := l.flush(sd.other); err != nil {
			l.finish(sd.rel, sd.other.end(err))
			return
		}
		if !sd.other.waiting && sd.other.hungUp {
			l.drain(sd.other)
			if sd.rel.done {
				return
			}
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return
	}
	if sd.waiting {
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 && !sd.hungUp {
			// The peer hung up (a backend that answered a Terminate and
			// exited, say) while this socket's bytes wait for the other
			// one. What it sent before is still there to read, so the
			// relay goes on: stop polling the socket, since epoll reports
			// a hang-up whatever it is asked for, and read it to its end
			// once the waiting bytes have gone.
			sd.hungUp = true
			unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, sd.fd, nil)
		}
		return
	}
	l.read(sd)
}

// drain reads a socket that hung up (see loopSide.hungUp) and passes what
// it still held on, until its end or until the other socket is full again.
func (l *eventLoop) drain(sd *loopSide) {
	for !sd.rel.done && !sd.waiting {
		in := sd.f.in
		l.read(sd)
		if !sd.rel.done && !sd.waiting && sd.f.in == in {
			// Nothing to read and no end: not a socket that hung up
			// after all. It is no longer polled, so end here.
			l.finish(sd.rel, sd.end(&relayError{read: true, err: errHangUp}))
		}
	}
}

// errHangUp is the read error of a socket that hung up and then had
// neither bytes nor an end to read.
var errHangUp = errors.New("connection hung up")

// read reads sd's socket once, frames what arrived and writes it on.
func (l *eventLoop) read(sd *loopSide) {
	f := sd.f
	f.compact()
	shared := f.r == f.w
	if shared {
		// Nothing held: read into the loop's buffer.
		l.putOwn(f)
		f.buf, f.r, f.w, f.fw = l.scratch, 0, 0, 0
	}
	why := l.readOnce(sd)
	if shared {
		// Before finish: the session reads the framer once it has its
		// sockets back.
		l.unshare(f)
	} else if why == nil && f.fw == f.w && !sd.waiting {
		// Everything went: give the own buffer back.
		l.putOwn(f)
		f.buf, f.r, f.w, f.fw = nil, 0, 0, 0
	}
	if why != nil {
		l.finish(sd.rel, why)
	}
}

// readOnce is read's read, framing and write; it returns why the relay
// ends, or nil.
func (l *eventLoop) readOnce(sd *loopSide) *endReason {
	f := sd.f
	if f.w == len(f.buf) {
		// frame grows or streams a message that fills the buffer, so this
		// cannot happen; end the session rather than spin.
		return sd.end(&relayError{read: true, err: errors.New("relay buffer full")})
	}
	n, err := rawRead(sd.fd, f.buf[f.w:])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return nil
	case err != nil:
		return sd.end(&relayError{read: true, err: os.NewSyscallError("read", err)})
	case n == 0:
		eof := io.EOF
		if f.skip > 0 || f.w > f.r {
			eof = io.ErrUnexpectedEOF
		}
		if sd == &sd.rel.client {
			// Pass the client's half-close on, as the copier does.
			unix.Shutdown(sd.other.fd, unix.SHUT_WR)
		}
		return sd.end(&relayError{read: true, err: eof})
	}
	f.w += n
	f.in += int64(n)
	if err := f.frame(sd.obs); err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			l.flush(sd) // forward the good messages before it, if the socket takes them now
		}
		return sd.end(err)
	}
	if err := l.flush(sd); err != nil {
		return sd.end(err)
	}
	return nil
}

// unshare moves what the framer holds out of the loop's buffer into its
// own: the bytes not yet written (buf[fw:r]) and those not yet framed
// (buf[r:w]). Both come from one read into the loop's buffer, so they fit
// an own buffer of the same size, unless frame grew a buffer of its own.
func (l *eventLoop) unshare(f *framer) {
	if len(f.buf) == 0 || &f.buf[0] != &l.scratch[0] {
		return // frame replaced it with a larger one, which the framer keeps
	}
	if f.fw == f.w {
		f.buf, f.r, f.w, f.fw = nil, 0, 0, 0
		return
	}
	if f.small == nil {
		if n := len(l.own); n > 0 {
			f.small, l.own[n-1] = l.own[n-1], nil
			l.own = l.own[:n-1]
		} else {
			f.small = make([]byte, f.size)
		}
	}
	n := copy(f.small, f.buf[f.fw:f.w])
	f.buf, f.r, f.w, f.fw = f.small, f.r-f.fw, n, 0
}

// putOwn takes the framer's own buffer back for reuse.
func (l *eventLoop) putOwn(f *framer) {
	if f.small != nil && len(f.small) == frameBufSize && len(l.own) < loopFreeOwn {
		l.own = append(l.own, f.small)
	}
	f.small = nil
}

// flush writes sd's framed bytes to the other socket. When the socket
// takes only part, sd waits: its socket is not read, and the loop watches
// the other one for room.
func (l *eventLoop) flush(sd *loopSide) error {
	f := sd.f
	for f.fw < f.r {
		n, err := rawWrite(sd.other.fd, f.buf[f.fw:f.r])
		if n > 0 {
			f.fw += n
		}
		switch {
		case err == nil || err == unix.EINTR:
		case err == unix.EAGAIN:
			if !sd.waiting {
				loopStats.waits.Add(1)
				sd.waiting = true
				l.watch(sd.rel)
			}
			return nil
		default:
			return &relayError{err: os.NewSyscallError("write", err)}
		}
	}
	if sd.waiting {
		sd.waiting = false
		l.watch(sd.rel)
	}
	if sd.fl != nil {
		sd.fl.flushed()
	}
	return nil
}

// watch sets what the loop waits for on rel's sockets: readable unless the
// socket's bytes are waiting, writable while the other socket's are.
func (l *eventLoop) watch(rel *loopRelay) {
	for _, sd := range []*loopSide{&rel.client, &rel.upstream} {
		var ev uint32
		if !sd.waiting {
			ev |= unix.EPOLLIN
		}
		if sd.other.waiting {
			ev |= unix.EPOLLOUT
		}
		e := unix.EpollEvent{Events: ev, Fd: int32(sd.fd)}
		unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, sd.fd, &e)
	}
}

// finish ends rel's relay: the loop lets go of its sockets and sends the
// session the reason, and a second one standing for the other direction.
func (l *eventLoop) finish(rel *loopRelay, why *endReason) {
	if rel.done {
		return
	}
	rel.done = true
	l.remove(rel)
	rel.mu.Lock()
	rel.released = true
	rel.mu.Unlock()
	other := SideUpstream
	if why.side == SideUpstream {
		other = SideClient
	}
	rel.errc <- why
	rel.errc <- &endReason{side: other, err: net.ErrClosed}
}

// rawRead and rawWrite are read(2) and write(2) on a non-blocking socket,
// which return at once, so they skip the scheduler's syscall bookkeeping.
func rawRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// rawEpollWait is epoll_wait(2), made as epoll_pwait with no signal mask:
// arm64 has no epoll_wait system call.
func rawEpollWait(ep int, events []unix.EpollEvent, msec int) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}
