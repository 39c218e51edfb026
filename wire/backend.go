package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The upstream → client direction: the backendCopier forwards each message
// as it came and, as the answers arrive, pops the requests they complete
// (queue.go) and finishes the statements, which it holds for the
// ReadyForQuery that gives their transaction status and then hands to the
// dispatcher once their bytes have gone to the client.

// maxHeld caps the finished statements held back for the ReadyForQuery that
// gives their TxStatus; beyond it they leave early with TxStatus 0.
const maxHeld = 1024

// maxSuspended caps the portals per session held open between Executes
// (see Statement.Fetches); beyond it a suspended portal is reported at
// once, as a statement of its own.
const maxSuspended = 256

// backendCopier relays upstream → client and finishes the statements.
type backendCopier struct {
	s *session
	f *framer

	rows    int64 // DataRows of the statement in progress
	copy    bool  // the statement in progress ran a COPY
	out     int64 // bytes received since the previous statement ended
	index   int   // statements finished in the current Query
	lastEnd time.Time
	lastTag string // the previous command tag, reused when it repeats
	// lastText is the Text of the previous statement, for the later
	// statements of a multi-statement Query.
	lastText string
	held     []*stmtEvent
	// suspended are the portals whose last Execute ended in
	// PortalSuspended, by portal name: the statement goes on at the
	// portal's next Execute (see Statement.Fetches).
	suspended map[string]*stmtEvent
	// outbox holds the events made while framing the current read, stamped
	// (Time, Conn) in wire order; flushed sends them once the messages that
	// made them have been written to the client, so handing them to the
	// dispatcher (which may wake it) never delays the relayed bytes.
	outbox   []*Event
	fatalErr *ServerError // the last FATAL/PANIC the upstream sent
}

func newBackendCopier(s *session) *backendCopier {
	return &backendCopier{s: s, f: newFramer(s.upstream, s.client, backendWhole)}
}

// copyFromBackend is the upstream → client relay goroutine.
func (bc *backendCopier) copyFromBackend(errc chan<- *endReason) {
	var err error
	if bc.s.replication {
		err = bc.f.copyRaw()
	} else {
		err = bc.f.run(bc)
	}
	errc <- bc.end(err)
}

// end says how the upstream → client direction ended with err.
func (bc *backendCopier) end(err error) *endReason {
	r := &endReason{side: SideUpstream, err: err}
	var re *relayError
	var pe *ProtocolError
	switch {
	case errors.As(err, &pe):
		r.err = fmt.Errorf("invalid message from upstream: %w", err)
		r.lost = true
	case errors.As(err, &re) && !re.read:
		r.side = SideClient // the client is gone
	case bc.s.terminating.Load():
		r.side, r.err = SideClient, nil // the upstream closed after Terminate
	case bc.fatalErr != nil:
		r.err = bc.fatalErr // the upstream said why before it closed
	default:
		r.lost = true // the upstream died without a word
	}
	return r
}

func (bc *backendCopier) message(typ byte, body []byte, bodyLen int, whole bool) error {
	bc.out += int64(bodyLen) + 5
	switch typ {
	case beDataRow:
		bc.rows++
	case beRowDescription, beNoData:
		bc.s.popIf(pendDescribe)
	case beParseComplete:
		bc.s.popIf(pendParse)
	case beBindComplete:
		bc.popPortal(pendBind)
	case beCloseComplete:
		bc.popPortal(pendClose)
	case beCommandComplete:
		tag, _, _ := cstring(body)
		bc.finish(OutcomeComplete, tag, nil)
	case beEmptyQueryResponse:
		bc.finish(OutcomeEmpty, nil, nil)
	case bePortalSuspended:
		bc.finish(OutcomeSuspended, nil, nil)
	case beFunctionCallResponse:
		bc.finish(OutcomeComplete, nil, nil)
	case beCopyInResponse:
		bc.copy = true
		bc.s.mu.Lock()
		bc.s.reqs.copyInStarted()
		bc.s.mu.Unlock()
	case beCopyOutResponse, beCopyBothResponse:
		bc.copy = true
	case beErrorResponse:
		return bc.errorResponse(body)
	case beReadyForQuery:
		if len(body) >= 1 {
			bc.readyForQuery(body[0])
		}
	case beBackendKeyData:
		if len(body) >= 8 {
			bc.s.mu.Lock()
			bc.s.info.BackendPID = binary.BigEndian.Uint32(body)
			bc.s.key = bytes.Clone(body)
			bc.s.mu.Unlock()
		}
	case beParameterStatus:
		name, rest, _ := cstring(body)
		switch string(name) {
		case "application_name":
			val, _, _ := cstring(rest)
			bc.s.mu.Lock()
			if bc.s.info.Application != string(val) {
				bc.s.info.Application = string(val)
			}
			bc.s.mu.Unlock()
		case "search_path":
			val, _, _ := cstring(rest)
			schema := firstSchema(string(val))
			bc.s.mu.Lock()
			bc.s.info.Schema = schema
			bc.s.mu.Unlock()
		}
	}
	return nil
}

