package wire

// TestStressTracking is a randomized differential test of the statement
// events against a real server. Each of several connections sends random
// mixes of what drivers send — pgx in every query mode, batches with
// failing statements and CopyFrom, and raw pipelines of Parse, Bind,
// Describe, Execute (with row limits), Close, Flush and Sync, COPY in both
// protocols with and without waiting for CopyInResponse, CopyFail, errors
// mid-pipeline, deferred constraints, transactions and savepoints,
// FunctionCall and NOTIFY — while a tap on its connection records every
// message each way. A model derives from that record alone, using the
// server's own answers, the events the relay must emit; after each step
// they must match exactly, and the session must not be left active.
//
// STRESS_SEED (default 1), STRESS_ITERS (steps per connection, 300) and
// STRESS_CONNS (4) widen it; STRESS_FULL=1 prints the whole wire record of
// a failing connection rather than its last steps.

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ---------------------------------------------------------------------------
// Client-side wire model: a tap on the pgx connection sees every byte the
// client sends and receives and derives the statement events the proxy
// should emit from what the client observed.

type expEv struct {
	proto     Protocol
	text      string
	checkText bool
	index     int
	portal    string
	outcome   Outcome
	tag       string
	rows      int64
	state     string
	tx        byte
	last      bool
	copy      bool
	fetches   int
}

func (e expEv) String() string {
	return fmt.Sprintf("{p%d %q idx=%d portal=%q out=%d tag=%q rows=%d state=%q tx=%c last=%v copy=%v fetches=%d}",
		e.proto, e.text, e.index, e.portal, e.outcome, e.tag, e.rows, e.state, e.tx, e.last, e.copy, e.fetches)
}

func gotEv(s Statement) expEv {
	tx := s.TxStatus
	if tx == 0 {
		tx = '0'
	}
	return expEv{proto: s.Protocol, text: s.Text, index: s.Index, portal: s.PortalName, outcome: s.Outcome,
		tag: s.CommandTag, rows: s.Rows, state: s.SQLState, tx: tx, last: s.LastInBatch, copy: s.Copy, fetches: s.Fetches}
}

type mreq struct {
	kind     byte
	seq      int
	text     string // Query, Parse
	name     string // Parse, Close: statement/portal name; Execute: portal
	stmt     string // Bind: statement
	nstmts   int    // Query: statements in it
	closeTy  byte
	sendText *string // Execute: the text the send-time name maps give (what the proxy knows)
}

type portalBinding struct {
	stmt string
	text string
}

type model struct {
	mu          sync.Mutex
	on          bool
	queue       []*mreq
	seq         int
	copyingIn   bool
	copyEnds    []int
	stmts       map[string]string
	portals     map[string]portalBinding
	rows        int64
	copy        bool
	index       int
	batch       []expEv
	done        []expEv
	counts      map[string]int
	trace       []string
	anomalies   []string
	rfqs        int
	sentStmts   map[string]string // send-time view, as the proxy keeps it
	sentPortals map[string]string
	// suspended are the statements of portals that an Execute left
	// suspended, oldest first: they go on at the portal's next Execute.
	suspended []expEv
}

func newModel() *model {
	return &model{sentStmts: map[string]string{}, sentPortals: map[string]string{}, stmts: map[string]string{}, portals: map[string]portalBinding{}, counts: map[string]int{}}
}

func (m *model) noteCount(q string, n int) {
	m.mu.Lock()
	m.counts[q] = n
	m.mu.Unlock()
}

func (m *model) head() *mreq {
	if len(m.queue) == 0 {
		return nil
	}
	return m.queue[0]
}

func (m *model) pop() { m.queue = m.queue[1:] }

func (m *model) anomaly(f string, a ...any) {
	m.anomalies = append(m.anomalies, fmt.Sprintf(f, a...))
}

