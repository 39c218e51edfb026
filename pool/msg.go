package pool

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// Message framing for the pooled relay: a type byte and a 4-byte length
// that counts itself, as on the wire. Messages the relay reads whole are
// kept in a buffer valid until the next read; larger ones of the types it
// need not see whole (DataRow, CopyData, a Bind's parameters) stream
// through, so that a large result does not grow the proxy's memory.

// maxMessageLen is PostgreSQL's limit for one message (1 GiB).
const maxMessageLen = 1 << 30

// streamAbove is the size above which a message that need not be seen
// whole streams.
const streamAbove = 64 << 10

// msgReader reads framed messages.
type msgReader struct {
	r   *bufio.Reader
	buf []byte
	// clean is false while a message is half read: after an error there,
	// the stream is out of step.
	clean bool
	// whole[t] is true for the message types read whole however large.
	whole *[256]bool
}

func newMsgReader(r io.Reader, whole *[256]bool) *msgReader {
	return &msgReader{r: bufio.NewReaderSize(r, 32<<10), whole: whole, clean: true}
}

// message is one message read. body is all of it when whole, else its
// first bytes; rest bytes of it are still to be read (stream).
type message struct {
	typ   byte
	body  []byte
	size  int // the body's full length
	whole bool
}

// next reads the next message. The body is valid until the next call.
func (mr *msgReader) next() (message, error) {
	var hdr [5]byte
	if n, err := io.ReadFull(mr.r, hdr[:]); err != nil {
		mr.clean = n == 0
		return message{}, err
	}
	mr.clean = false
	n := int(int32(binary.BigEndian.Uint32(hdr[1:])))
	if n < 4 || n > maxMessageLen {
		return message{}, fmt.Errorf("message %q with length %d: outside 4..%d", hdr[0], n, maxMessageLen)
	}
	size := n - 4
	m := message{typ: hdr[0], size: size, whole: true}
	take := size
	if size > streamAbove && !mr.whole[hdr[0]] {
		take, m.whole = streamAbove, false
	}
	if cap(mr.buf) < take {
		mr.buf = make([]byte, take)
	}
	m.body = mr.buf[:take]
	if _, err := io.ReadFull(mr.r, m.body); err != nil {
		return message{}, unexpected(err)
	}
	mr.clean = m.whole
	// Buffers grown for one large message are not kept.
	if cap(mr.buf) > 1<<20 {
		mr.buf = nil
	}
	return m, nil
}

// rest is the number of body bytes of m still to be read.
func (m message) rest() int { return m.size - len(m.body) }

// copyRest streams the rest of m to w.
func (mr *msgReader) copyRest(w io.Writer, m message) error {
	if m.rest() == 0 {
		return nil
	}
	_, err := io.CopyN(w, mr.r, int64(m.rest()))
	mr.clean = err == nil
	return unexpected(err)
}

// discardRest reads and drops the rest of m.
func (mr *msgReader) discardRest(m message) error {
	_, err := mr.r.Discard(m.rest())
	mr.clean = err == nil
	return unexpected(err)
}

// buffered reports whether more bytes are already read: the writer need
// not flush yet.
func (mr *msgReader) buffered() bool { return mr.r.Buffered() > 0 }

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendMsg appends a message of type typ with body to b.
func appendMsg(b []byte, typ byte, body ...[]byte) []byte {
	n := 4
	for _, p := range body {
		n += len(p)
	}
	b = append(b, typ, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	for _, p := range body {
		b = append(b, p...)
	}
	return b
}

// writeHeader writes the 5-byte header of a message of type typ with a
// body of size bytes, byte by byte: no slice to escape, no allocation.
func writeHeader(w *bufio.Writer, typ byte, size int) {
	n := size + 4
	w.WriteByte(typ)
	w.WriteByte(byte(n >> 24))
	w.WriteByte(byte(n >> 16))
	w.WriteByte(byte(n >> 8))
	w.WriteByte(byte(n))
}

// cstring splits b at its first NUL.
func cstring(b []byte) (s, rest []byte, ok bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

func wholeTypes(types ...byte) *[256]bool {
	var t [256]bool
	for _, c := range types {
		t[c] = true
	}
	return &t
}
