package pipeline

import (
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// A statement's parent (DESIGN.md decision 5) is decided here, once, and
// the detector (N+1 groups, slow-query findings), the exporter (spans) and
// the slow-query log all read it from detector.Statement.Parent.
//
// A named prepared statement carries the trace context and the tags of the
// text it was prepared with: the relay sends that text with every
// execution. Drivers that prepare by name (asyncpg, psycopg 3 and PgJDBC
// after a few runs, pgx's statement cache) send the comment once, in the
// Parse, and a new request's traceparent makes a new text and so a new
// statement.

// texts is what the fingerprint stage made of a statement's texts: own,
// the text sent with the request (a simple Query, so for an EXECUTE the
// EXECUTE itself), and prepared, the text its prepared statement was
// defined with (a Parse's query, a PREPARE statement).
type texts struct {
	query               *fingerprint.Query
	own, prepared       fingerprint.Result
	hasOwn, hasPrepared bool
}

// analyze fingerprints st's texts. The Query of an execution of a
// statement defined by SQL PREPARE is that of the statement after AS.
func (p *Pipeline) analyze(st *wire.Statement) (a texts) {
	switch {
	case st.Protocol == wire.ProtocolFunctionCall:
		a.query = functionCallQuery
	case st.Text == "":
	case st.Protocol == wire.ProtocolSimple:
		a.own, a.hasOwn = p.cfg.Analyzer.Analyze(st.Text), true
		a.query = a.own.Query(st.Index)
		if st.PreparedText != "" {
			a.prepared, a.hasPrepared = p.cfg.Analyzer.Analyze(st.PreparedText), true
			a.query = executed(a.prepared.Query(0), st.PreparedSQL)
		}
	default:
		a.prepared, a.hasPrepared = p.cfg.Analyzer.Analyze(st.Text), true
		a.query = executed(a.prepared.Query(st.Index), st.PreparedSQL)
	}
	return a
}

// executed is the Query that ran when a prepared statement analyzed as q
// ran: the statement after AS for one defined by SQL PREPARE.
func executed(q *fingerprint.Query, sql bool) *fingerprint.Query {
	if sql && q != nil && q.Body != nil {
		return q.Body
	}
	return q
}

// tags are the sqlcommenter tags of the statement: those of its own
// comment when it has one, else those of its prepared statement's text.
func (a *texts) tags() fingerprint.Tags {
	if a.hasOwn && (hasComment(&a.own) || !a.hasPrepared) {
		return a.own.Tags
	}
	return a.prepared.Tags
}

// hasComment reports whether r's text had a comment pgtrace reads.
func hasComment(r *fingerprint.Result) bool {
	t := &r.Tags
	return r.Trace.IsValid() || r.TraceInvalid || len(t.Extra) > 0 ||
		t.Application != "" || t.Route != "" || t.Controller != "" || t.Action != "" ||
		t.Framework != "" || t.DBDriver != "" || t.Tenant != ""
}

// session is what the pipeline keeps of one client connection: whether it
// is in a transaction, by the same boundaries the exporter's transaction
// spans follow (detector.TxBoundary), and that transaction's trace context.
type session struct {
	inTx bool
	tx   fingerprint.TraceContext // the first parent a statement of the transaction had
	last time.Time                // the session's latest event
}

// sessionTTL: a session with no event for this long is forgotten (its
// ConnClosed may have been dropped by the relay's full queue).
const sessionTTL = time.Hour

// session returns the state of ev's connection, making it when new.
func (p *Pipeline) session(ev *wire.Event) *session {
	s := p.sessions[ev.Conn.ID]
	if s == nil {
		s = &session{}
		p.sessions[ev.Conn.ID] = s
	}
	s.last = ev.Time
	if ev.Time.After(p.nextSweep) {
		p.nextSweep = ev.Time.Add(time.Minute)
		for id, x := range p.sessions {
			if ev.Time.Sub(x.last) > sessionTTL {
				delete(p.sessions, id)
			}
		}
	}
	return s
}

// connEvent follows a connection event: a session that went idle left
// its transaction; a closed one is forgotten.
func (p *Pipeline) connEvent(ev *wire.Event) {
	switch ev.Kind {
	case wire.ConnClosed:
		delete(p.sessions, ev.Conn.ID)
	case wire.TxStatus:
		if s := p.sessions[ev.Conn.ID]; s != nil && ev.Conn.TxStatus == wire.TxIdle {
			s.inTx, s.tx = false, fingerprint.TraceContext{}
		}
	}
}

// parent decides the parent of st, whose Query is q and texts a, and moves
// the session's transaction on. The parent is the trace context of the
// statement's own comment, else that of the text its named statement was
// prepared with, else its transaction's, else none.
func (s *session) parent(st *wire.Statement, q *fingerprint.Query, a *texts) fingerprint.TraceContext {
	begins, ends := detector.TxBoundary(s.inTx, st, q)
	if begins {
		s.inTx, s.tx = true, fingerprint.TraceContext{}
	}
	var parent fingerprint.TraceContext
	switch {
	case a.hasOwn && a.own.Trace.IsValid():
		parent = a.own.Trace
	case a.hasPrepared && a.prepared.Trace.IsValid():
		parent = a.prepared.Trace
	case s.inTx:
		parent = s.tx
	}
	if s.inTx && !s.tx.IsValid() {
		s.tx = parent
	}
	if ends {
		s.inTx, s.tx = detector.TxChains(q) && !st.Failed(), fingerprint.TraceContext{}
	}
	return parent
}