func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// sent handles one frontend message.
func (m *model) sent(typ byte, body []byte) {
	r := &mreq{kind: typ}
	switch typ {
	case 'Q':
		var q pgproto3.Query
		q.Decode(body)
		r.text = q.String
		r.nstmts = 1
		if n, ok := m.counts[q.String]; ok {
			r.nstmts = n
		}
		m.trace = append(m.trace, fmt.Sprintf("> Query %q", short(q.String)))
	case 'P':
		var p pgproto3.Parse
		p.Decode(body)
		r.name, r.text = p.Name, p.Query
		m.sentStmts[p.Name] = p.Query
		m.trace = append(m.trace, fmt.Sprintf("> Parse %q %q", p.Name, short(p.Query)))
	case 'B':
		var b pgproto3.Bind
		b.Decode(body)
		r.name, r.stmt = b.DestinationPortal, b.PreparedStatement
		if t, ok := m.sentStmts[b.PreparedStatement]; ok {
			m.sentPortals[b.DestinationPortal] = t
		} else {
			delete(m.sentPortals, b.DestinationPortal)
		}
		m.trace = append(m.trace, fmt.Sprintf("> Bind %q<-%q nparams=%d", b.DestinationPortal, b.PreparedStatement, len(b.Parameters)))
	case 'D':
		var d pgproto3.Describe
		d.Decode(body)
		r.name = d.Name
		m.trace = append(m.trace, fmt.Sprintf("> Describe %c %q", d.ObjectType, d.Name))
	case 'E':
		var e pgproto3.Execute
		e.Decode(body)
		r.name = e.Portal
		if t, ok := m.sentPortals[e.Portal]; ok {
			r.sendText = &t
		}
		m.trace = append(m.trace, fmt.Sprintf("> Execute %q max=%d", e.Portal, e.MaxRows))
	case 'C':
		var c pgproto3.Close
		c.Decode(body)
		r.name, r.closeTy = c.Name, c.ObjectType
		if c.ObjectType == 'S' {
			delete(m.sentStmts, c.Name)
		} else {
			delete(m.sentPortals, c.Name)
		}
		m.trace = append(m.trace, fmt.Sprintf("> Close %c %q", c.ObjectType, c.Name))
	case 'F':
		m.trace = append(m.trace, "> FunctionCall")
	case 'S':
		m.trace = append(m.trace, "> Sync")
		if m.copyingIn {
			m.trace = append(m.trace, "  (sync ignored: copy-in)")
			return
		}
	case 'c', 'f':
		if typ == 'c' {
			m.trace = append(m.trace, "> CopyDone")
		} else {
			m.trace = append(m.trace, "> CopyFail")
		}
		if m.copyingIn {
			m.copyingIn = false
		} else {
			m.copyEnds = append(m.copyEnds, m.seq)
		}
		return
	case 'd':
		m.trace = append(m.trace, fmt.Sprintf("> CopyData %q", short(string(body))))
		return
	case 'H':
		m.trace = append(m.trace, "> Flush")
		return
	default:
		m.trace = append(m.trace, fmt.Sprintf("> %c", typ))
		return
	}
	r.seq = m.seq
	m.seq++
	m.queue = append(m.queue, r)
}

func (m *model) event(e expEv) {
	e.copy = m.copy
	m.copy = false
	m.rows = 0
	m.batch = append(m.batch, e)
}

// execEvent ends an Execute of portal r.name: the statement of a portal
// suspended earlier goes on, and one that ends suspended waits.
func (m *model) execEvent(r *mreq, outcome Outcome, tag string, rows int64, state string, checkText bool) {
	e := expEv{proto: ProtocolExtended, portal: r.name, outcome: outcome, tag: tag, rows: rows, state: state, fetches: 1}
	if pb, ok := m.portals[r.name]; ok && checkText {
		e.text, e.checkText = pb.text, true
	}
	if prev, ok := m.takeSuspended(r.name); ok {
		prev.fetches++
		prev.outcome, prev.tag, prev.state = outcome, tag, state
		prev.rows += rows
		e = prev
	}
	if outcome == OutcomeSuspended {
		m.copy, m.rows = false, 0
		m.suspended = append(m.suspended, e)
		return
	}
	m.event(e)
}

func (m *model) takeSuspended(portal string) (expEv, bool) {
	for i, e := range m.suspended {
		if e.portal == portal {
			m.suspended = append(m.suspended[:i], m.suspended[i+1:]...)
			return e, true
		}
	}
	return expEv{}, false
}

// endPortal ends the statement of portal, if suspended: replaced or closed.
func (m *model) endPortal(portal string) {
	if e, ok := m.takeSuspended(portal); ok {
		m.batch = append(m.batch, e)
	}
}

func (m *model) finish(outcome Outcome, tag string, state string) {
	h := m.head()
	if h == nil {
		m.anomaly("completion with empty queue")
		return
	}
	var rows int64
	switch outcome {
	case OutcomeComplete:
		rows = tagRows([]byte(tag))
	case OutcomeSuspended:
		rows = m.rows
	}
	switch h.kind {
	case 'Q':
		if m.index == 0 {
			m.endPortal("") // a Query replaces the unnamed portal
		}
		m.event(expEv{proto: ProtocolSimple, text: h.text, checkText: true, index: m.index, outcome: outcome, tag: tag, rows: rows, state: state})
		m.index++
	case 'E':
		m.pop()
		m.execEvent(h, outcome, tag, rows, state, true)
	case 'F':
		m.event(expEv{proto: ProtocolFunctionCall, checkText: true, outcome: outcome, tag: tag, rows: rows, state: state})
	default:
		m.anomaly("completion with head %c", h.kind)
	}
}

func (m *model) failLast(state string) {
	if len(m.batch) == 0 {
		return
	}
	l := &m.batch[len(m.batch)-1]
	l.outcome, l.tag, l.rows, l.state = OutcomeError, "", 0, state
}

