package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Statement tracking.
//
// The frontendCopier appends a pending entry to the session's queue for
// every client message that the backend answers (Query, Parse, Bind,
// Describe, Execute, Close, Sync, FunctionCall), always before it forwards
// the message, so the backendCopier never sees an answer before its entry.
// The backendCopier consumes the entries in order as the answers arrive:
//
//	Parse→ParseComplete  Bind→BindComplete  Close→CloseComplete
//	Describe→RowDescription|NoData  Execute→CommandComplete|EmptyQueryResponse|PortalSuspended
//	Sync, Query, FunctionCall→ReadyForQuery (which also drops whatever the
//	server skipped after an error, up to that Sync)
//
// An ErrorResponse in the extended protocol ends the first Execute waiting
// before the next Sync (or, failing one, reports the failed Parse); the
// server skips everything else up to the Sync, and those Executes produce no
// event. NoticeResponse, NotificationResponse and ParameterStatus may
// arrive at any time and match nothing.

// maxHeld caps the finished statements held back for the ReadyForQuery that
// gives their TxStatus; beyond it they leave early with TxStatus 0.
const maxHeld = 1024

// maxPrepared caps the prepared statements and portals remembered per
// session; past it the maps are cleared (later executions of forgotten
// statements report an empty Text) and Server.ForgottenStatements counts
// the names dropped. Drivers keep far fewer: pgx 512, PgJDBC 256, asyncpg
// and psycopg 100.
const maxPrepared = 10000

// maxSuspended caps the portals per session held open between Executes
// (see Statement.Fetches); beyond it a suspended portal is reported at
// once, as a statement of its own.
const maxSuspended = 256

type pendingKind uint8

const (
	pendParse pendingKind = iota + 1
	pendBind
	pendDescribe
	pendClose
	pendSync
	pendQuery
	pendExecute
	pendFunctionCall
)

// pending is a client request awaiting the backend's answer.
type pending struct {
	kind pendingKind
	seq  uint64        // the order in which the client sent it
	ev   *stmtEvent    // Query, Execute, FunctionCall: the event being built; nil once sent
	prep *preparedStmt // Parse: the statement parsed
	// ver is the version of a statement name that a Parse, a Close or a
	// Query (PREPARE, DEALLOCATE) made (see preparedStmt.prev), nil when
	// it changed none; vers are those a DEALLOCATE ALL or DISCARD ALL made.
	ver  *preparedStmt
	vers []*preparedStmt
	// portal is, for a Bind or a Close of a portal (ends set), the portal
	// that its answer replaces or closes.
	portal string
	ends   bool
	// ok is, for a Query, whether its first statement completed: only
	// then did a PREPARE or DEALLOCATE at its head take effect.
	ok bool
}

// stmtEvent is an Event and its Statement in one allocation.
type stmtEvent struct {
	ev Event
	st Statement
	// prep is, for an Execute, the version of the statement it runs as the
	// client's messages had it when they were sent (see complete).
	prep *preparedStmt
}

// preparedStmt is a statement the client prepared, made by the
// frontendCopier; its version fields are under session.mu, or, once its
// Parse or Close is queued, the backendCopier's.
//
// A named statement carries the trace context and tags of the text it was
// prepared with to every execution: the text goes with each event
// (Statement.Text, or PreparedText for EXECUTE) and the pipeline reads its
// comment (DESIGN.md decision 5).
type preparedStmt struct {
	name string
	text string
	sql  bool // defined by a SQL PREPARE: text is the whole statement

	// A name's versions, newest in the map: each Parse or PREPARE of a
	// new text, and each Close or DEALLOCATE (closed), makes one when the
	// client sends it, for the requests behind it. prev is the version it
	// replaced, until the server confirms it (confirmed: ParseComplete,
	// CloseComplete, the Query's success); undone marks one the server
	// refused or skipped. Under session.mu.
	prev                      *preparedStmt
	closed, confirmed, undone bool
}

type portal struct {
	name string
	stmt *preparedStmt
}

