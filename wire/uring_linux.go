package wire

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A thin io_uring: the mapped submission and completion queues, one ring
// of provided buffers, and io_uring_enter. Only what the relay loop
// (loop_uring_linux.go) uses; the layouts are the kernel's
// (include/uapi/linux/io_uring.h).
//
// The Go libraries for io_uring that exist were not taken: the ones that
// cover provided buffer rings are unmaintained since 2023, and they enter
// the ring through the scheduler's syscall path, which hands the P on at
// every wait (see uringLoop.run for why the relay avoids that).

// io_uring constants used here.
const (
	uringSetupCQSize       = 1 << 3
	uringSetupSubmitAll    = 1 << 7
	uringSetupCoopTaskrun  = 1 << 8
	uringSetupSingleIssuer = 1 << 12
	uringSetupDeferTaskrun = 1 << 13

	uringFeatSingleMmap = 1 << 0
	uringFeatExtArg     = 1 << 8

	uringOffSQRing = 0
	uringOffSQEs   = 0x10000000

	uringEnterGetEvents = 1 << 0
	uringEnterExtArg    = 1 << 3

	uringOpRead        = 22
	uringOpSend        = 26
	uringOpRecv        = 27
	uringOpAsyncCancel = 14

	sqeIOLink         = 1 << 2
	sqeBufferSelect   = 1 << 5
	sqeCQESkipSuccess = 1 << 6

	cqeFBuffer      = 1 << 0
	cqeBufferShift  = 16
	cancelAll       = 1 << 0
	cancelFD        = 1 << 1
	registerPbufRng = 22
)

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16 // buf_group with sqeBufferSelect
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	_           uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type uringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQOffsets
	cqOff                                                                  uringCQOffsets
}

type uringGetEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	minWait   uint32
	ts        uint64
}

type uringBufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	flags       uint16
	resv        [3]uint64
}

// uring is one ring. Only the thread that created it may submit
// (IORING_SETUP_SINGLE_ISSUER).
type uring struct {
	fd int

	sqHead, sqTail *uint32
	sqMask         uint32
	sqes           []uringSQE
	tail           uint32 // our SQ tail; published at enter

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []uringCQE

	ringMem, sqeMem []byte

	arg uringGetEventsArg // the timed wait's argument: in the heap, not on a moving stack
	ts  unix.Timespec
}

// uringExtraSetupFlags is or-ed into the setup flags; a test sets an
// invalid bit to make setup fail the way an old kernel or a disabled
// io_uring makes it fail.
var uringExtraSetupFlags uint32

func newURing(entries, cqEntries uint32) (*uring, error) {
	p := uringParams{
		flags: uringSetupCQSize | uringSetupSubmitAll | uringSetupCoopTaskrun |
			uringSetupSingleIssuer | uringSetupDeferTaskrun | uringExtraSetupFlags,
		cqEntries: cqEntries,
	}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &uring{fd: int(fd)}
	if p.features&uringFeatSingleMmap == 0 || p.features&uringFeatExtArg == 0 {
		r.close()
		return nil, fmt.Errorf("io_uring_setup: kernel lacks single mmap or extended wait arguments (features %#x)", p.features)
	}
	size := max(int(p.sqOff.array+p.sqEntries*4), int(p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(uringCQE{}))))
	mem, err := unix.Mmap(r.fd, uringOffSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("mmap io_uring queues: %w", err)
	}
	r.ringMem = mem
	sqeMem, err := unix.Mmap(r.fd, uringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		r.close()
		return nil, fmt.Errorf("mmap io_uring entries: %w", err)
	}
	r.sqeMem = sqeMem
	at := func(off uint32) unsafe.Pointer { return unsafe.Pointer(&mem[off]) }
	r.sqHead, r.sqTail = (*uint32)(at(p.sqOff.head)), (*uint32)(at(p.sqOff.tail))
	r.sqMask = *(*uint32)(at(p.sqOff.ringMask))
	r.tail = *r.sqTail
	array := unsafe.Slice((*uint32)(at(p.sqOff.array)), p.sqEntries)
	for i := range array {
		array[i] = uint32(i) // SQE i sits in slot i, always
	}
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&sqeMem[0])), p.sqEntries)
	r.cqHead, r.cqTail = (*uint32)(at(p.cqOff.head)), (*uint32)(at(p.cqOff.tail))
	r.cqMask = *(*uint32)(at(p.cqOff.ringMask))
	r.cqes = unsafe.Slice((*uringCQE)(at(p.cqOff.cqes)), p.cqEntries)
	return r, nil
}

func (r *uring) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.ringMem != nil {
		unix.Munmap(r.ringMem)
	}
	unix.Close(r.fd)
}