// recv handles one backend message.
func (m *model) recv(typ byte, body []byte) {
	switch typ {
	case 'D':
		m.rows++
		return
	case 'N', 'A', 'S', 'K', 't', 'd':
		return
	}
	h := m.head()
	switch typ {
	case '1':
		m.trace = append(m.trace, "< ParseComplete")
		if h == nil || h.kind != 'P' {
			m.anomaly("ParseComplete without Parse")
			return
		}
		m.stmts[h.name] = h.text
		m.pop()
	case '2':
		m.trace = append(m.trace, "< BindComplete")
		if h == nil || h.kind != 'B' {
			m.anomaly("BindComplete without Bind")
			return
		}
		m.portals[h.name] = portalBinding{h.stmt, m.stmts[h.stmt]}
		m.endPortal(h.name)
		m.pop()
	case '3':
		m.trace = append(m.trace, "< CloseComplete")
		if h == nil || h.kind != 'C' {
			m.anomaly("CloseComplete without Close")
			return
		}
		if h.closeTy == 'S' {
			delete(m.stmts, h.name)
		} else {
			delete(m.portals, h.name)
			m.endPortal(h.name)
		}
		m.pop()
	case 'T', 'n':
		if h != nil && h.kind == 'D' {
			m.pop()
		}
	case 'C':
		var c pgproto3.CommandComplete
		c.Decode(body)
		m.trace = append(m.trace, fmt.Sprintf("< CommandComplete %q", c.CommandTag))
		m.finish(OutcomeComplete, string(c.CommandTag), "")
	case 'I':
		m.trace = append(m.trace, "< EmptyQueryResponse")
		m.finish(OutcomeEmpty, "", "")
	case 's':
		m.trace = append(m.trace, fmt.Sprintf("< PortalSuspended (%d rows)", m.rows))
		m.finish(OutcomeSuspended, "", "")
	case 'V':
		m.trace = append(m.trace, "< FunctionCallResponse")
		m.finish(OutcomeComplete, "", "")
	case 'H', 'W':
		m.trace = append(m.trace, "< CopyOutResponse")
		m.copy = true
	case 'c':
		m.trace = append(m.trace, "< CopyDone")
	case 'G':
		m.trace = append(m.trace, "< CopyInResponse")
		m.copy = true
		if h == nil {
			m.anomaly("CopyInResponse with empty queue")
			return
		}
		for len(m.copyEnds) > 0 && m.copyEnds[0] <= h.seq {
			m.copyEnds = m.copyEnds[1:]
		}
		end := int(^uint(0) >> 1)
		if len(m.copyEnds) > 0 {
			end, m.copyEnds = m.copyEnds[0], m.copyEnds[1:]
		} else {
			m.copyingIn = true
		}
		q := m.queue[:1]
		for _, r := range m.queue[1:] {
			if r.kind == 'S' && r.seq < end {
				continue
			}
			q = append(q, r)
		}
		m.queue = q
	case 'E':
		var e pgproto3.ErrorResponse
		e.Decode(body)
		m.trace = append(m.trace, fmt.Sprintf("< ErrorResponse %s %s", e.Code, short(e.Message)))
		m.copyingIn = false
		if h == nil {
			m.anomaly("error with empty queue")
			return
		}
		switch h.kind {
		case 'Q':
			if m.index >= h.nstmts && len(m.batch) > 0 {
				// Every statement completed: the implicit commit failed.
				m.failLast(e.Code)
				return
			}
			m.finish(OutcomeError, "", e.Code)
			return
		case 'F':
			m.finish(OutcomeError, "", e.Code)
			return
		case 'S':
			m.failLast(e.Code)
			return
		}
		// Extended: the failing request is the head; the server skips to Sync.
		var exec *mreq
		for _, r := range m.queue {
			if r.kind == 'S' {
				break
			}
			if r.kind == 'E' {
				exec = r
				break
			}
		}
		switch {
		case exec != nil && exec == h:
			switch e.Code {
			case "34000", "26000", "08P01":
				m.execEvent(h, OutcomeError, "", 0, e.Code, false)
			default:
				m.execEvent(h, OutcomeError, "", 0, e.Code, true)
			}
		case exec != nil:
			m.execEvent(exec, OutcomeError, "", 0, e.Code, false)
		case h.kind == 'P':
			m.event(expEv{proto: ProtocolExtended, text: h.text, checkText: true, outcome: OutcomeError, state: e.Code})
		}
		if h.kind == 'P' && h.name == "" {
			delete(m.stmts, "")
		}
		for len(m.queue) > 0 && m.queue[0].kind != 'S' {
			m.pop()
		}
	case 'Z':
		var z pgproto3.ReadyForQuery
		z.Decode(body)
		m.trace = append(m.trace, fmt.Sprintf("< ReadyForQuery %c", z.TxStatus))
		m.rfqs++
		for len(m.queue) > 0 {
			r := m.queue[0]
			m.pop()
			if r.kind == 'Q' {
				delete(m.stmts, "")
				delete(m.portals, "")
			}
			if r.kind == 'S' || r.kind == 'Q' || r.kind == 'F' {
				break
			}
		}
		if z.TxStatus != 'T' {
			m.portals = map[string]portalBinding{}
		}
		if z.TxStatus == 'I' {
			// The transaction ended, and its portals with it.
			m.batch = append(m.suspended, m.batch...)
			m.suspended = nil
		}
		for i := range m.batch {
			m.batch[i].tx = z.TxStatus
			m.batch[i].last = i == len(m.batch)-1
		}
		m.done = append(m.done, m.batch...)
		m.batch = nil
		m.index = 0
	default:
		m.trace = append(m.trace, fmt.Sprintf("< %c", typ))
	}
}

