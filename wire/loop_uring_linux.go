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
	"unsafe"

	"golang.org/x/sys/unix"
)

// The io_uring loop (--io uring) relays plain sessions like the epoll
// loop (loop_linux.go), with the same framer and observers, but it asks
// the kernel for both legs in one system call: after framing what a
// socket delivered, the loop queues the send of those bytes to the other
// socket and, linked behind it, the next receive on the first socket;
// the io_uring_enter that submits them also waits for the next
// completion of any session. A send that completes in full posts nothing
// (IOSQE_CQE_SKIP_SUCCESS), so one relayed message batch costs one
// kernel crossing instead of epoll_wait + read + write.
//
// The receive behind a send starts only once the send has completed, so
// a socket whose bytes wait for a slow peer is not read, as in the epoll
// loop. A receive on an empty framer takes a buffer from the loop's ring
// of provided buffers when data arrives, so sockets with nothing to read
// hold no buffer; bytes that must outlive the completion (the part of a
// message still to come, small sends) move to the side's own memory.

// uringBufSize is the size of a provided buffer: the framer's unit, so
// that the part of a message left in one fits the side's own buffer.
const (
	uringBufSize   = frameBufSize
	uringSQEntries = 512
	uringCQEntries = 8192
	// uringSmallSend is the most bytes a send from a provided buffer
	// copies to the side's own small buffer, so that the provided buffer
	// goes back to the ring at once instead of when the linked receive
	// completes (for an idle session, not before its next request).
	uringSmallSend = 2 << 10
	// uringFreeOwn bounds the own buffers a loop keeps for reuse.
	uringFreeOwn = 64
)

// uringBufCount is the number of provided buffers per loop, a power of
// two; a test makes it small to run the ring dry.
var uringBufCount = 256

// uringDry counts the receives that found the ring of provided buffers
// empty and went to the framer's own buffer instead (for tests).
var uringDry atomic.Int64

// user_data of a request: the side's id (high 32 bits) and the operation.
const (
	uopRecv = iota + 1
	uopSend
	uopWake
	uopCancel
)

type uringLoop struct {
	r    *uring
	bufs *bufRing

	mu      sync.Mutex // guards adds, woken and sides (writes; the loop reads sides without it)
	adds    []*uringRelay
	woken   bool
	sides   map[uint32]*uringSide
	wakeFD  int
	wakeBuf [8]byte

	nextID  uint32
	own     [][]byte      // free own buffers (frameBufSize), reused by sides
	flushes []*uringSide  // sides whose flushed observer runs before the next wait
	relays  []*uringRelay // ended relays to release once their requests are done
}

type uringSide struct {
	id    uint32
	fd    int
	other *uringSide
	rel   *uringRelay
	f     *framer
	obs   frameObserver
	fl    flushObserver
	end   func(error) *endReason

	// recvs is 1 while a receive is outstanding (it always completes);
	// sendOnly is true while a send without a receive behind it is.
	recvs    int
	sendOnly bool
	// sending is the part of the outstanding send the loop has not seen
	// complete; sendBid is the provided buffer it reads from, or -1.
	sending []byte
	sendBid int
	sendErr error  // the send failed
	ownOnly bool   // the ring ran dry: the next receive goes to the framer's own buffer
	small   []byte // copies of small sends, so their provided buffer goes back at once
}

type uringRelay struct {
	l                *uringLoop
	client, upstream uringSide
	errc             chan<- *endReason
	why              *endReason // set when the loop ends the relay
	done             bool

	mu       sync.Mutex
	released bool
}

func (rel *uringRelay) stop() {
	rel.mu.Lock()
	defer rel.mu.Unlock()
	if !rel.released {
		unix.Shutdown(rel.client.fd, unix.SHUT_RDWR)
		unix.Shutdown(rel.upstream.fd, unix.SHUT_RDWR)
	}
}

func (rel *uringRelay) sockets() (client, upstream int) { return rel.client.fd, rel.upstream.fd }

// uringPool is the process's ring loops, started on first use.
type uringPool struct {
	once  sync.Once
	loops []*uringLoop
	err   error // why there are none
	next  atomic.Uint32
	warn  sync.Once // the fallback is logged once
}

// urings is the pool sessions use; a test swaps it for a fresh one.
var urings = &uringPool{}