// unsubmitted is the number of SQEs the kernel has not taken yet.
func (r *uring) unsubmitted() uint32 { return r.tail - atomic.LoadUint32(r.sqHead) }

// sqe returns a zeroed SQE, submitting first when the queue is full.
func (r *uring) sqe() *uringSQE {
	for r.unsubmitted() == uint32(len(r.sqes)) {
		r.enterRaw(0, false)
	}
	e := &r.sqes[r.tail&r.sqMask]
	*e = uringSQE{}
	r.tail++
	return e
}

// enterRaw submits the queued SQEs and, when wait is set, waits up to
// rawWaitMillis for a completion, without the scheduler's syscall
// bookkeeping (see uringLoop.run). It returns the errno (ETIME when the
// wait timed out with nothing to reap).
func (r *uring) enterRaw(min uint32, wait bool) syscall.Errno {
	atomic.StoreUint32(r.sqTail, r.tail)
	flags := uintptr(0)
	var arg uintptr
	var argSize uintptr
	if wait {
		r.ts = unix.NsecToTimespec(int64(rawWaitMillis) * 1e6)
		r.arg = uringGetEventsArg{ts: uint64(uintptr(unsafe.Pointer(&r.ts)))}
		flags = uringEnterGetEvents | uringEnterExtArg
		arg, argSize = uintptr(unsafe.Pointer(&r.arg)), unsafe.Sizeof(r.arg)
	} else if min > 0 {
		flags = uringEnterGetEvents
	}
	_, _, e := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.unsubmitted()), uintptr(min), flags, arg, argSize)
	return e
}

// enterBlocking submits and waits for one completion as a scheduled
// system call, so that a loop with nothing to do holds no P.
func (r *uring) enterBlocking() syscall.Errno {
	atomic.StoreUint32(r.sqTail, r.tail)
	_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.unsubmitted()), 1, uringEnterGetEvents, 0, 0)
	return e
}

// reap calls fn for each completion that is ready and returns how many.
func (r *uring) reap(fn func(userData uint64, res int32, flags uint32)) int {
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail)
	n := 0
	for ; head != tail; head++ {
		c := &r.cqes[head&r.cqMask]
		ud, res, fl := c.userData, c.res, c.flags
		atomic.StoreUint32(r.cqHead, head+1) // the slot is free before fn may submit
		fn(ud, res, fl)
		n++
	}
	return n
}

// bufRing is a ring of provided buffers of one size, registered with a
// uring as buffer group 0: a receive that selects a buffer takes the next
// one, so sockets with nothing to read hold none.
type bufRing struct {
	ring []byte // the entries (16 bytes each); the tail overlays entry 0's last 2 bytes
	bufs []byte // n buffers of size bytes
	size int
	mask uint16
	tail uint16
}

func newBufRing(r *uring, n, size int) (*bufRing, error) {
	ring, err := unix.Mmap(-1, 0, n*16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANONYMOUS|unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("mmap buffer ring: %w", err)
	}
	bufs, err := unix.Mmap(-1, 0, n*size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANONYMOUS|unix.MAP_PRIVATE)
	if err != nil {
		unix.Munmap(ring)
		return nil, fmt.Errorf("mmap provided buffers: %w", err)
	}
	reg := uringBufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&ring[0]))), ringEntries: uint32(n)}
	if _, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerPbufRng, uintptr(unsafe.Pointer(&reg)), 1, 0, 0); e != 0 {
		unix.Munmap(ring)
		unix.Munmap(bufs)
		return nil, fmt.Errorf("register provided buffer ring: %w", e)
	}
	b := &bufRing{ring: ring, bufs: bufs, size: size, mask: uint16(n - 1)}
	for i := range n {
		b.put(i)
	}
	return b, nil
}

// buf returns buffer bid.
func (b *bufRing) buf(bid int) []byte { return b.bufs[bid*b.size : (bid+1)*b.size : (bid+1)*b.size] }

// put gives buffer bid back to the kernel.
func (b *bufRing) put(bid int) {
	e := unsafe.Pointer(&b.ring[int(b.tail&b.mask)*16])
	*(*uint64)(e) = uint64(uintptr(unsafe.Pointer(&b.bufs[bid*b.size])))
	*(*uint32)(unsafe.Add(e, 8)) = uint32(b.size)
	*(*uint16)(unsafe.Add(e, 12)) = uint16(bid)
	b.tail++
	// Publish the tail (bytes 14-15 of entry 0) with a release store of
	// the word that holds it; the other half is entry 0's bid, which only
	// this side writes.
	w := (*uint32)(unsafe.Pointer(&b.ring[12]))
	atomic.StoreUint32(w, *w&0xffff|uint32(b.tail)<<16)
}