// pendingAnswers: requests still awaiting a ReadyForQuery.
func (m *model) busy() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.queue {
		if r.kind == 'S' || r.kind == 'Q' || r.kind == 'F' {
			return true
		}
	}
	return false
}

// framer splits a byte stream into messages.
type splitter struct {
	buf []byte
}

func (s *splitter) feed(b []byte, f func(typ byte, body []byte)) {
	s.buf = append(s.buf, b...)
	for len(s.buf) >= 5 {
		n := int(binary.BigEndian.Uint32(s.buf[1:5]))
		if len(s.buf) < 1+n {
			return
		}
		f(s.buf[0], append([]byte(nil), s.buf[5:1+n]...))
		s.buf = s.buf[1+n:]
	}
}

type tapConn struct {
	net.Conn
	m       *model
	in, out splitter
}

func (c *tapConn) Write(b []byte) (int, error) {
	c.m.mu.Lock()
	if c.m.on {
		c.out.feed(b, c.m.sent)
	}
	c.m.mu.Unlock()
	return c.Conn.Write(b)
}

func (c *tapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.m.mu.Lock()
		if c.m.on {
			c.in.feed(b[:n], c.m.recv)
		}
		c.m.mu.Unlock()
	}
	return n, err
}

// ---------------------------------------------------------------------------
// The generator.

type stressConn struct {
	t   *testing.T
	p   *proxy
	c   *pgx.Conn
	m   *model
	rnd *rand.Rand
	pid uint32
	ctx context.Context
	log []string
	n   int // named statements created

	marks     []int
	base, got int // RFQs the tap had seen when the op began; RFQs the op received raw
}

func (s *stressConn) receive(fe *pgproto3.Frontend) pgproto3.BackendMessage {
	msg, err := fe.Receive()
	if err != nil {
		s.t.Fatalf("receive: %v\n%s", err, s.dump())
	}
	if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
		s.got++
	}
	return msg
}

func (s *stressConn) seen() int {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	return s.m.rfqs
}

func (p *proxy) stressConnect(t *testing.T, ctx context.Context) (*pgx.Conn, *model) {
	cfg, err := pgx.ParseConfig(p.dsn(p.pg.User, p.pg.Password))
	if err != nil {
		t.Fatal(err)
	}
	m := newModel()
	var d net.Dialer
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &tapConn{Conn: c, m: m}, nil
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, m
}

var singles = []string{
	"select 1",
	"select g from generate_series(1,5) g",
	"select g from generate_series(1,12) g",
	"select 1/0",
	"select nope",
	"selec 1",
	"insert into t values (1, 'x')",
	"insert into t select g, 'y' from generate_series(1,3) g",
	"update t set v = 'z' where id < 2",
	"delete from t where id > 2",
	"insert into u values (7)",
	"insert into c values (500)",
	"begin",
	"commit",
	"rollback",
	"savepoint s1",
	"rollback to savepoint s1",
	"release savepoint s1",
	"set application_name = 'stress'",
	"do $$begin raise notice 'hi'; end$$",
	"notify ch",
	"listen ch",
	"values (1),(2),(3)",
	"copy (select g from generate_series(1,3) g) to stdout",
	"select * from t",
	"",
}

func (s *stressConn) pick() string { return singles[s.rnd.Intn(len(singles))] }

// multi builds a multi-statement query; n is its statement count for the model.
func (s *stressConn) multi() (string, int) {
	k := 1 + s.rnd.Intn(4)
	var parts []string
	n := 0
	for i := 0; i < k; i++ {
		q := s.pick()
		if q == "" {
			if s.rnd.Intn(2) == 0 {
				parts = append(parts, " ")
			}
			continue
		}
		parts = append(parts, q)
		n++
	}
	q := strings.Join(parts, "; ")
	if n == 0 {
		n = 1
	}
	return q, n
}

func (s *stressConn) logf(f string, a ...any) { s.log = append(s.log, fmt.Sprintf(f, a...)) }

func (s *stressConn) deadline() {
	s.c.PgConn().Conn().SetDeadline(time.Now().Add(10 * time.Second))
}