// loop returns a ring loop for a new session, starting the loops on first
// use (one per two Ps, at least one), or the reason there are none.
func (p *uringPool) loop() (*uringLoop, error) {
	p.once.Do(func() {
		n := max(1, runtime.GOMAXPROCS(0)/2)
		for range n {
			l, err := startURingLoop()
			if err != nil {
				p.err = err
				return
			}
			p.loops = append(p.loops, l)
		}
	})
	if len(p.loops) == 0 {
		return nil, p.err
	}
	return p.loops[int(p.next.Add(1))%len(p.loops)], nil
}

// startURingLoop makes a ring on a thread of its own (the ring accepts
// submissions from its creating thread only) and serves it there.
func startURingLoop() (*uringLoop, error) {
	ready := make(chan error, 1)
	l := &uringLoop{sides: make(map[uint32]*uringSide)}
	go l.run(ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return l, nil
}

// startURingRelay moves the session's relay onto a ring loop, as
// startLoopRelay does for epoll; it reports false, with the session's
// connections untouched, when it cannot.
func (s *session) startURingRelay(c, u net.Conn, fe *frontendCopier, be *backendCopier, errc chan<- *endReason) bool {
	pool := urings
	l, err := pool.loop()
	if err != nil {
		pool.warn.Do(func() {
			s.srv.log.Warn("io_uring is not available here; relaying with the epoll loop instead", "err", err)
		})
		return false
	}
	cfd, ufd, err := dupPair(c, u)
	if err != nil {
		s.log.Debug("io_uring loop: cannot take the sockets", "err", err)
		return false
	}
	// The ring waits for readiness itself; a non-blocking socket would
	// make it return EAGAIN instead. The originals, which share the flag,
	// are closed below and never used again.
	unix.SetNonblock(cfd, false)
	unix.SetNonblock(ufd, false)
	rel := &uringRelay{l: l, errc: errc}
	rel.client = uringSide{fd: cfd, other: &rel.upstream, rel: rel, f: fe.f, obs: fe, end: fe.end, sendBid: -1}
	rel.upstream = uringSide{fd: ufd, other: &rel.client, rel: rel, f: be.f, obs: be, fl: be, end: be.end, sendBid: -1}
	for _, f := range []*framer{fe.f, be.f} {
		// The ring's buffers stand in for the framer's own until a
		// message straddles two receives.
		if f.r == f.w {
			f.small, f.buf = nil, nil
			f.r, f.w, f.fw = 0, 0, 0
		}
	}
	s.mu.Lock()
	s.rel = rel
	aborted := s.aborted
	s.mu.Unlock()
	if aborted {
		rel.stop()
	}
	l.add(rel)
	loopStats.sessions.Add(1)
	c.Close()
	u.Close()
	return true
}

// add hands rel to the loop goroutine.
func (l *uringLoop) add(rel *uringRelay) {
	l.mu.Lock()
	l.adds = append(l.adds, rel)
	wake := !l.woken
	l.woken = true
	l.mu.Unlock()
	if wake {
		one := [8]byte{1}
		unix.Write(l.wakeFD, one[:])
	}
}

func (l *uringLoop) run(ready chan<- error) {
	// As the epoll loop: one thread, SCHED_BATCH (see eventLoop.run).
	runtime.LockOSThread()
	fail := func(err error) {
		// Give the thread back rather than let it end with the goroutine:
		// a child process started from it with Pdeathsig (pgtest's
		// PostgreSQL) would get the signal.
		runtime.UnlockOSThread()
		ready <- err
	}
	r, err := newURing(uringSQEntries, uringCQEntries)
	if err != nil {
		fail(err)
		return
	}
	bufs, err := newBufRing(r, uringBufCount, uringBufSize)
	if err != nil {
		r.close()
		fail(err)
		return
	}
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		r.close()
		fail(fmt.Errorf("eventfd: %w", err))
		return
	}
	l.r, l.bufs, l.wakeFD = r, bufs, wfd
	unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH}, 0)
	l.armWake()
	ready <- nil
	for {
		// Run the flushed observers of the sends queued since the last
		// wait, then submit those sends and wait. As in the epoll loop,
		// the wait is raw (the P stays with the loop) while traffic
		// flows and a scheduled one after rawWaitMillis without any.
		l.runFlushes()
		var e unix.Errno
		if rawWaitMillis > 0 {
			e = r.enterRaw(1, true)
		} else {
			e = unix.ETIME
		}
		if e == unix.ETIME && r.reap(l.complete) == 0 {
			e = r.enterBlocking()
		}
		if e == unix.EINTR {
			runtime.Gosched()
		}
		r.reap(l.complete)
		l.releaseEnded()
	}
}

