package detector

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// t0 is the synthetic clock's origin.
var t0 = time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC)

// query makes a fingerprint.Query for a synthetic statement.
func query(fp, normalized, op string) *fingerprint.Query {
	q := &fingerprint.Query{Fingerprint: fp, Normalized: normalized, Summary: op + " t", Operation: op}
	switch op {
	case "BEGIN":
		q.TxControl = fingerprint.TxBegin
	case "COMMIT":
		q.TxControl = fingerprint.TxCommit
	}
	if i := strings.Index(normalized, " FROM "); i >= 0 {
		q.Tables = []string{strings.Fields(normalized[i+len(" FROM "):])[0]}
	}
	return q
}

var (
	qUser   = query("a1a1a1a1a1a1a1a1", "SELECT * FROM users WHERE id = $1", "SELECT")
	qOrder  = query("b2b2b2b2b2b2b2b2", "SELECT * FROM orders WHERE id = $1", "SELECT")
	qItem   = query("c3c3c3c3c3c3c3c3", "SELECT * FROM items WHERE order_id = $1", "SELECT")
	qBegin  = query("d4d4d4d4d4d4d4d4", "BEGIN", "BEGIN")
	qCommit = query("e5e5e5e5e5e5e5e5", "COMMIT", "COMMIT")
	qSet    = query("f6f6f6f6f6f6f6f6", "SET application_name = $1", "SET")
	qPing   = query("a7a7a7a7a7a7a7a7", "SELECT $1", "SELECT") // reads no table
)

func conn(id uint64, app string) *wire.ConnInfo {
	return &wire.ConnInfo{
		ID:          id,
		ClientAddr:  netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:5%04d", id%250+1, id%10000)),
		User:        "app",
		Database:    "shop",
		Application: app,
		BackendPID:  uint32(1000 + id),
		TxStatus:    wire.TxIdle,
	}
}

func traceCtx(trace, span byte) fingerprint.TraceContext {
	var tc fingerprint.TraceContext
	for i := range tc.TraceID {
		tc.TraceID[i] = trace
	}
	for i := range tc.SpanID {
		tc.SpanID[i] = span
	}
	tc.Flags = 1
	return tc
}

// stmt builds a Statement that starts at start and lasts dur, leaving the
// connection in status tx.
func stmt(c *wire.ConnInfo, q *fingerprint.Query, start time.Time, dur time.Duration, tx byte, parent fingerprint.TraceContext) *Statement {
	return &Statement{
		Stmt: &wire.Statement{
			Text:     q.Normalized,
			Protocol: wire.ProtocolExtended,
			Start:    start,
			End:      start.Add(dur),
			Outcome:  wire.OutcomeComplete,
			Rows:     1,
			TxStatus: tx,
		},
		Conn:   c,
		Query:  q,
		Tags:   &fingerprint.Tags{},
		Parent: parent,
	}
}

// clock hands out increasing statement start times.
type clock struct{ t time.Time }

func (c *clock) next(step time.Duration) time.Time {
	c.t = c.t.Add(step)
	return c.t
}

// recorder collects the findings d's Observe, ObserveConn and Tick
// return.
type recorder struct {
	d   *Detector
	got []Finding
}

func (r *recorder) Observe(s *Statement) Verdict {
	v := r.d.Observe(s)
	r.got = append(r.got, v.Findings...)
	return v
}

func (r *recorder) ObserveConn(e wire.Event) { r.got = append(r.got, r.d.ObserveConn(e)...) }

func (r *recorder) Tick(now time.Time) { r.got = append(r.got, r.d.Tick(now)...) }

func (r *recorder) ofType(t FindingType) []Finding {
	var out []Finding
	for _, f := range r.got {
		if f.Type == t {
			out = append(out, f)
		}
	}
	return out
}