// drain reads backend messages until the model says nothing awaits an answer.
func (s *stressConn) drain(fe *pgproto3.Frontend) {
	s.deadline()
	defer s.c.PgConn().Conn().SetDeadline(time.Time{})
	for s.m.busy() || s.got < s.seen()-s.base {
		s.receive(fe)
	}
}

// until reads until f says stop; it returns the message that stopped it.
func (s *stressConn) until(fe *pgproto3.Frontend, f func(pgproto3.BackendMessage) bool) {
	s.deadline()
	defer s.c.PgConn().Conn().SetDeadline(time.Time{})
	for {
		if f(s.receive(fe)) {
			return
		}
	}
}

func (s *stressConn) flush(fe *pgproto3.Frontend) {
	if err := fe.Flush(); err != nil {
		s.t.Fatalf("flush: %v", err)
	}
}

func (s *stressConn) dump() string {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	tr := s.m.trace
	if os.Getenv("STRESS_FULL") == "" && len(s.marks) > 2 {
		tr = tr[s.marks[len(s.marks)-2]:]
	}
	return "ops:\n  " + strings.Join(s.log[max(0, len(s.log)-8):], "\n  ") + "\nwire (last):\n  " + strings.Join(tr, "\n  ")
}

func (s *stressConn) opSimplePgx() {
	q, n := s.multi()
	s.m.noteCount(q, n)
	s.logf("pgx simple exec %q", q)
	s.c.Exec(s.ctx, q, pgx.QueryExecModeSimpleProtocol)
}

var modes = []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec}

func (s *stressConn) opExtPgx() {
	q := s.pick()
	mode := modes[s.rnd.Intn(len(modes))]
	s.logf("pgx exec %q mode %v", q, mode)
	if s.rnd.Intn(3) == 0 {
		rows, err := s.c.Query(s.ctx, q, mode)
		if err == nil {
			if rows.Next() && s.rnd.Intn(2) == 0 {
				rows.Close()
			}
			for rows.Next() {
			}
			rows.Close()
		}
		return
	}
	s.c.Exec(s.ctx, q, mode)
}

func (s *stressConn) opBatch() {
	b := &pgx.Batch{}
	k := 1 + s.rnd.Intn(5)
	var qs []string
	for i := 0; i < k; i++ {
		q := s.pick()
		if q == "" || strings.HasPrefix(q, "copy") {
			q = "select 2"
		}
		if s.rnd.Intn(4) == 0 {
			q = "select $1::int"
			b.Queue(q, s.rnd.Intn(100))
		} else {
			b.Queue(q)
		}
		qs = append(qs, q)
	}
	mode := modes[s.rnd.Intn(len(modes))]
	s.logf("pgx batch %q mode %v", qs, mode)
	br := s.c.SendBatch(s.ctx, b)
	_ = mode
	for range qs {
		if _, err := br.Exec(); err != nil {
			s.logf("  batch err %v", err)
			if s.rnd.Intn(2) == 0 {
				break
			}
		}
	}
	s.logf("  batch close %v", br.Close())
}

func (s *stressConn) opCopyFrom() {
	tbl := "t"
	rows := [][]any{}
	k := s.rnd.Intn(5)
	for i := 0; i < k; i++ {
		rows = append(rows, []any{int32(i), "r"})
	}
	cols := []string{"id", "v"}
	switch s.rnd.Intn(4) {
	case 0:
		tbl, cols = "c", []string{"x"}
		rows = [][]any{{int32(1)}, {int32(500)}}
	case 1:
		tbl = "nonexist"
	}
	s.logf("pgx CopyFrom %s %d rows", tbl, len(rows))
	s.c.CopyFrom(s.ctx, pgx.Identifier{tbl}, cols, pgx.CopyFromRows(rows))
}