func (l *uringLoop) armWake() {
	e := l.r.sqe()
	e.opcode = uringOpRead
	e.fd = int32(l.wakeFD)
	e.addr = uint64(uintptr(unsafe.Pointer(&l.wakeBuf[0])))
	e.len = 8
	e.userData = uopWake
}

func (l *uringLoop) runFlushes() {
	for i, sd := range l.flushes {
		if !sd.rel.done {
			sd.fl.flushed()
		}
		l.flushes[i] = nil
	}
	l.flushes = l.flushes[:0]
}

func (l *uringLoop) join() {
	l.mu.Lock()
	adds := l.adds
	l.adds, l.woken = nil, false
	for _, rel := range adds {
		for _, sd := range []*uringSide{&rel.client, &rel.upstream} {
			l.nextID++
			sd.id = l.nextID
			l.sides[sd.id] = sd
		}
	}
	l.mu.Unlock()
	for _, rel := range adds {
		l.arm(&rel.client)
		l.arm(&rel.upstream)
	}
}

func userData(sd *uringSide, op int) uint64 { return uint64(sd.id)<<32 | uint64(op) }

// complete handles one completion.
func (l *uringLoop) complete(ud uint64, res int32, flags uint32) {
	op := int(ud & 0xff)
	bid := -1
	if flags&cqeFBuffer != 0 {
		bid = int(flags >> cqeBufferShift)
	}
	switch op {
	case uopWake:
		l.join()
		l.armWake()
		return
	case uopCancel:
		return
	}
	sd := l.sides[uint32(ud>>32)]
	if sd == nil {
		if bid >= 0 {
			l.bufs.put(bid)
		}
		return
	}
	switch op {
	case uopRecv:
		sd.recvs--
		l.received(sd, res, bid)
	case uopSend:
		l.sent(sd, res)
	}
	if sd.rel.done && sd.rel.idle() {
		l.relays = append(l.relays, sd.rel)
	}
}

// sent handles the completion of a send: one without a receive behind
// it, or a linked one that failed or was cut short (a linked send that
// completes in full posts nothing). When a send that skips its successful
// completion fails, the kernel cancels the receive linked behind it
// without posting that either (io_fail_links, REQ_F_SKIP_LINK_CQES), so
// the receive ends here.
func (l *uringLoop) sent(sd *uringSide, res int32) {
	if sd.sendOnly {
		sd.sendOnly = false
	} else {
		sd.recvs--
	}
	if res >= 0 {
		sd.sending = sd.sending[min(int(res), len(sd.sending)):]
	} else if !sd.rel.done || res != -int32(unix.ECANCELED) {
		sd.sendErr = os.NewSyscallError("send", unix.Errno(-res))
	}
	if sd.rel.done {
		return
	}
	if sd.sendErr != nil {
		l.finish(sd.rel, sd.end(&relayError{err: sd.sendErr}))
		return
	}
	if len(sd.sending) == 0 {
		l.sendDone(sd)
		sd.f.compact()
	}
	l.arm(sd) // the rest of the send, and the receive behind it
}

// copySmall copies b, at most uringSmallSend bytes, into the side's small
// buffer and returns the copy. The buffer is sized to what the side sends
// (64-byte steps) and kept: an idle session's last send holds it until
// the receive linked behind that send completes, so it should be small.
func (sd *uringSide) copySmall(b []byte) []byte {
	if len(sd.small) < len(b) {
		sd.small = make([]byte, (len(b)+63)&^63)
	}
	return sd.small[:copy(sd.small, b)]
}

// sendDone forgets a send that has completed in full.
func (l *uringLoop) sendDone(sd *uringSide) {
	sd.sending = nil
	if sd.sendBid >= 0 {
		l.bufs.put(sd.sendBid)
		sd.sendBid = -1
	}
}

