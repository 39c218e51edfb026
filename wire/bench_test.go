package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// errBatchDone ends one framer run in the benchmarks: the reader has
// delivered its batch.
var errBatchDone = errors.New("batch done")

// batchReader delivers data in as few Reads as the buffer allows, then
// errBatchDone until reset.
type batchReader struct {
	data []byte
	off  int
}

func (r *batchReader) reset() { r.off = 0 }

func (r *batchReader) Read(p []byte) (int, error) {
	if r.off == len(r.data) {
		return 0, errBatchDone
	}
	n := copy(p, r.data[r.off:])
	r.off += n
	return n, nil
}

// benchSession is a session whose events go to a discarding observer, as
// in production.
func benchSession(b *testing.B) *session {
	srv := &Server{Observer: ObserverFunc(func(Event) {}), Upstream: "bench:5432"}
	srv.init()
	b.Cleanup(func() { srv.stopOnce.Do(func() { close(srv.events) }) })
	return &session{srv: srv, log: srv.log, ready: true}
}

// benchRelay runs request/response round trips through both directions'
// framers and observers: one client read and one upstream read each.
func benchRelay(b *testing.B, setup, request, response []byte) {
	s := benchSession(b)
	feR, beR := &batchReader{data: setup}, &batchReader{}
	fe := &frontendCopier{s: s, f: newFramer(feR, io.Discard, frontendWhole)}
	be := &backendCopier{s: s, f: newFramer(beR, io.Discard, backendWhole)}
	fe.f.run(fe)
	s.reqs = requestQueue{}
	feR.data, beR.data = request, response
	feR.reset()
	b.SetBytes(int64(len(request) + len(response)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		feR.reset()
		beR.reset()
		if err := fe.f.run(fe); !errors.Is(err, errBatchDone) {
			b.Fatal(err)
		}
		if err := be.f.run(be); !errors.Is(err, errBatchDone) {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if s.statements.Load() != int64(b.N) {
		b.Fatalf("%d statements for %d round trips", s.statements.Load(), b.N)
	}
}

const benchSQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"

// BenchmarkRelayPrepared is pgbench -S -M prepared: Bind/Execute/Sync
// against BindComplete/DataRow/CommandComplete/ReadyForQuery.
func BenchmarkRelayPrepared(b *testing.B) {
	setup := msg('P', "P0_1\x00"+benchSQL+"\x00\x00\x00")
	req := concat(
		msg('B', "\x00P0_1\x00\x00\x00\x00\x01\x00\x00\x00\x0512345\x00\x00"),
		msg('E', "\x00\x00\x00\x00\x00"),
		msg('S', ""))
	resp := concat(msg('2', ""), msg('D', "\x00\x01\x00\x00\x00\x04-123"), msg('C', "SELECT 1\x00"), msg('Z', "I"))
	benchRelay(b, setup, req, resp)
}

// BenchmarkRelayExtended is pgbench -S -M extended: an unnamed Parse of the
// same text each time.
func BenchmarkRelayExtended(b *testing.B) {
	req := concat(
		msg('P', "\x00"+benchSQL+"\x00\x00\x00"),
		msg('B', "\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0512345\x00\x00"),
		msg('D', "P\x00"),
		msg('E', "\x00\x00\x00\x00\x00"),
		msg('S', ""))
	resp := concat(msg('1', ""), msg('2', ""), msg('T', "\x00\x01abalance\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"),
		msg('D', "\x00\x01\x00\x00\x00\x04-123"), msg('C', "SELECT 1\x00"), msg('Z', "I"))
	benchRelay(b, nil, req, resp)
}

// BenchmarkRelaySimple is pgbench -S -M simple with a repeated text.
func BenchmarkRelaySimple(b *testing.B) {
	req := msg('Q', "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\x00")
	resp := concat(msg('T', "\x00\x01abalance\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"),
		msg('D', "\x00\x01\x00\x00\x00\x04-123"), msg('C', "SELECT 1\x00"), msg('Z', "I"))
	benchRelay(b, nil, req, resp)
}

// BenchmarkRelayRows streams a result of 200 rows of 100 bytes per upstream
// read: the DataRow hot path.
func BenchmarkRelayRows(b *testing.B) {
	req := msg('Q', "select repeat('x', 100) from generate_series(1, 200)\x00")
	row := msg('D', "\x00\x01\x00\x00\x00\x64"+string(bytes.Repeat([]byte{'x'}, 100)))
	resp := concat(bytes.Repeat(row, 200), msg('C', "SELECT 200\x00"), msg('Z', "I"))
	benchRelay(b, nil, req, resp)
}