// opPipeline sends several extended batches without waiting, then reads.
func (s *stressConn) opPipeline() {
	fe := s.c.PgConn().Frontend()
	nb := 1 + s.rnd.Intn(3)
	if s.rnd.Intn(4) == 0 {
		s.logf("  begin first")
		fe.Send(&pgproto3.Query{String: "begin"})
	}
	s.logf("raw pipeline %d batches", nb)
	for b := 0; b < nb; b++ {
		if s.rnd.Intn(6) == 0 {
			// Fetch more of a portal an earlier batch may have left
			// suspended (in a transaction), or fail on one that is gone.
			portal := "pt" + strconv.Itoa(s.rnd.Intn(3))
			if s.rnd.Intn(3) == 0 {
				portal = ""
			}
			fe.Send(&pgproto3.Execute{Portal: portal, MaxRows: uint32(1 + s.rnd.Intn(3))})
		}
		k := 1 + s.rnd.Intn(3)
		for i := 0; i < k; i++ {
			q := s.pick()
			if strings.HasPrefix(q, "copy") && !strings.Contains(q, "stdout") {
				q = "select 3"
			}
			name := ""
			if s.rnd.Intn(3) == 0 {
				s.n++
				name = "st" + strconv.Itoa(s.n)
			}
			if s.rnd.Intn(8) == 0 && s.n > 0 {
				// Reuse an older named statement.
				name = "st" + strconv.Itoa(1+s.rnd.Intn(s.n))
			} else if s.rnd.Intn(10) == 0 && s.n > 0 {
				// Re-parse an older name with new text (42P05 unless closed).
				name = "st" + strconv.Itoa(1+s.rnd.Intn(s.n))
				fe.Send(&pgproto3.Parse{Name: name, Query: q})
			} else {
				fe.Send(&pgproto3.Parse{Name: name, Query: q})
			}
			if s.rnd.Intn(3) == 0 {
				fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: name})
			}
			portal := ""
			if s.rnd.Intn(3) == 0 {
				portal = "pt" + strconv.Itoa(s.rnd.Intn(3))
			}
			var params [][]byte
			if s.rnd.Intn(10) == 0 {
				params = [][]byte{[]byte("1")} // bind error for most statements
			}
			if s.rnd.Intn(12) != 0 {
				fe.Send(&pgproto3.Bind{DestinationPortal: portal, PreparedStatement: name, Parameters: params})
			}
			if s.rnd.Intn(3) == 0 {
				fe.Send(&pgproto3.Describe{ObjectType: 'P', Name: portal})
			}
			if s.rnd.Intn(4) == 0 {
				fe.Send(&pgproto3.Execute{Portal: portal, MaxRows: uint32(1 + s.rnd.Intn(4))})
				if s.rnd.Intn(2) == 0 {
					fe.Send(&pgproto3.Execute{Portal: portal})
				}
			} else if s.rnd.Intn(10) != 0 {
				fe.Send(&pgproto3.Execute{Portal: portal})
			}
			if s.rnd.Intn(6) == 0 {
				fe.Send(&pgproto3.Close{ObjectType: 'P', Name: portal})
			}
			if s.rnd.Intn(10) == 0 && name != "" {
				fe.Send(&pgproto3.Close{ObjectType: 'S', Name: name})
			}
			if s.rnd.Intn(6) == 0 {
				fe.Send(&pgproto3.Flush{})
			}
		}
		if s.rnd.Intn(10) != 0 {
			fe.Send(&pgproto3.Sync{})
		} else {
			fe.Send(&pgproto3.Flush{})
			s.flush(fe)
			// Without a Sync nothing comes back for sure; add one now.
			fe.Send(&pgproto3.Sync{})
		}
		if s.rnd.Intn(5) == 0 {
			fe.Send(&pgproto3.Sync{}) // empty Sync
		}
	}
	s.flush(fe)
	s.drain(fe)
}

func (s *stressConn) opSimpleRaw() {
	fe := s.c.PgConn().Frontend()
	k := 1 + s.rnd.Intn(3)
	s.logf("raw simple x%d", k)
	for i := 0; i < k; i++ {
		q, n := s.multi()
		if s.rnd.Intn(8) == 0 {
			q, n = ";", 1
		}
		s.m.noteCount(q, n)
		fe.Send(&pgproto3.Query{String: q})
	}
	s.flush(fe)
	s.drain(fe)
}

func isCopyIn(m pgproto3.BackendMessage) bool {
	switch m.(type) {
	case *pgproto3.CopyInResponse, *pgproto3.ReadyForQuery:
		return true
	}
	return false
}

func (s *stressConn) copyPayload(fe *pgproto3.Frontend, started bool) string {
	var data string
	switch s.rnd.Intn(4) {
	case 0:
		data = "not a number\tx\n"
	default:
		data = "1\ta\n2\tb\n"
	}
	fe.Send(&pgproto3.CopyData{Data: []byte(data)})
	if started && data[0] == 'n' && s.rnd.Intn(2) == 0 {
		// Let the server fail the COPY before the copy end arrives.
		s.flush(fe)
		s.until(fe, func(m pgproto3.BackendMessage) bool {
			_, ok := m.(*pgproto3.ErrorResponse)
			_, rfq := m.(*pgproto3.ReadyForQuery)
			return ok || rfq
		})
		s.logf("  (waited for the copy error)")
	}
	if s.rnd.Intn(5) == 0 {
		fe.Send(&pgproto3.CopyFail{Message: "client gave up"})
		return "fail"
	}
	fe.Send(&pgproto3.CopyDone{})
	return "done"
}

func (s *stressConn) copyQuery() string {
	switch s.rnd.Intn(5) {
	case 0:
		return "copy nonexist from stdin"
	default:
		return "copy t from stdin"
	}
}

