package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxMessageLen is the largest length a regular (post-startup) message may
// declare, counting the length field itself: 1 GiB, PostgreSQL's own limit
// for a single message (MaxAllocSize). A longer declared length is a protocol
// error (SQLSTATE 08P01).
const MaxMessageLen = 1 << 30

// frameBufSize is the per-direction read buffer. It bounds the memory of an
// idle session (two of them) and is the unit of a streamed copy; messages the
// relay must see whole and that do not fit get a temporary larger buffer.
const frameBufSize = 8 << 10

// errShortLength is returned for a message whose length field is below 4.
var errShortLength = errors.New("message length below 4")

// ProtocolError is a malformed or oversized message. The relay answers a
// client's protocol error with ErrorResponse 08P01 and closes that session.
type ProtocolError struct {
	Type byte  // message type byte; 0 for a startup packet
	Len  int64 // declared length
	Err  error // what was wrong
}

func (e *ProtocolError) Error() string {
	if e.Type == 0 {
		return fmt.Sprintf("invalid startup packet (length %d): %v", e.Len, e.Err)
	}
	return fmt.Sprintf("invalid message %q (length %d): %v", e.Type, e.Len, e.Err)
}

func (e *ProtocolError) Unwrap() error { return e.Err }

// frameObserver sees every message that passes one direction of the relay.
//
// body is the message body without the 5-byte header; it is valid only
// during the call (it aliases the relay's read buffer, which the next read
// overwrites), so an observer copies whatever it keeps. When whole is false
// the message was too large for the buffer and is being streamed: body holds
// only its first bytes, and bodyLen is the full body length.
type frameObserver interface {
	message(typ byte, body []byte, bodyLen int, whole bool) error
}

// flushObserver is a frameObserver that also wants to know when the framed
// messages have been written to dst: run calls flushed after each write of
// framed messages (and before it blocks in the next read). Work that need
// not delay the relayed bytes, such as handing events to the dispatcher,
// belongs there.
type flushObserver interface {
	flushed()
}

// relayError says which leg of one relay direction failed.
type relayError struct {
	read bool // true: reading the source; false: writing the destination
	err  error
}

func (e *relayError) Error() string {
	if e.read {
		return "read: " + e.err.Error()
	}
	return "write: " + e.err.Error()
}

func (e *relayError) Unwrap() error { return e.err }

// framer copies framed messages from src to dst, byte for byte, showing each
// one to an observer. It writes everything it has read and framed before it
// blocks in the next read, so nothing is held back, while all messages that
// arrived together (a pipeline) leave in one write.
type framer struct {
	src io.Reader
	dst io.Writer
	// whole[t] is true for message types the observer must see whole; all
	// others stream when they do not fit the buffer.
	whole *[256]bool

	// small is the session's own buffer of size bytes, made on first use
	// (ensureBuf): an event loop reads into a buffer of its own while the
	// framer holds no bytes, so an idle session holds none. buf is small,
	// a temporary larger one, or nil.
	small []byte
	size  int
	buf   []byte
	r, w  int // buf[r:w] is read but not yet framed
	fw    int // buf[fw:r] is framed but not yet written

	// midMessage is true while part of a message has been written to dst and
	// the rest has not: nothing else may be written to dst then.
	midMessage bool
	skip       int   // bytes of a streamed message still to pass through
	in         int64 // bytes read from src

	readErr relayError // run's final read error, kept here so returning it does not allocate
}

func newFramer(src io.Reader, dst io.Writer, whole *[256]bool) *framer {
	return newFramerSize(src, dst, whole, frameBufSize)
}

// newFramerSize is newFramer with a buffer of size bytes (at least 16).
func newFramerSize(src io.Reader, dst io.Writer, whole *[256]bool, size int) *framer {
	return &framer{src: src, dst: dst, whole: whole, size: max(size, 16)}
}

// ensureBuf makes the framer's own buffer if it has none, and reads into
// it when buf is unset.
func (f *framer) ensureBuf() {
	if f.small == nil {
		f.small = make([]byte, f.size)
	}
	if f.buf == nil {
		f.buf = f.small
	}
}

