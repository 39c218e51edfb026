package wire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// countingObserver records what the framer shows it.
type countingObserver struct {
	types   []byte
	partial int // messages shown as a prefix only
	lens    []int
}

func (o *countingObserver) message(typ byte, body []byte, bodyLen int, whole bool) error {
	o.types = append(o.types, typ)
	o.lens = append(o.lens, bodyLen)
	if !whole {
		o.partial++
	} else if len(body) != bodyLen {
		panic("whole message with a short body")
	}
	return nil
}

func TestFramerForwardsExactly(t *testing.T) {
	big := strings.Repeat("q", 50_000)
	input := concat(
		msg('Q', "select 1\x00"),
		msg('Q', big+"\x00"),                  // read whole: grows the buffer
		msg('d', strings.Repeat("d", 30_000)), // streams
		msg('B', strings.Repeat("b", 20_000)), // streams
		msg('S', ""),
	)
	for _, tc := range []struct {
		name string
		r    func(io.Reader) io.Reader
	}{
		{"whole reads", func(r io.Reader) io.Reader { return r }},
		{"one byte at a time", iotest.OneByteReader},
		{"half reads", iotest.HalfReader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			f := newFramer(tc.r(bytes.NewReader(input)), &out, frontendWhole)
			var obs countingObserver
			err := f.run(&obs)
			var re *relayError
			if !errors.As(err, &re) || !re.read || !errors.Is(err, io.EOF) {
				t.Fatalf("run: %v, want read EOF", err)
			}
			if !bytes.Equal(out.Bytes(), input) {
				t.Fatalf("forwarded %d bytes, differ from the %d read", out.Len(), len(input))
			}
			if string(obs.types) != "QQdBS" || obs.lens[1] != len(big)+1 {
				t.Errorf("observed %q lens %v", obs.types, obs.lens)
			}
			if obs.partial != 2 {
				t.Errorf("%d messages streamed, want 2 (CopyData, Bind)", obs.partial)
			}
			if len(f.buf) != frameBufSize || f.in != int64(len(input)) || f.midMessage {
				t.Errorf("after the run: buffer %d bytes, in %d, midMessage %v", len(f.buf), f.in, f.midMessage)
			}
		})
	}
}

func TestFramerRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input []byte
	}{
		{"length 3", []byte{'Q', 0, 0, 0, 3}},
		{"negative", []byte{'Q', 0x80, 0, 0, 0}},
		{"over the limit", []byte{'Q', 0x40, 0, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			// A good message first: it is forwarded, the bad one is not.
			in := concat(msg('S', ""), tc.input, []byte("trailing"))
			err := newFramer(bytes.NewReader(in), &out, frontendWhole).run(&countingObserver{})
			var pe *ProtocolError
			if !errors.As(err, &pe) || pe.Type != 'Q' {
				t.Fatalf("run: %v, want a ProtocolError", err)
			}
			if !bytes.Equal(out.Bytes(), msg('S', "")) {
				t.Errorf("forwarded %q", out.Bytes())
			}
		})
	}
}