func (s *stressConn) opCopySimple() {
	fe := s.c.PgConn().Frontend()
	q := s.copyQuery()
	n := 1
	if s.rnd.Intn(3) == 0 {
		pre := s.pick()
		if pre != "" && !strings.HasPrefix(pre, "copy") {
			q = pre + "; " + q + "; select 4"
			n = 3
		}
	}
	s.m.noteCount(q, n)
	wait := s.rnd.Intn(2) == 0
	pipelined := false
	if s.rnd.Intn(3) == 0 {
		pre, n := s.multi()
		if !strings.Contains(pre, "stdin") {
			s.m.noteCount(pre, n)
			s.logf("  pipelined %q before the copy", pre)
			fe.Send(&pgproto3.Query{String: pre})
			pipelined = true
		}
	}
	fe.Send(&pgproto3.Query{String: q})
	s.flush(fe)
	started := false
	if wait {
		if pipelined {
			s.until(fe, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok })
		}
		var got pgproto3.BackendMessage
		s.until(fe, func(m pgproto3.BackendMessage) bool { got = m; return isCopyIn(m) })
		_, started = got.(*pgproto3.CopyInResponse)
		if !started && s.rnd.Intn(2) == 0 {
			s.logf("raw simple copy %q wait: no copy-in, stop", q)
			return
		}
	}
	how := s.copyPayload(fe, started)
	s.logf("raw simple copy %q wait=%v %s", q, wait, how)
	if s.rnd.Intn(3) == 0 {
		s.logf("  pipelined select after the copy")
		s.m.noteCount("select 6", 1)
		fe.Send(&pgproto3.Query{String: "select 6"})
	}
	s.flush(fe)
	s.drain(fe)
}

func (s *stressConn) opCopyExt() {
	fe := s.c.PgConn().Frontend()
	q := s.copyQuery()
	pipelined := s.rnd.Intn(3) == 0
	if pipelined {
		pre := s.pick()
		if strings.HasPrefix(pre, "copy") && !strings.Contains(pre, "stdout") {
			pre = "select 5"
		}
		s.logf("  pipelined %q before the copy", pre)
		fe.Send(&pgproto3.Parse{Query: pre})
		fe.Send(&pgproto3.Bind{})
		fe.Send(&pgproto3.Execute{})
		fe.Send(&pgproto3.Sync{})
	}
	fe.Send(&pgproto3.Parse{Query: q})
	fe.Send(&pgproto3.Bind{})
	if s.rnd.Intn(2) == 0 {
		fe.Send(&pgproto3.Describe{ObjectType: 'P'})
	}
	fe.Send(&pgproto3.Execute{})
	syncFirst := s.rnd.Intn(3) != 0 // libpq sends a Sync right behind the Execute
	if syncFirst {
		fe.Send(&pgproto3.Sync{})
	} else {
		fe.Send(&pgproto3.Flush{})
	}
	s.flush(fe)
	wait := s.rnd.Intn(2) == 0
	started := false
	if wait {
		if pipelined {
			s.until(fe, func(m pgproto3.BackendMessage) bool { _, ok := m.(*pgproto3.ReadyForQuery); return ok })
		}
		var got pgproto3.BackendMessage
		stop := func(m pgproto3.BackendMessage) bool {
			got = m
			if _, ok := m.(*pgproto3.ErrorResponse); ok && !syncFirst {
				return true
			}
			return isCopyIn(m)
		}
		s.until(fe, stop)
		_, started = got.(*pgproto3.CopyInResponse)
		if !started && s.rnd.Intn(2) == 0 {
			s.logf("raw ext copy %q syncFirst=%v wait: no copy-in, stop", q, syncFirst)
			if !syncFirst {
				fe.Send(&pgproto3.Sync{})
				s.flush(fe)
			}
			s.drain(fe)
			return
		}
	}
	how := s.copyPayload(fe, started)
	fe.Send(&pgproto3.Sync{})
	s.logf("raw ext copy %q syncFirst=%v wait=%v %s", q, syncFirst, wait, how)
	s.flush(fe)
	s.drain(fe)
}

func (s *stressConn) opDeferred() {
	fe := s.c.PgConn().Frontend()
	v := strconv.Itoa(s.rnd.Intn(1000000))
	switch s.rnd.Intn(3) {
	case 0:
		q := "insert into u values (" + v + "),(" + v + ")"
		s.logf("raw ext deferred commit failure %q", q)
		fe.Send(&pgproto3.Parse{Query: q})
		fe.Send(&pgproto3.Bind{})
		fe.Send(&pgproto3.Execute{})
		fe.Send(&pgproto3.Sync{})
	case 1:
		q := "select 1; insert into u values (" + v + "),(" + v + ")"
		s.m.noteCount(q, 2)
		s.logf("raw simple deferred commit failure %q", q)
		fe.Send(&pgproto3.Query{String: q})
	case 2:
		s.logf("function call")
		fe.Send(&pgproto3.FunctionCall{Function: 2026}) // pg_backend_pid
	}
	s.flush(fe)
	s.drain(fe)
}