// popPortal consumes a Bind or Close answered, and ends the statement of
// a suspended portal that the Bind replaced or the Close closed.
func (bc *backendCopier) popPortal(k pendingKind) {
	if p, ok := bc.s.popIf(k); ok && p.ends {
		if se := bc.suspended[p.portal]; se != nil {
			delete(bc.suspended, p.portal)
			bc.hold(se, time.Now())
		}
	}
}

// finish ends the statement the oldest request is running, if any.
func (bc *backendCopier) finish(o Outcome, tag []byte, e *pgproto3.ErrorResponse) {
	s := bc.s
	now := time.Now()
	s.mu.Lock()
	var se *stmtEvent
	first := false // the first statement of a Query
	if p := s.reqs.front(); p != nil {
		switch p.kind {
		case pendQuery:
			if p.ev != nil {
				se, p.ev = p.ev, nil
				p.ok = o == OutcomeComplete
				first = true
			} else {
				// A later statement of a multi-statement Query; it started
				// when the previous one ended.
				se = newStmtEvent(ProtocolSimple, bc.lastText, bc.lastEnd)
			}
			se.st.Index = bc.index
			bc.index++
		case pendFunctionCall:
			se, p.ev = p.ev, nil
		case pendExecute:
			se = p.ev
			s.reqs.pop()
		}
	}
	s.mu.Unlock()
	if se == nil {
		return
	}
	if sus := bc.suspended[""]; first && sus != nil {
		// A Query replaces the unnamed portal.
		delete(bc.suspended, "")
		bc.hold(sus, now)
	}
	bc.complete(se, now, o, tag, e)
}

// complete fills in the end of a request (Query statement, Execute,
// FunctionCall) and holds its statement for the next ReadyForQuery. An
// Execute of a portal that an earlier Execute left suspended goes on with
// that one's statement; one that ends suspended waits for the next.
func (bc *backendCopier) complete(se *stmtEvent, now time.Time, o Outcome, tag []byte, e *pgproto3.ErrorResponse) {
	st := &se.st
	if st.Fetches > 0 {
		if prev := bc.suspended[st.PortalName]; prev != nil {
			delete(bc.suspended, st.PortalName)
			prev.st.Fetches++
			prev.st.BytesIn += st.BytesIn
			se, st = prev, &prev.st
		}
	}
	if v := se.prep; v != nil && v.undone && o != OutcomeError {
		// The client pipelined the request behind a Parse (or PREPARE)
		// that the server refused or skipped, and the server ran the
		// version before it. (When the request failed, the client's text
		// stays: the error is most likely that Parse's.)
		for v != nil && v.undone {
			v = v.prev
		}
		text, sql := "", false
		if v != nil && !v.closed {
			text, sql = v.text, v.sql
		}
		if st.Protocol == ProtocolSimple {
			st.PreparedText, st.PreparedSQL = text, sql
		} else {
			st.Text, st.PreparedSQL = text, sql
		}
	}
	se.prep = nil
	st.End = now
	st.Outcome = o
	switch o {
	case OutcomeComplete:
		if len(tag) > 0 {
			if string(tag) != bc.lastTag {
				bc.lastTag = string(tag)
			}
			st.CommandTag = bc.lastTag
			st.Rows += tagRows(tag)
		}
	case OutcomeSuspended:
		st.Rows += bc.rows
	case OutcomeError:
		st.setError(e)
	}
	st.Copy = bc.copy
	if st.Copy {
		st.BytesIn += bc.s.copyIn.Swap(0)
	}
	st.BytesOut += bc.out
	bc.out = 0
	bc.rows = 0
	bc.copy = false
	bc.lastEnd = now
	bc.lastText = st.Text
	if o == OutcomeSuspended && st.Fetches > 0 && len(bc.suspended) < maxSuspended {
		if bc.suspended == nil {
			bc.suspended = make(map[string]*stmtEvent)
		}
		bc.suspended[st.PortalName] = se
		return
	}
	bc.hold(se, now)
}

