package wire

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzSession is a session with no connections, enough for the observers.
func fuzzSession() *session {
	return &session{srv: &Server{}}
}

func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)+4))
	return append(b, body...)
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// FuzzFramer feeds arbitrary bytes through the framer and the observers of
// either direction, with a tiny buffer so that growing and streaming are
// exercised. Whatever the input, nothing panics and the bytes forwarded are
// exactly a prefix of the bytes read.
func FuzzFramer(f *testing.F) {
	f.Add([]byte{}, false, uint8(0))
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, false, uint8(0))
	f.Add(concat(msg('Q', "select 1\x00"), msg('X', "")), false, uint8(16))
	f.Add(concat(msg('P', "s1\x00select $1\x00\x00\x00"), msg('B', "p1\x00s1\x00\x00\x00\x00\x00\x00\x00"),
		msg('E', "p1\x00\x00\x00\x00\x03"), msg('S', "")), false, uint8(20))
	f.Add(concat(msg('1', ""), msg('2', ""), msg('D', "\x00\x01\x00\x00\x00\x01x"),
		msg('s', ""), msg('C', "SELECT 1\x00"), msg('E', "SERROR\x00C22012\x00Mboom\x00\x00"), msg('Z', "I")), true, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, backend bool, bufSize uint8) {
		s := fuzzSession()
		var out bytes.Buffer
		var fr *framer
		var obs frameObserver
		if backend {
			s.ready = true
			fr = newFramerSize(bytes.NewReader(data), &out, backendWhole, int(bufSize))
			obs = &backendCopier{s: s, f: fr}
		} else {
			fr = newFramerSize(bytes.NewReader(data), &out, frontendWhole, int(bufSize))
			obs = &frontendCopier{s: s, f: fr}
		}
		fr.run(obs) // must not panic
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("forwarded %d bytes that are not a prefix of the %d read", out.Len(), len(data))
		}
	})
}

// FuzzStartup decodes arbitrary startup packets: nothing panics, and what
// decodes is consistent.
func FuzzStartup(f *testing.F) {
	startup := func(params string) []byte {
		b := make([]byte, 8, 8+len(params))
		binary.BigEndian.PutUint32(b, uint32(8+len(params)))
		binary.BigEndian.PutUint32(b[4:], 196608)
		return append(b, params...)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xf8, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}) // SSLRequest
	f.Add([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2})
	f.Add(startup("user\x00bob\x00database\x00db\x00application_name\x00app\x00\x00"))
	f.Add(startup("user\x00bob\x00replication\x00database\x00\x00"))
	f.Add(startup("user\x00bob"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := readStartup(bytes.NewReader(data)) // must not panic
		if err != nil {
			return
		}
		if len(p.raw) < minStartupLen || len(p.raw) > maxStartupLen || !bytes.HasPrefix(data, p.raw) {
			t.Fatalf("decoded a packet of %d bytes from %d", len(p.raw), len(data))
		}
		if p.code>>16 == protocolMajor3 && (p.user == "" || p.database == "") {
			t.Fatalf("StartupMessage without user or database: %+v", p)
		}
	})
}