// Message types whose body the observers read in full.
var (
	frontendWhole = wholeTable("QPCESH")
	backendWhole  = wholeTable("CEKSZRGHWIs123n")
)

func wholeTable(types string) *[256]bool {
	var t [256]bool
	for i := 0; i < len(types); i++ {
		t[types[i]] = true
	}
	return &t
}

// frontendCopier relays client → upstream and records the requests.
type frontendCopier struct {
	s *session
	f *framer

	stmts         map[string]*preparedStmt
	unnamed       *preparedStmt
	portals       map[string]portal
	unnamedPortal *preparedStmt
	lastQuery     string // the previous Query text, reused when it repeats
	pendingIn     int64  // bytes sent since the last statement request
}

func newFrontendCopier(s *session) *frontendCopier {
	fc := &frontendCopier{s: s, f: newFramer(s.client, s.upstream, frontendWhole)}
	s.fe = fc
	return fc
}

// copyToBackend is the client → upstream relay goroutine.
func (fc *frontendCopier) copyToBackend(errc chan<- *endReason) {
	var err error
	if fc.s.replication {
		err = fc.f.copyRaw()
	} else {
		err = fc.f.run(fc)
	}
	if errors.Is(err, io.EOF) {
		// The client closed its side: pass the half-close on.
		if cw, ok := fc.s.upstream.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
	errc <- fc.end(err)
}

// end says how the client → upstream direction ended with err.
func (fc *frontendCopier) end(err error) *endReason {
	r := &endReason{side: SideClient, err: err}
	var re *relayError
	var pe *ProtocolError
	switch {
	case errors.As(err, &pe):
		r.side, r.proto = SideProxy, true
	case errors.As(err, &re) && !re.read:
		// The upstream connection broke under a write: lost, as when a
		// read from it fails, unless it was closing after Terminate.
		r.side, r.lost = SideUpstream, !fc.s.terminating.Load()
	case errors.Is(err, io.EOF):
		if fc.s.terminating.Load() {
			r.err = nil
		} else {
			r.err = errors.New("client closed the connection without Terminate")
		}
	}
	return r
}

func (fc *frontendCopier) message(typ byte, body []byte, bodyLen int, whole bool) error {
	size := int64(bodyLen) + 5
	s := fc.s
	if typ != 'd' && typ != 'c' && typ != 'f' && typ != 'p' { // copy data is counted apart; password messages are login, not a statement
		fc.pendingIn += size
	}
	switch typ {
	case 'Q':
		text, _, _ := cstring(body)
		if string(text) != fc.lastQuery {
			fc.lastQuery = string(text)
		}
		se := fc.newStmt(ProtocolSimple, fc.lastQuery)
		p := pending{kind: pendQuery, ev: se}
		s.mu.Lock()
		fc.utility(parseUtility(text), &p)
		s.pushLocked(p)
		s.mu.Unlock()
	case 'P':
		name, rest, _ := cstring(body)
		query, _, _ := cstring(rest)
		s.mu.Lock() // the statement names: see preparedStmt.prev
		prep, ver := fc.parse(name, query)
		s.pushLocked(pending{kind: pendParse, prep: prep, ver: ver})
		s.mu.Unlock()
	case 'B':
		s.mu.Lock()
		portal := fc.bind(body)
		s.pushLocked(pending{kind: pendBind, portal: portal, ends: true})
		s.mu.Unlock()
	case 'D':
		s.push(pending{kind: pendDescribe})
	case 'E':
		name, _, _ := cstring(body)
		var prep *preparedStmt
		var portalName string
		if len(name) == 0 {
			prep = fc.unnamedPortal
		} else if p, ok := fc.portals[string(name)]; ok {
			prep, portalName = p.stmt, p.name
		} else {
			portalName = string(name)
		}
		se := fc.newStmt(ProtocolExtended, "")
		se.st.PortalName = portalName
		se.st.Fetches = 1
		if prep != nil {
			se.prep = prep
			se.st.Text = prep.text
			se.st.PreparedSQL = prep.sql
			se.st.StatementName = prep.name
		}
		s.push(pending{kind: pendExecute, ev: se})
	case 'C':
		p := pending{kind: pendClose}
		s.mu.Lock()
		if len(body) > 0 {
			name, _, _ := cstring(body[1:])
			switch body[0] {
			case 'S':
				p.ver = fc.closeStmt(string(name))
			case 'P':
				p.ends = true
				if len(name) == 0 {
					fc.unnamedPortal = nil
				} else {
					p.portal = string(name)
					delete(fc.portals, p.portal)
				}
			}
		}
		s.pushLocked(p)
		s.mu.Unlock()
	case 'S':
		s.pushSync()
	case 'F':
		se := fc.newStmt(ProtocolFunctionCall, "")
		if len(body) >= 4 {
			se.st.FunctionOID = binary.BigEndian.Uint32(body)
		}
		s.push(pending{kind: pendFunctionCall, ev: se})
	case 'd':
		s.copyIn.Add(size)
	case 'c', 'f':
		s.copyIn.Add(size)
		s.copyEnd()
	case 'X':
		s.terminating.Store(true)
	}
	return nil
}

// newStmt starts the event of a request; BytesIn takes the bytes sent since
// the previous request (its Parse, Bind and Describe) and the request itself.
func (fc *frontendCopier) newStmt(p Protocol, text string) *stmtEvent {
	se := &stmtEvent{}
	se.ev.Kind = StatementDone
	se.ev.Stmt = &se.st
	se.st.Protocol = p
	se.st.Text = text
	se.st.Start = time.Now()
	se.st.BytesIn = fc.pendingIn
	fc.pendingIn = 0
	return se
}

// parse records a Parse. The text is copied out of the read buffer, unless
// the statement already has exactly this text.
func (fc *frontendCopier) parse(name, query []byte) (p, ver *preparedStmt) {
	old := fc.stmt(string(name))
	same := old != nil && !old.sql && old.text == string(query)
	if same && old.confirmed {
		return old, nil
	}
	// A new version, even for the same text when the server has not
	// confirmed the old one yet: the old one's Parse may still be refused
	// or skipped, and this one's succeed.
	text := string(query)
	if same {
		text = old.text
	}
	p = fc.newVersion(string(name), text, false)
	return p, p
}

// newVersion makes a new version of name, defined with text, the newest.
func (fc *frontendCopier) newVersion(name, text string, sql bool) *preparedStmt {
	p := &preparedStmt{name: name, text: text, sql: sql, prev: fc.version(name)}
	if len(name) > 0 && len(fc.stmts) >= maxPrepared {
		fc.s.srv.forgotten.Add(uint64(len(fc.stmts)))
		fc.stmts = nil
	}
	fc.setVersion(p.name, p)
	return p
}

// closeStmt makes a closed version of the statement name, the newest, and
// returns it; nil when there is no such statement.
func (fc *frontendCopier) closeStmt(name string) *preparedStmt {
	cur := fc.stmt(name)
	if cur == nil {
		return nil
	}
	v := &preparedStmt{name: cur.name, closed: true, prev: fc.version(cur.name)}
	fc.setVersion(cur.name, v)
	return v
}

// utility applies what the head of a Query does to the statement names
// (see sqlhead.go) and marks its request p. s.mu is held.
func (fc *frontendCopier) utility(u utility, p *pending) {
	switch u.kind {
	case utilPrepare:
		p.ver = fc.newVersion(u.name, fc.lastQuery, true)
	case utilExecute:
		if v := fc.stmt(u.name); v != nil {
			p.ev.prep = v
			p.ev.st.PreparedText, p.ev.st.PreparedSQL = v.text, v.sql
		}
		p.ev.st.StatementName = u.name
	case utilDeallocate:
		p.ver = fc.closeStmt(u.name)
	case utilDeallocateAll:
		// The unnamed statement is not among them, and DISCARD ALL closes
		// the portals too (it cannot run in a transaction block, where
		// they would outlive the Query).
		for name := range fc.stmts {
			if v := fc.closeStmt(name); v != nil {
				p.vers = append(p.vers, v)
			}
		}
		clear(fc.portals)
	}
}

// stmt is the prepared statement called name ("" is the unnamed one), or
// nil when there is none or it is closed.
func (fc *frontendCopier) stmt(name string) *preparedStmt {
	if v := fc.version(name); v != nil && !v.closed {
		return v
	}
	return nil
}

// version is name's newest version, a closed one included.
func (fc *frontendCopier) version(name string) *preparedStmt {
	if name == "" {
		return fc.unnamed
	}
	return fc.stmts[name]
}

// setVersion makes v name's newest version (nil: forgets the name).
func (fc *frontendCopier) setVersion(name string, v *preparedStmt) {
	switch {
	case name == "":
		fc.unnamed = v
	case v == nil:
		delete(fc.stmts, name)
	default:
		if fc.stmts == nil {
			fc.stmts = make(map[string]*preparedStmt)
		}
		fc.stmts[name] = v
	}
}

// confirmLocked notes that the server did p, a Parse, a Close or a
// Query: its versions can no longer be undone, nor can those before them.
// s.mu is held.
func (s *session) confirmLocked(p *pending) {
	if s.fe == nil {
		return
	}
	s.confirmVersionLocked(p.ver)
	for _, v := range p.vers {
		s.confirmVersionLocked(v)
	}
}

func (s *session) confirmVersionLocked(v *preparedStmt) {
	if v == nil {
		return
	}
	v.prev, v.confirmed = nil, true
	if v.closed && s.fe.version(v.name) == v {
		s.fe.setVersion(v.name, nil)
	}
}

// undoLocked reverts what p, a Parse or Close that the server refused
// (42P05, a syntax error) or skipped after an earlier error in its batch,
// did to its statement name: when its version is still the newest, the
// name goes back to the newest version before it that was not undone too.
// Requests pipelined behind p may have made versions of their own, and
// may be undone later. s.mu is held.
func (s *session) undoLocked(p *pending) {
	if s.fe == nil {
		return
	}
	s.undoVersionLocked(p.ver)
	for _, v := range p.vers {
		s.undoVersionLocked(v)
	}
}

func (s *session) undoVersionLocked(v *preparedStmt) {
	if v == nil {
		return
	}
	v.undone = true
	if s.fe.version(v.name) != v {
		return
	}
	r := v.prev
	for r != nil && r.undone {
		r = r.prev
	}
	if r != nil && r.closed && r.confirmed {
		r = nil
	}
	s.fe.setVersion(v.name, r)
}

// bind records which statement a portal runs, and returns the portal's
// name. body may be only a prefix of a large Bind; the names come first.
func (fc *frontendCopier) bind(body []byte) string {
	pname, rest, ok := cstring(body)
	if !ok {
		return ""
	}
	sname, _, ok := cstring(rest)
	if !ok {
		return ""
	}
	prep := fc.stmt(string(sname))
	if len(pname) == 0 {
		fc.unnamedPortal = prep
		return ""
	}
	if p, ok := fc.portals[string(pname)]; ok {
		p.stmt = prep
		fc.portals[p.name] = p
		return p.name
	}
	if fc.portals == nil || len(fc.portals) >= maxPrepared {
		fc.portals = make(map[string]portal)
	}
	n := string(pname)
	fc.portals[n] = portal{name: n, stmt: prep}
	return n
}

// push appends a request to the queue.
func (s *session) push(p pending) {
	s.mu.Lock()
	s.pushLocked(p)
	s.mu.Unlock()
}

// pushLocked is push with s.mu held. It numbers the request (seq).
func (s *session) pushLocked(p pending) {
	if s.qhead == len(s.queue) {
		s.queue, s.qhead = s.queue[:0], 0
	}
	p.seq = s.pushed
	s.pushed++
	s.queue = append(s.queue, p)
}

// pushSync queues a Sync, unless the server is in copy-in mode and ignores
// it (see copyInStarted).
func (s *session) pushSync() {
	s.mu.Lock()
	if !s.copyingIn {
		s.pushLocked(pending{kind: pendSync})
	}
	s.mu.Unlock()
}

// maxCopyEnds bounds the copy ends kept unmatched: those of COPYs that
// failed before copy-in, which the server ignores, until they are pruned.
const maxCopyEnds = 16

// copyEnd notes the client's CopyDone or CopyFail.
func (s *session) copyEnd() {
	s.mu.Lock()
	if s.copyingIn {
		s.copyingIn = false
	} else {
		s.pruneCopyEndsLocked()
		if len(s.copyEnds) < maxCopyEnds {
			s.copyEnds = append(s.copyEnds, s.pushed)
		}
	}
	s.mu.Unlock()
}

// pruneCopyEndsLocked drops the copy ends sent before the oldest request
// awaiting its answer: no copy-in can start for them any more.
func (s *session) pruneCopyEndsLocked() {
	head := s.pushed
	if s.qhead < len(s.queue) {
		head = s.queue[s.qhead].seq
	}
	for len(s.copyEnds) > 0 && s.copyEnds[0] <= head {
		s.copyEnds = s.copyEnds[1:]
	}
}

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
	case 'D':
		bc.rows++
	case 'T', 'n':
		bc.s.popIf(pendDescribe)
	case '1':
		bc.s.popIf(pendParse)
	case '2':
		bc.popPortal(pendBind)
	case '3':
		bc.popPortal(pendClose)
	case 'C':
		tag, _, _ := cstring(body)
		bc.finish(OutcomeComplete, tag, nil)
	case 'I':
		bc.finish(OutcomeEmpty, nil, nil)
	case 's':
		bc.finish(OutcomeSuspended, nil, nil)
	case 'V':
		bc.finish(OutcomeComplete, nil, nil)
	case 'G':
		bc.copy = true
		bc.s.copyInStarted()
	case 'H', 'W':
		bc.copy = true
	case 'E':
		return bc.errorResponse(body)
	case 'Z':
		if len(body) >= 1 {
			bc.readyForQuery(body[0])
		}
	case 'K':
		if len(body) >= 8 {
			bc.s.mu.Lock()
			bc.s.info.BackendPID = binary.BigEndian.Uint32(body)
			bc.s.key = bytes.Clone(body)
			bc.s.mu.Unlock()
		}
	case 'S':
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

// copyInStarted notes that the server entered copy-in mode for the oldest
// request. Until the client's CopyDone or CopyFail the server ignores
// Sync, since drivers such as libpq send one behind an Execute without
// knowing that it runs a COPY, and then another after CopyDone: the Syncs
// the client sent after that request and before its copy end answer
// nothing and must not wait for a ReadyForQuery. The client may have sent
// the copy end already (pgx streams the data without waiting for the
// CopyInResponse); if not, later Syncs are not queued until it comes.
func (s *session) copyInStarted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.qhead == len(s.queue) {
		return
	}
	s.pruneCopyEndsLocked()
	end := s.pushed // no copy end yet: every Sync queued so far came before it
	if len(s.copyEnds) > 0 {
		end, s.copyEnds = s.copyEnds[0], s.copyEnds[1:]
	} else {
		s.copyingIn = true
	}
	for i := s.qhead + 1; i < len(s.queue) && s.queue[i].seq < end; {
		if s.queue[i].kind == pendSync {
			s.queue = slices.Delete(s.queue, i, i+1)
		} else {
			i++
		}
	}
}