// hold counts a finished statement and holds it for the next
// ReadyForQuery. A suspended portal's statement ends at end.
func (bc *backendCopier) hold(se *stmtEvent, end time.Time) {
	if se.st.Outcome == OutcomeSuspended {
		se.st.End = end
	}
	bc.s.statements.Add(1)
	bc.held = append(bc.held, se)
	if len(bc.held) >= maxHeld {
		bc.release(0)
	}
}

// endPortals ends the statements of all suspended portals: their
// transaction, or the session, ended. They end with the statement held
// last, or at now when none is held, and go before the held ones: the
// server destroyed the portals when the transaction ended, which is what
// the batch's last statement reports.
func (bc *backendCopier) endPortals(now time.Time) {
	if len(bc.suspended) == 0 {
		return
	}
	end := now
	if n := len(bc.held); n > 0 {
		end = bc.held[n-1].st.End
	}
	ended := make([]*stmtEvent, 0, len(bc.suspended)+len(bc.held))
	for _, se := range bc.suspended {
		se.st.End = end
		ended = append(ended, se)
	}
	clear(bc.suspended)
	slices.SortFunc(ended, func(a, b *stmtEvent) int { return a.st.Start.Compare(b.st.Start) })
	bc.s.statements.Add(int64(len(ended)))
	bc.held = append(ended, bc.held...)
	if len(bc.held) >= maxHeld {
		bc.release(0)
	}
}

// release moves the held statement events, with TxStatus tx, to the outbox.
func (bc *backendCopier) release(tx byte) int {
	n := len(bc.held)
	for i, se := range bc.held {
		se.st.TxStatus = tx
		se.st.LastInBatch = tx != 0 && i == n-1
		bc.post(&se.ev)
		bc.held[i] = nil
	}
	bc.held = bc.held[:0]
	return n
}

// post stamps e now and queues it in the outbox.
func (bc *backendCopier) post(e *Event) {
	if bc.s.stamp(e) {
		bc.outbox = append(bc.outbox, e)
	}
}

// flushed sends the outbox to the dispatcher. The framer calls it after each
// write to the client; the session calls it once more after the
// backendCopier has returned.
func (bc *backendCopier) flushed() {
	if len(bc.outbox) == 0 {
		return
	}
	for i, e := range bc.outbox {
		bc.s.srv.emit(e)
		bc.outbox[i] = nil
	}
	bc.outbox = bc.outbox[:0]
}

// abandon ends the requests still awaiting an answer as failed with
// SQLSTATE 08006 (connection failure): the upstream connection was lost.
// Only after the backendCopier has returned.
func (bc *backendCopier) abandon(cause error) {
	s := bc.s
	s.mu.Lock()
	var lost []*stmtEvent
	for p := s.reqs.front(); p != nil; p = s.reqs.front() {
		if p.ev != nil {
			lost = append(lost, p.ev)
		}
		s.reqs.pop()
	}
	s.mu.Unlock()
	e := &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "08006",
		Message: fmt.Sprintf("pgtrace: lost connection to upstream: %v", cause)}
	now := time.Now()
	for _, se := range lost {
		bc.complete(se, now, OutcomeError, nil, e)
	}
	bc.endPortals(now)
}

