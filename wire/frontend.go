package wire

import (
	"encoding/binary"
	"errors"
	"io"
	"time"
)

// The client → upstream direction: the frontendCopier forwards each
// message as it came and, before it does, pushes the requests the server
// will answer onto the session's queue (queue.go), and keeps the names of
// the statements and portals the client prepared.

// maxPrepared caps the prepared statements and portals remembered per
// session; past it the maps are cleared (later executions of forgotten
// statements report an empty Text) and Server.ForgottenStatements counts
// the names dropped. Drivers keep far fewer: pgx 512, PgJDBC 256, asyncpg
// and psycopg 100.
const maxPrepared = 10000

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
	if typ != feCopyData && typ != feCopyDone && typ != feCopyFail && typ != fePassword { // copy data is counted apart; password messages are login, not a statement
		fc.pendingIn += size
	}
	switch typ {
	case feQuery:
		text, _, _ := cstring(body)
		if string(text) != fc.lastQuery {
			fc.lastQuery = string(text)
		}
		se := fc.newStmt(ProtocolSimple, fc.lastQuery)
		p := pending{kind: pendQuery, ev: se}
		s.mu.Lock()
		fc.utility(parseUtility(text), &p)
		s.reqs.push(p)
		s.mu.Unlock()
	case feParse:
		name, rest, _ := cstring(body)
		query, _, _ := cstring(rest)
		s.mu.Lock() // the statement names: see preparedStmt.prev
		prep, ver := fc.parse(name, query)
		s.reqs.push(pending{kind: pendParse, prep: prep, ver: ver})
		s.mu.Unlock()
	case feBind:
		s.mu.Lock()
		portal := fc.bind(body)
		s.reqs.push(pending{kind: pendBind, portal: portal, ends: true})
		s.mu.Unlock()
	case feDescribe:
		s.push(pending{kind: pendDescribe})
	case feExecute:
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
	case feClose:
		p := pending{kind: pendClose}
		s.mu.Lock()
		if len(body) > 0 {
			name, _, _ := cstring(body[1:])
			switch body[0] {
			case closeStatement:
				p.ver = fc.closeStmt(string(name))
			case closePortal:
				p.ends = true
				if len(name) == 0 {
					fc.unnamedPortal = nil
				} else {
					p.portal = string(name)
					delete(fc.portals, p.portal)
				}
			}
		}
		s.reqs.push(p)
		s.mu.Unlock()
	case feSync:
		s.mu.Lock()
		s.reqs.pushSync()
		s.mu.Unlock()
	case feFunctionCall:
		se := fc.newStmt(ProtocolFunctionCall, "")
		if len(body) >= 4 {
			se.st.FunctionOID = binary.BigEndian.Uint32(body)
		}
		s.push(pending{kind: pendFunctionCall, ev: se})
	case feCopyData:
		s.copyIn.Add(size)
	case feCopyDone, feCopyFail:
		s.copyIn.Add(size)
		s.mu.Lock()
		s.reqs.copyEnd()
		s.mu.Unlock()
	case feTerminate:
		s.terminating.Store(true)
	}
	return nil
}

// newStmt starts the event of a request; BytesIn takes the bytes sent since
// the previous request (its Parse, Bind and Describe) and the request itself.
func (fc *frontendCopier) newStmt(p Protocol, text string) *stmtEvent {
	se := newStmtEvent(p, text, time.Now())
	se.st.BytesIn = fc.pendingIn
	if fc.s.poolWait != 0 { // pooled modes only; read without mu: set by the same goroutine
		fc.s.mu.Lock()
		se.st.PoolWait, se.st.PoolWaitStart = fc.s.poolWait, fc.s.poolWaitStart
		fc.s.poolWait = 0
		fc.s.mu.Unlock()
	}
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