// received handles the completion of a receive; the send linked before
// it, if any, has completed.
func (l *uringLoop) received(sd *uringSide, res int32, bid int) {
	l.sendDone(sd) // the linked send, if any, completed in full
	sd.ownOnly = false
	if sd.rel.done {
		if bid >= 0 {
			l.bufs.put(bid)
		}
		return
	}
	f := sd.f
	switch {
	case res == -int32(unix.ENOBUFS):
		// The ring ran dry (sends to slow peers hold its buffers):
		// receive into the side's own buffer.
		uringDry.Add(1)
		l.ownBuf(sd)
		sd.ownOnly = true
		l.arm(sd)
		return
	case res == -int32(unix.EINTR) || res == -int32(unix.EAGAIN):
		l.arm(sd)
		return
	case res < 0:
		l.finish(sd.rel, sd.end(&relayError{read: true, err: os.NewSyscallError("recv", unix.Errno(-res))}))
		return
	case res == 0:
		if bid >= 0 {
			l.bufs.put(bid)
		}
		eof := io.EOF
		if f.skip > 0 || f.w > f.r {
			eof = io.ErrUnexpectedEOF
		}
		if sd == &sd.rel.client {
			unix.Shutdown(sd.other.fd, unix.SHUT_WR) // pass the half-close on
		}
		l.finish(sd.rel, sd.end(&relayError{read: true, err: eof}))
		return
	}
	n := int(res)
	var p []byte
	if bid >= 0 {
		// The framer was empty: frame in the provided buffer itself.
		p = l.bufs.buf(bid)
		l.putOwn(f.small)
		f.small = nil
		f.buf, f.r, f.fw, f.w = p, 0, 0, n
	} else {
		f.w += n
		f.compact()
	}
	f.in += int64(n)
	ferr := f.frame(sd.obs)
	out := f.buf[f.fw:f.r]
	f.fw = f.r
	onP := p != nil && len(f.buf) > 0 && &f.buf[0] == &p[0]
	if onP {
		// Move what must outlive this completion out of the provided
		// buffer: the start of a message still to come, and a small send.
		rest := f.w - f.r
		if rest > 0 {
			own := l.ownBuf(sd)
			copy(own, p[f.r:f.w])
			f.buf, f.r, f.fw, f.w = own, 0, 0, rest
		} else {
			f.buf, f.r, f.fw, f.w = f.small, 0, 0, 0
		}
		if len(out) <= uringSmallSend {
			out = sd.copySmall(out)
			l.bufs.put(bid)
		} else {
			sd.sendBid = bid
		}
	} else if p != nil {
		l.bufs.put(bid) // the framer grew a buffer and copied it
	}
	sd.sending = out
	if ferr != nil {
		var pe *ProtocolError
		if errors.As(ferr, &pe) && len(out) > 0 {
			// Forward the good messages before it, if the socket takes
			// them now.
			if n, err := unix.SendmsgN(sd.other.fd, out, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL); err == nil {
				sd.sending = out[n:]
			}
		}
		l.finish(sd.rel, sd.end(ferr))
		return
	}
	l.arm(sd)
}

// ownBuf makes sure sd's framer has its own buffer and returns it.
func (l *uringLoop) ownBuf(sd *uringSide) []byte {
	f := sd.f
	if f.small == nil {
		if n := len(l.own); n > 0 {
			f.small, l.own[n-1] = l.own[n-1], nil
			l.own = l.own[:n-1]
		} else {
			f.small = make([]byte, frameBufSize)
		}
	}
	if f.buf == nil {
		f.buf = f.small
	}
	return f.small
}

// putOwn keeps b, an own buffer no longer used, for reuse.
func (l *uringLoop) putOwn(b []byte) {
	if b != nil && len(l.own) < uringFreeOwn {
		l.own = append(l.own, b)
	}
}