// popIf consumes the oldest request if it is of kind k, and returns it.
func (s *session) popIf(k pendingKind) (p pending, ok bool) {
	s.mu.Lock()
	if s.qhead < len(s.queue) && s.queue[s.qhead].kind == k {
		p, ok = s.queue[s.qhead], true
		s.confirmLocked(&p)
		s.queue[s.qhead] = pending{}
		s.qhead++
	}
	s.mu.Unlock()
	return p, ok
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
	if s.qhead < len(s.queue) {
		p := &s.queue[s.qhead]
		switch p.kind {
		case pendQuery:
			if p.ev != nil {
				se, p.ev = p.ev, nil
				p.ok = o == OutcomeComplete
				first = true
			} else {
				// A later statement of a multi-statement Query; it started
				// when the previous one ended.
				se = &stmtEvent{}
				se.ev.Kind = StatementDone
				se.ev.Stmt = &se.st
				se.st.Protocol = ProtocolSimple
				se.st.Text = bc.lastText
				se.st.Start = bc.lastEnd
			}
			se.st.Index = bc.index
			bc.index++
		case pendFunctionCall:
			se, p.ev = p.ev, nil
		case pendExecute:
			se = p.ev
			*p = pending{}
			s.qhead++
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
	for ; s.qhead < len(s.queue); s.qhead++ {
		if se := s.queue[s.qhead].ev; se != nil {
			lost = append(lost, se)
		}
		s.queue[s.qhead] = pending{}
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
	for s.ready && s.qhead < len(s.queue) {
		p := &s.queue[s.qhead]
		k := p.kind
		// A Parse or Close still queued here got no ParseComplete or
		// CloseComplete: the server refused or skipped it. A Query's
		// PREPARE or DEALLOCATE took effect when its statement completed.
		if k == pendQuery && p.ok {
			s.confirmLocked(p)
		} else {
			s.undoLocked(p)
		}
		s.queue[s.qhead] = pending{}
		s.qhead++
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
		return &ProtocolError{Type: 'E', Len: int64(len(body)) + 4, Err: err}
	}
	sev := severity(&e)
	if sev == "FATAL" || sev == "PANIC" {
		bc.fatalErr = &ServerError{Severity: sev, Code: e.Code, Message: e.Message}
	}
	s := bc.s
	s.mu.Lock()
	s.copyingIn = false // an error ends copy-in
	if !s.ready {
		s.mu.Unlock()
		bc.post(&Event{Kind: ConnAuthFailed, ConnectDuration: time.Since(s.dialStart),
			Err: &ServerError{Severity: sev, Code: e.Code, Message: e.Message}})
		return nil
	}
	if s.qhead == len(s.queue) {
		s.mu.Unlock()
		return nil // not an answer to anything (e.g. FATAL on an idle session)
	}
	head := s.queue[s.qhead].kind
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
		prep = s.queue[s.qhead].prep
	}
	for i := s.qhead; i < len(s.queue) && s.queue[i].kind != pendSync; i++ {
		if s.queue[i].kind == pendExecute {
			se = s.queue[i].ev
			for ; s.qhead <= i; s.qhead++ {
				s.undoLocked(&s.queue[s.qhead]) // failed or skipped
				s.queue[s.qhead] = pending{}
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
		se = &stmtEvent{}
		se.ev.Kind = StatementDone
		se.ev.Stmt = &se.st
		se.st.Protocol = ProtocolExtended
		se.st.Text = prep.text
		se.st.StatementName = prep.name
		se.st.Start = now
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

// setError records the ErrorResponse that ended st.
func (st *Statement) setError(e *pgproto3.ErrorResponse) {
	st.SQLState = e.Code
	st.ErrorMessage = e.Message
	st.Severity = severity(e)
}

// severity is e's severity, the unlocalized one when the server sent it
// (PostgreSQL 9.6 and later).
func severity(e *pgproto3.ErrorResponse) string {
	if e.SeverityUnlocalized != "" {
		return e.SeverityUnlocalized
	}
	return e.Severity
}

// tagRows is the row count at the end of a command tag ("INSERT 0 5" → 5);
// 0 when the tag has none.
func tagRows(tag []byte) int64 {
	i := bytes.LastIndexByte(tag, ' ')
	if i < 0 {
		return 0
	}
	n, err := strconv.ParseInt(string(tag[i+1:]), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// ServerError is an ErrorResponse from the upstream that ended a login or a
// session (Event.Err of ConnAuthFailed and ConnClosed).
type ServerError struct {
	Severity string // FATAL, PANIC or ERROR
	Code     string // SQLSTATE
	Message  string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("%s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code)
}