func (s *stressConn) step() {
	ops := []func(){s.opSimplePgx, s.opExtPgx, s.opBatch, s.opCopyFrom, s.opPipeline, s.opSimpleRaw,
		s.opCopySimple, s.opCopyExt, s.opDeferred}
	s.base, s.got = s.seen(), 0
	s.m.mu.Lock()
	s.marks = append(s.marks, len(s.m.trace))
	s.m.mu.Unlock()
	ops[s.rnd.Intn(len(ops))]()
	if s.rnd.Intn(6) == 0 {
		_, err := s.c.Exec(s.ctx, "rollback", pgx.QueryExecModeSimpleProtocol)
		s.logf("rollback: %v", err)
	}
}

// check compares the proxy's events with the model's.
func (s *stressConn) check() bool {
	if s.c.IsClosed() {
		s.t.Errorf("client connection closed\n%s", s.dump())
		return false
	}
	s.m.mu.Lock()
	want := append([]expEv(nil), s.m.done...)
	anomalies := s.m.anomalies
	s.m.mu.Unlock()
	if len(anomalies) > 0 {
		s.t.Errorf("model anomalies: %v\n%s", anomalies, s.dump())
		return false
	}
	var got []Statement
	deadline := time.Now().Add(2 * time.Second)
	for {
		s.p.rec.mu.Lock()
		got = stmts(s.p.rec.events, s.pid)
		s.p.rec.mu.Unlock()
		if len(got) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	bad := len(got) != len(want)
	first := -1
	for i := 0; i < min(len(got), len(want)); i++ {
		g, w := gotEv(got[i]), want[i]
		if !w.checkText {
			g.text = w.text
		}
		w.checkText = false
		if w.proto == ProtocolExtended {
			g.index = 0
		}
		if g != w {
			bad, first = true, i
			break
		}
	}
	if bad {
		var b strings.Builder
		lo := max(0, min(len(got), len(want))-6)
		if first >= 0 {
			lo = max(0, first-3)
		}
		fmt.Fprintf(&b, "events differ (got %d want %d) first diff at %d\n", len(got), len(want), first)
		for i := lo; i < max(len(got), len(want)) && i < lo+12; i++ {
			var gs, ws string
			if i < len(got) {
				gs = gotEv(got[i]).String()
			}
			if i < len(want) {
				ws = want[i].String()
			}
			fmt.Fprintf(&b, "%3d got  %s\n    want %s\n", i, gs, ws)
		}
		s.m.mu.Lock()
		os.WriteFile(fmt.Sprintf("/tmp/stress-trace-%d.txt", s.pid), []byte(strings.Join(s.m.trace, "\n")), 0o644)
		s.m.mu.Unlock()
		s.t.Errorf("%s%s", b.String(), s.dump())
		return false
	}
	for _, cs := range s.p.Connections() {
		if cs.BackendPID == s.pid && cs.State == "active" {
			s.t.Errorf("session state active when idle\n%s", s.dump())
			return false
		}
	}
	return true
}

func TestStressTracking(t *testing.T) {
	seed := int64(1)
	if v := os.Getenv("STRESS_SEED"); v != "" {
		seed, _ = strconv.ParseInt(v, 10, 64)
	}
	iters := 300
	if v := os.Getenv("STRESS_ITERS"); v != "" {
		iters, _ = strconv.Atoi(v)
	}
	conns := 4
	if v := os.Getenv("STRESS_CONNS"); v != "" {
		conns, _ = strconv.Atoi(v)
	}
	t.Logf("seed %d iters %d conns %d", seed, iters, conns)
	p := startProxy(t, pgtest.Start(t), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for ci := 0; ci < conns; ci++ {
		wg.Add(1)
		go func(ci int) {
			defer wg.Done()
			c, m := p.stressConnect(t, ctx)
			s := &stressConn{t: t, p: p, c: c, m: m, rnd: rand.New(rand.NewSource(seed + int64(ci))), pid: c.PgConn().PID(), ctx: ctx}
			m.mu.Lock()
			m.on = true
			m.mu.Unlock()
			setup := "create temp table t(id int, v text); create temp table u(x int unique deferrable initially deferred); create temp table c(x int check (x < 100))"
			m.noteCount(setup, 3)
			if _, err := c.Exec(ctx, setup, pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Errorf("setup: %v", err)
				return
			}
			for i := 0; i < iters; i++ {
				s.step()
				if !s.check() {
					t.Logf("conn %d failed at iteration %d (seed %d)", ci, i, seed)
					return
				}
			}
			st := map[string]int{}
			for _, e := range m.done {
				st[fmt.Sprintf("p%d/o%d/copy=%v/err=%v", e.proto, e.outcome, e.copy, e.state != "")]++
			}
			t.Logf("conn %d: %d events %v", ci, len(m.done), st)
		}(ci)
	}
	wg.Wait()
}