// arm queues sd's pending send, if any, and the next receive behind it.
func (l *uringLoop) arm(sd *uringSide) {
	f := sd.f
	if f.r == f.w && f.buf != nil && !sd.ownOnly && !aliases(sd.sending, f.buf) {
		// Nothing waits in the framer: give its buffer back and let the
		// receive take one from the ring.
		if !aliases(sd.sending, f.small) {
			l.putOwn(f.small)
			f.small = nil
		}
		f.buf, f.r, f.w, f.fw = nil, 0, 0, 0
	}
	empty := f.buf == nil
	if len(sd.sending) > 0 {
		e := l.r.sqe()
		e.opcode = uringOpSend
		e.fd = int32(sd.other.fd)
		e.addr = uint64(uintptr(unsafe.Pointer(&sd.sending[0])))
		e.len = uint32(len(sd.sending))
		e.opFlags = unix.MSG_WAITALL | unix.MSG_NOSIGNAL
		e.userData = userData(sd, uopSend)
		if sd.fl != nil {
			l.flushes = append(l.flushes, sd)
		}
		if !empty && f.w == len(f.buf) {
			// No room to receive into until the send is done and the
			// framer compacts: the send goes alone, with a completion.
			sd.sendOnly = true
			return
		}
		e.flags = sqeIOLink | sqeCQESkipSuccess
	}
	e := l.r.sqe()
	e.opcode = uringOpRecv
	e.fd = int32(sd.fd)
	e.userData = userData(sd, uopRecv)
	if empty {
		e.flags = sqeBufferSelect
		e.len = uringBufSize
	} else {
		room := f.buf[f.w:]
		e.addr = uint64(uintptr(unsafe.Pointer(&room[0])))
		e.len = uint32(len(room))
	}
	sd.recvs++
}

// aliases reports whether a and b share memory.
func aliases(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	a0, b0 := uintptr(unsafe.Pointer(&a[0])), uintptr(unsafe.Pointer(&b[0]))
	return a0 < b0+uintptr(cap(b)) && b0 < a0+uintptr(len(a))
}

func (rel *uringRelay) idle() bool {
	return rel.client.recvs == 0 && !rel.client.sendOnly && rel.upstream.recvs == 0 && !rel.upstream.sendOnly
}

// finish ends rel's relay: it cancels the requests still out on its
// sockets; once they have all completed, releaseEnded lets go of the
// sockets and tells the session.
func (l *uringLoop) finish(rel *uringRelay, why *endReason) {
	if rel.done {
		return
	}
	rel.done, rel.why = true, why
	for _, fd := range []int{rel.client.fd, rel.upstream.fd} {
		e := l.r.sqe()
		e.opcode = uringOpAsyncCancel
		e.fd = int32(fd)
		e.opFlags = cancelFD | cancelAll
		e.userData = uopCancel
	}
	if rel.idle() {
		l.relays = append(l.relays, rel)
	}
}

// releaseEnded hands the sockets of the relays that ended, and whose
// requests have all completed, back to their sessions.
func (l *uringLoop) releaseEnded() {
	for i, rel := range l.relays {
		l.relays[i] = nil
		if !rel.idle() || rel.released {
			continue
		}
		l.mu.Lock()
		delete(l.sides, rel.client.id)
		delete(l.sides, rel.upstream.id)
		l.mu.Unlock()
		for _, sd := range []*uringSide{&rel.client, &rel.upstream} {
			// What a failed send did not deliver goes back in front of
			// the framer's unframed bytes, where the session's error
			// reply expects it (f.buf[fw:r]).
			f := sd.f
			var rest []byte
			if f.buf != nil {
				rest = f.buf[f.r:f.w]
			}
			nb := make([]byte, 0, max(len(sd.sending)+len(rest), 16))
			nb = append(append(nb, sd.sending...), rest...)
			f.buf, f.small, f.fw, f.r, f.w = nb[:cap(nb)], nb[:cap(nb)], 0, len(sd.sending), len(nb)
			if sd.sendBid >= 0 {
				l.bufs.put(sd.sendBid)
				sd.sendBid = -1
			}
			sd.sending = nil
		}
		rel.mu.Lock()
		rel.released = true
		rel.mu.Unlock()
		other := SideUpstream
		if rel.why.side == SideUpstream {
			other = SideClient
		}
		rel.errc <- rel.why
		rel.errc <- &endReason{side: other, err: net.ErrClosed}
	}
	l.relays = l.relays[:0]
}

// uringSides is the number of sockets the ring loops hold (for tests); it
// starts the loops if no session has.
func uringSides() int {
	urings.loop() // the loops' start happens before this read
	n := 0
	for _, l := range urings.loops {
		l.mu.Lock()
		n += len(l.sides)
		l.mu.Unlock()
	}
	return n
}