// run relays until an error. A read error (including io.EOF) and a write
// error come back as *relayError; a framing error as *ProtocolError; an
// observer's error as is.
func (f *framer) run(obs frameObserver) error {
	fl, _ := obs.(flushObserver)
	f.ensureBuf()
	var readErr error
	for {
		if err := f.frame(obs); err != nil {
			var pe *ProtocolError
			if errors.As(err, &pe) {
				f.flush() // forward the good messages before it
			}
			return err
		}
		if err := f.flush(); err != nil {
			return err
		}
		if fl != nil {
			fl.flushed()
		}
		if readErr != nil {
			if readErr == io.EOF && f.skip > 0 {
				readErr = io.ErrUnexpectedEOF
			}
			f.readErr = relayError{read: true, err: readErr}
			return &f.readErr
		}
		f.compact()
		n, err := f.src.Read(f.buf[f.w:])
		f.w += n
		f.in += int64(n)
		readErr = err
	}
}

// frame frames the messages in buf[r:w], showing each to obs, until it
// needs bytes it has not read. The bytes of a message too large for the
// buffer that the observer need not see whole pass through unframed (skip
// counts those still to come). framed bytes end at r, ready for flush.
func (f *framer) frame(obs frameObserver) error {
	for {
		if f.skip > 0 {
			n := min(f.skip, f.w-f.r)
			f.r += n
			f.skip -= n
			if f.skip > 0 {
				return nil
			}
			f.midMessage = false
		}
		if f.w-f.r < 5 {
			return nil
		}
		typ := f.buf[f.r]
		n := int64(int32(binary.BigEndian.Uint32(f.buf[f.r+1:])))
		if n < 4 {
			return &ProtocolError{Type: typ, Len: n, Err: errShortLength}
		}
		if n > MaxMessageLen {
			return &ProtocolError{Type: typ, Len: n, Err: fmt.Errorf("longer than the %d byte limit", MaxMessageLen)}
		}
		total := int(n) + 1
		if f.w-f.r >= total {
			if err := obs.message(typ, f.buf[f.r+5:f.r+total], total-5, true); err != nil {
				return err
			}
			f.r += total
			continue
		}
		if total <= len(f.buf) || f.r != 0 || f.w != len(f.buf) {
			return nil // the rest is still to be read
		}
		// The buffer is full of this message's prefix.
		if f.whole[typ] {
			// Grow by doubling as the bytes arrive, so a declared length
			// alone does not make the relay allocate.
			f.grow(min(total, 2*len(f.buf)))
			return nil
		}
		// Show the prefix and stream the rest.
		if err := obs.message(typ, f.buf[5:f.w], total-5, false); err != nil {
			return err
		}
		f.r, f.skip, f.midMessage = f.w, total-f.w, true
	}
}

// flush writes the framed bytes.
func (f *framer) flush() error {
	if f.fw == f.r {
		return nil
	}
	_, err := f.dst.Write(f.buf[f.fw:f.r])
	f.fw = f.r
	if err != nil {
		return &relayError{err: err}
	}
	return nil
}

// compact moves the unframed tail to the start of the buffer, returning to
// the small buffer when a temporary large one is no longer needed.
func (f *framer) compact() {
	rest := f.w - f.r
	if rest == 0 {
		f.buf = f.small
	} else if f.r > 0 {
		copy(f.buf, f.buf[f.r:f.w])
	}
	f.r, f.w, f.fw = 0, rest, 0
}

// grow replaces the buffer with a larger one of size bytes; compact goes
// back to the small buffer once the large message is framed. The buffer
// holds no framed bytes (r == 0).
func (f *framer) grow(size int) {
	nb := make([]byte, size)
	n := copy(nb, f.buf[f.r:f.w])
	f.buf, f.r, f.w, f.fw = nb, 0, n, 0
}

// copyRaw relays bytes without framing (replication sessions).
func (f *framer) copyRaw() error {
	f.ensureBuf()
	for {
		n, err := f.src.Read(f.small)
		f.in += int64(n)
		if n > 0 {
			if _, werr := f.dst.Write(f.small[:n]); werr != nil {
				return &relayError{err: werr}
			}
		}
		if err != nil {
			return &relayError{read: true, err: err}
		}
	}
}