// readyForQuery consumes requests up to the Sync, Query or FunctionCall it
// answers (dropping Executes the server skipped after an error) and sends
// the held events. The first one answers the startup, not a request: a
// client may send its first Query right behind the StartupMessage.
func (bc *backendCopier) readyForQuery(tx byte) {
	s := bc.s
	s.mu.Lock()
	changed := s.info.TxStatus != tx
	s.info.TxStatus = tx
	for p := s.reqs.front(); s.ready && p != nil; p = s.reqs.front() {
		k := p.kind
		// A Parse or Close still queued here got no ParseComplete or
		// CloseComplete: the server refused or skipped it. A Query's
		// PREPARE or DEALLOCATE took effect when its statement completed.
		if k == pendQuery && p.ok {
			s.confirmLocked(p)
		} else {
			s.undoLocked(p)
		}
		s.reqs.pop()
		if k == pendSync || k == pendQuery || k == pendFunctionCall {
			break
		}
	}
	first := !s.ready
	s.ready = true
	s.mu.Unlock()
	bc.index = 0
	if first {
		bc.post(&Event{Kind: ConnAuthenticated, ConnectDuration: time.Since(s.dialStart)})
		return
	}
	if tx == TxIdle {
		// The transaction ended, and its portals with it.
		bc.endPortals(time.Now())
	}
	if bc.release(tx) == 0 && changed {
		bc.post(&Event{Kind: TxStatus})
	}
}

// errorResponse handles an ErrorResponse: a failed login before the first
// ReadyForQuery, a failed statement after it.
func (bc *backendCopier) errorResponse(body []byte) error {
	var e pgproto3.ErrorResponse
	if err := e.Decode(body); err != nil {
		return &ProtocolError{Type: beErrorResponse, Len: int64(len(body)) + 4, Err: err}
	}
	sev := severity(&e)
	if sev == "FATAL" || sev == "PANIC" {
		bc.fatalErr = &ServerError{Severity: sev, Code: e.Code, Message: e.Message}
	}
	s := bc.s
	s.mu.Lock()
	s.reqs.copyFailed()
	if !s.ready {
		s.mu.Unlock()
		bc.post(&Event{Kind: ConnAuthFailed, ConnectDuration: time.Since(s.dialStart),
			Err: &ServerError{Severity: sev, Code: e.Code, Message: e.Message}})
		return nil
	}
	if s.reqs.empty() {
		s.mu.Unlock()
		return nil // not an answer to anything (e.g. FATAL on an idle session)
	}
	head := s.reqs.front().kind
	if head == pendQuery || head == pendFunctionCall {
		s.mu.Unlock()
		bc.finish(OutcomeError, nil, &e)
		return nil
	}
	// Extended protocol: the error belongs to the first Execute before the
	// next Sync; everything up to it was skipped or failed.
	var se *stmtEvent
	var prep *preparedStmt
	if head == pendParse {
		prep = s.reqs.front().prep
	}
	for i := 0; ; i++ {
		p := s.reqs.at(i)
		if p == nil || p.kind == pendSync {
			break
		}
		if p.kind == pendExecute {
			se = p.ev
			for range i + 1 {
				s.undoLocked(s.reqs.front()) // failed or skipped
				s.reqs.pop()
			}
			break
		}
	}
	s.mu.Unlock()
	now := time.Now()
	if se == nil && prep == nil && head == pendSync {
		bc.failAtSync(now, &e)
		return nil
	}
	if se == nil && prep != nil {
		// A Parse failed with no Execute queued behind it (a prepare).
		se = newStmtEvent(ProtocolExtended, prep.text, now)
		se.st.StatementName = prep.name
	}
	if se != nil {
		bc.complete(se, now, OutcomeError, nil, &e)
	}
	return nil
}

// failAtSync handles an ErrorResponse that answers a Sync: the implicit
// transaction of the batch failed to commit (a deferred constraint, a
// serialization failure, a commit-time trigger). The driver reports that
// error for the batch's last statement, whose CommandComplete came before
// it, so that statement's event, still held for the ReadyForQuery, becomes
// a failure ending now. With no statement held (a Sync alone, or a long
// pipeline whose events had to go) nothing changes.
func (bc *backendCopier) failAtSync(now time.Time, e *pgproto3.ErrorResponse) {
	if len(bc.held) == 0 {
		return
	}
	st := &bc.held[len(bc.held)-1].st
	st.End = now
	st.Outcome = OutcomeError
	st.CommandTag, st.Rows = "", 0
	st.setError(e)
	st.BytesOut += bc.out
	bc.out = 0
	bc.lastEnd = now
}
