package pool

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dotmac/pgtrace/wire"
)

// One client session in a pooled mode.
//
// Two goroutines serve it. The client's (ServeSession's) reads the
// client's messages, shows each to the tracker (wire's request queue and
// statement events), gets a server connection when one is needed, and
// writes to it. The server's (serverLoop) reads the server connection
// while the session has one and writes to the client.
//
// When a server connection goes back to the pool — the rule, written once:
// in transaction mode, at a ReadyForQuery with status I, when every
// request the client sent has been answered (wire.PooledSession.Idle) and
// the relay waits for no answer of its own. In session mode, when the
// client is done, after the reset query. A connection a client left in a
// transaction, or with a request unanswered, is closed, never lent.
//
// The relay asks the server things of its own (injections: a Parse of a
// statement the connection lacks, a Close of one it must forget, a SET of
// the client's parameters) and answers some of the client's requests itself
// (synthetics: a ParseComplete for a statement the connection has, a
// CloseComplete for the client's Close of one). Each is anchored to the
// sequence number of the client request it comes right before (an
// injection) or answers (a synthetic): the server's answers belong to an
// injection while the tracker's oldest unanswered request is its anchor,
// and a synthetic goes to the client once its anchor is the oldest.
type relay struct {
	p    *Pooler
	ps   *wire.PooledSession
	pl   *Pool
	mode Mode
	ctx  context.Context

	client net.Conn
	cr     *msgReader
	cwMu   sync.Mutex // the client's writer, and the order the tracker sees
	cw     *bufio.Writer
	key    []byte // the BackendKeyData the client got

	mu         sync.Mutex // guards the fields below
	server     *serverConn
	serverDone chan struct{} // closed when the current server's loop returns
	stopping   bool          // the server's loop is being stopped, not lost
	// waitCancel ends the client's wait for a server connection, when it
	// waits; waitCanceled says a CancelRequest did (Pooler.Cancel).
	waitCancel   context.CancelFunc
	waitCanceled bool
	status       byte // of the last ReadyForQuery the client got
	injected     []injection
	synthetic    []synthetic
	stmts        clientStmts // transaction mode: the client's named statements
	unnamed      *stmtDef    // transaction mode: the client's unnamed statement
	want         paramSet    // the client's run-time parameters
	// parses and closes are the server-side names of the Parses and of
	// the relay's own Closes sent to the server connection and not yet
	// confirmed (ParseComplete, CloseComplete come in order), oldest
	// first, each with the client request it belongs to; at a
	// ReadyForQuery, those of the requests it ended were skipped after an
	// error, and the books are put right.
	parses []sent
	closes []sent
	// errored: an ErrorResponse came since the last ReadyForQuery; the
	// server skips the client's requests up to its Sync, and the relay
	// gives none of its own answers among them either. errorAt is the
	// oldest request unanswered then: it and those after it up to the
	// Sync were skipped.
	errored bool
	errorAt uint64
	// journal holds the changes the client's Parses and Closes made to
	// its statements (stmts), oldest first, until the server's
	// ReadyForQuery says whether they took: those of skipped requests are
	// undone, as the server undoes nothing and did nothing.
	journal []stmtChange
	lost    error // the server connection broke
	// writing is true while the client's goroutine writes to the server
	// connection: it must not go back to the pool then, even when the
	// server has already answered what is being written (a write returns
	// after the server may have read it). releaseDue says it would have
	// gone: the writer gives it back when done.
	writing    bool
	releaseDue bool

	// reserved: this message's handling reserved the server connection
	// (writing). The client's goroutine only.
	reserved bool
	// skipToSync: a request of the client's was cancelled while it waited
	// for a server connection; its messages up to the next Sync are
	// dropped, as the server skips them after an error. The client's
	// goroutine only.
	skipToSync bool
}

// errWaitCanceled: a CancelRequest ended the client's wait for a server
// connection.
var errWaitCanceled = errors.New("cancelled while waiting for a server connection")

type injKind uint8

const (
	injParse injKind = iota + 1
	injClose
	injQuery
)

// injection is a request of the relay's own on the server connection.
type injection struct {
	anchor uint64
	kind   injKind
	name   string // injParse: the server-side name it prepares
}

// synthetic is an answer the relay gives the client itself.
type synthetic struct {
	anchor uint64
	msg    []byte // the whole message
}

// trackedParams are the run-time parameters a client sets that the relay
// carries to every server connection it gets (PgBouncer's
// track_extra_parameters and the ones it always tracks): the ones
// PostgreSQL reports in ParameterStatus.
var trackedParams = map[string]bool{
	"application_name": true, "client_encoding": true, "DateStyle": true, "IntervalStyle": true,
	"TimeZone": true, "standard_conforming_strings": true,
}

// stmtChange is what one request did to a client's statement name: old is
// the definition before (nil: none).
type stmtChange struct {
	seq      uint64
	name     string
	old, def *stmtDef // before and after (nil: none)
}

// setStmt changes a client's statement name (def nil: closed), for request
// seq, and records the change in the journal. r.mu is held.
func (r *relay) setStmtLocked(seq uint64, name string, def *stmtDef) {
	r.journal = append(r.journal, stmtChange{seq: seq, name: name, old: r.stmts.get(name), def: def})
	if def == nil {
		r.stmts.remove(name)
	} else {
		r.stmts.put(name, def)
	}
}

// clientWhole are the client's message types read whole: those the relay
// rewrites or the tracker reads whole (a Bind streams: its names come first).
var clientWhole = wholeTypes('Q', 'P', 'C', 'E', 'S', 'H', 'D', 'F')

// ServeSession runs a client session: authentication, then the relay.
func (p *Pooler) ServeSession(ctx context.Context, ps *wire.PooledSession) error {
	client := ps.Client()
	defer client.Close()
	r := &relay{
		p: p, ps: ps, mode: p.cfg.Mode, ctx: ctx, client: client,
		cr: newMsgReader(client, clientWhole), cw: bufio.NewWriterSize(client, 32<<10),
		status: 'I', want: paramSet{},
	}
	if err := r.login(); err != nil {
		return err
	}
	defer p.forgetKey(r.key)
	return r.run()
}

// login authenticates the client, finds its pool, and tells the client
// what a server would: the parameters, its key, ReadyForQuery.
func (r *relay) login() error {
	ps, p := r.ps, r.p
	user := ps.User()
	// PostgreSQL's authentication_timeout.
	r.client.SetDeadline(time.Now().Add(time.Minute))
	if name := unsupportedParam(ps.Params(), p.cfg.IgnoreStartupParameters); name != "" {
		// Before authentication, as PgBouncer: a server connection is
		// shared, so a setting only this client asked for at login would
		// silently not hold.
		r.fatal(codeProtocolViolation, fmt.Sprintf("pgtrace: unsupported startup parameter in a pooled mode: %s "+
			"(server connections are shared; set it per role or database with ALTER ROLE/DATABASE … SET, "+
			"or accept and ignore it with --ignore-startup-parameters %s)", name, name))
		return fmt.Errorf("unsupported startup parameter %s", name)
	}
	secret, ca, err := p.auth.Authenticate(r.ctx, loginIO{r.client, r.cw}, user)
	r.client.SetDeadline(time.Time{})
	if err != nil {
		r.cw.Flush() // the FATAL ErrorResponse
		var ce *ClientAuthError
		if errors.As(err, &ce) && ce.Code != "" {
			r.authFailed(ce.Code, user)
		}
		return err
	}
	r.ps.ServerMessage('R', []byte{0, 0, 0, 0}, 4, true) // AuthenticationOk, which Authenticate sent

	r.pl = p.pool(Key{Database: ps.Database(), User: user})
	r.pl.setCredential(CredentialFor(secret, ca))
	for _, kv := range ps.Params() {
		switch k := canonicalParam(kv[0]); {
		case trackedParams[k]:
			r.want[k] = kv[1]
		case kv[0] == "options":
			for _, o := range parseOptions(kv[1]) {
				if trackedParams[o[0]] {
					r.want[o[0]] = o[1]
				}
			}
		}
	}
	if name, ok := r.want["application_name"]; ok {
		ps.SetApplication(name)
	}

	// What the server would report: the pool's parameters, learnt at its
	// first login, with the client's own.
	params := r.pl.knownParams()
	if params == nil {
		sc, _, err := r.pl.acquire(r.ctx)
		if err != nil {
			r.fatalFromErr(err)
			return err
		}
		r.pl.release(sc, true)
		params = r.pl.knownParams()
	}
	for k, v := range r.want {
		params[k] = v
	}
	// Every tracked parameter follows the client with the value it was
	// told, not only those it set: another client may have SET one on the
	// server connection it gets next.
	for k, v := range params {
		if trackedParams[k] {
			r.want[k] = v
		}
	}
	r.key = p.newKey(r)
	var out []byte
	for _, k := range sortedKeys(params) {
		out = appendMsg(out, 'S', []byte(k), []byte{0}, []byte(params[k]), []byte{0})
	}
	out = appendMsg(out, 'K', r.key)
	out = appendMsg(out, 'Z', []byte{'I'})
	return r.writeClientRaw(out, true)
}

// loginIO is the client connection as the authentication exchange sees
// it: its messages go through the client's buffered writer and leave when
// the exchange waits for the client's answer, so that AuthenticationOk
// leaves in one write with the parameters that follow it.
type loginIO struct {
	r io.Reader
	w *bufio.Writer
}

func (l loginIO) Read(p []byte) (int, error) {
	if l.w.Buffered() > 0 {
		if err := l.w.Flush(); err != nil {
			return 0, err
		}
	}
	return l.r.Read(p)
}

func (l loginIO) Write(p []byte) (int, error) { return l.w.Write(p) }

// authFailed shows the tracker the FATAL error the client got (code), so
// that the login counts as a failed one.
func (r *relay) authFailed(code, user string) {
	body := errorBody("FATAL", code, fmt.Sprintf("password authentication failed for user %q", user))
	r.cwMu.Lock()
	r.ps.ServerMessage('E', body, len(body), true)
	r.ps.Flushed()
	r.cwMu.Unlock()
}

// run relays until the session ends.
func (r *relay) run() error {
	for {
		m, err := r.cr.next()
		if err != nil {
			return r.end(fmt.Errorf("read from client: %w", err))
		}
		r.ps.ClientMessage(m.typ, m.body, m.size, m.whole)
		if m.typ == 'X' {
			return r.end(nil)
		}
		if err := r.handle(m); err != nil {
			if errors.Is(err, errWaitCanceled) {
				if err := r.waitWasCanceled(m); err != nil {
					return r.end(err)
				}
				continue
			}
			return r.end(err)
		}
	}
}

// handle acts on one client message, and gives the server connection
// back if that fell due while it was being written to.
func (r *relay) handle(m message) error {
	err := r.handleMessage(m)
	if !r.reserved {
		return err
	}
	r.reserved = false
	r.mu.Lock()
	r.writing = false
	sc := r.server
	due := r.releaseDue && sc != nil
	r.releaseDue = false
	if due {
		r.server, r.stopping = nil, true
	}
	done := r.serverDone
	r.mu.Unlock()
	if due {
		// The server's loop saw the session idle while this was being
		// written: stop it, and give the connection back here.
		ferr := sc.w.Flush()
		r.pl.release(sc, stopLoop(sc, done) && ferr == nil)
	}
	return err
}

// waitWasCanceled answers the request m whose wait for a server
// connection a CancelRequest ended, as PostgreSQL answers a cancelled
// statement (57014): the statement never ran.
func (r *relay) waitWasCanceled(m message) error {
	if m.rest() > 0 {
		if err := r.cr.discardRest(m); err != nil {
			return fmt.Errorf("read from client: %w", err)
		}
	}
	out := appendMsg(nil, 'E', errorBody("ERROR", "57014", "canceling statement due to user request"))
	if m.typ == 'Q' || m.typ == 'F' {
		out = appendMsg(out, 'Z', []byte{'I'})
	} else {
		r.skipToSync = true
	}
	return r.writeClientRaw(out, true)
}

// handleMessage acts on one client message.
func (r *relay) handleMessage(m message) error {
	tx := r.mode == ModeTransaction
	if r.skipToSync {
		if m.typ == 'S' {
			r.skipToSync = false
			return r.answer([]byte{'Z', 0, 0, 0, 5, 'I'})
		}
		if m.rest() > 0 {
			return r.cr.discardRest(m)
		}
		return nil
	}
	switch {
	case m.typ == 'H' || m.typ == 'd' || m.typ == 'c' || m.typ == 'f':
		return r.notRequest(m)
	case m.typ == 'S':
		r.mu.Lock()
		held := r.server != nil
		r.mu.Unlock()
		if !held {
			// Nothing is unanswered when no server connection is held: a
			// Sync is answered as the server would.
			return r.answer([]byte{'Z', 0, 0, 0, 5, 'I'})
		}
	case tx && m.typ == 'P':
		name, query, types, ok := decodeParse(m.body)
		if ok && name != "" {
			return r.parse(name, &stmtDef{query: query, paramTypes: types, server: r.p.reg.name(query, types)})
		}
		if ok {
			// The unnamed statement: forwarded, and remembered, for a
			// Bind in a later transaction on another server connection
			// (pgx's describe-then-execute modes parse in one round trip
			// and bind in the next).
			d := &stmtDef{query: query, paramTypes: types}
			d.server = d.unnamedKey()
			sc, err := r.serverFor()
			if err != nil {
				return err
			}
			r.mu.Lock()
			r.unnamed, sc.unnamed = d, d.server
			r.parses = append(r.parses, sent{unnamedMark, r.ps.Pushed() - 1})
			r.mu.Unlock()
			return r.forward(sc, m, nil)
		}
	case tx && m.typ == 'Q':
		// A simple Query drops the unnamed statement.
		sc, err := r.serverFor()
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.unnamed, sc.unnamed = nil, ""
		r.mu.Unlock()
		return r.forward(sc, m, nil)
	case tx && m.typ == 'B':
		_, rest, ok := cstring(m.body)
		if !ok {
			break
		}
		if name, _, ok := cstring(rest); ok {
			if len(name) > 0 {
				return r.useStatement(m, string(name))
			}
			return r.useUnnamed(m)
		}
	case tx && m.typ == 'D' && len(m.body) > 1 && m.body[0] == 'S':
		if name, _, ok := cstring(m.body[1:]); ok {
			if len(name) > 0 {
				return r.useStatement(m, string(name))
			}
			return r.useUnnamed(m)
		}
	case tx && m.typ == 'C' && len(m.body) > 1 && m.body[0] == 'S':
		if name, _, ok := cstring(m.body[1:]); ok && len(name) > 0 {
			// The statement stays on the server connections for other
			// clients; the client's name is forgotten and its Close
			// answered here.
			r.mu.Lock()
			r.setStmtLocked(r.ps.Pushed()-1, string(name), nil)
			r.mu.Unlock()
			return r.answer([]byte{'3', 0, 0, 0, 4})
		}
	}
	sc, err := r.serverFor()
	if err != nil {
		return err
	}
	return r.forward(sc, m, nil)
}

// notRequest forwards a message the server does not answer: a Flush, or
// the data of a COPY FROM STDIN. When every request is answered, there is
// nothing to flush and no COPY in progress (the server ignores copy
// messages outside one): it is dropped. Otherwise the server connection
// stays until it is written.
func (r *relay) notRequest(m message) error {
	r.mu.Lock()
	sc := r.server
	if sc == nil || r.ps.Idle() {
		r.mu.Unlock()
		if m.rest() > 0 {
			return r.cr.discardRest(m)
		}
		return nil
	}
	r.writing, r.reserved = true, true
	r.mu.Unlock()
	return r.forward(sc, m, nil)
}

// stopLoop stops the server loop reading sc and reports whether sc is
// still in step: no message half read.
func stopLoop(sc *serverConn, done chan struct{}) bool {
	sc.conn.SetReadDeadline(time.Unix(1, 0))
	<-done
	sc.conn.SetReadDeadline(time.Time{})
	return !sc.mr.buffered() && sc.mr.clean
}

// parse handles a client's Parse of a named statement (transaction mode).
func (r *relay) parse(name string, def *stmtDef) error {
	seq := r.ps.Pushed() - 1
	r.mu.Lock()
	old := r.stmts.get(name)
	r.setStmtLocked(seq, name, def)
	held, aborted := r.server != nil, r.status == 'E'
	r.mu.Unlock()
	if old != nil {
		return r.parseTaken(seq, old, def)
	}
	if !held && !r.pl.canLend() {
		// Every server connection is busy. The statement is taken here
		// and prepared on the connection the client has when it uses it:
		// a client that prepares and waits (libpq's PQprepare, which
		// pgbench calls with other clients' transactions open in the
		// same thread) must not wait for a server connection. A
		// statement that does not parse fails at its Bind or Describe
		// instead, and is then forgotten.
		def.lazy = true
		return r.answer([]byte{'1', 0, 0, 0, 4})
	}
	sc, err := r.serverFor()
	if err != nil {
		return err
	}
	r.mu.Lock()
	if aborted {
		// In a failed transaction the server refuses a Parse (25P02),
		// but takes an empty one or a COMMIT or ROLLBACK: let it decide,
		// under a name of the statement's own, so that a statement the
		// connection has is not parsed again.
		def.server = r.p.reg.unique()
		out := r.prepareLocked(sc, def, seq, false)
		r.mu.Unlock()
		return r.writeServer(sc, appendMsg(out, 'P', def.parseBody(def.server)))
	}
	if sc.prepared.has(def.server) {
		r.synthetic = append(r.synthetic, synthetic{anchor: seq, msg: []byte{'1', 0, 0, 0, 4}})
		r.mu.Unlock()
		r.emitSynthetics()
		return nil
	}
	out := r.prepareLocked(sc, def, seq, false)
	r.mu.Unlock()
	body := def.parseBody(def.server)
	out = appendMsg(out, 'P', body)
	return r.writeServer(sc, out)
}

// parseTaken sends a Parse of a name the client has already: PostgreSQL
// refuses it (42P05), after checking the new text. The Parse goes under
// the old statement's server-side name, to a connection that has it, so
// that the server says so itself and the batch goes on as it would.
func (r *relay) parseTaken(seq uint64, old, def *stmtDef) error {
	sc, err := r.serverFor()
	if err != nil {
		return err
	}
	var out []byte
	name := old.server
	r.mu.Lock()
	switch {
	case sc.prepared.has(name):
	case r.status == 'E':
		// In a failed transaction the server would refuse the old text
		// (25P02), but takes an empty one: under a name of its own, it
		// stands in for the old statement, and the server judges the new
		// text as PostgreSQL would (a syntax error, 25P02, else 42P05).
		stand := &stmtDef{server: r.p.reg.unique(), paramTypes: []byte{0, 0}}
		out = r.prepareLocked(sc, stand, seq, true)
		name = stand.server
	default:
		out = r.prepareLocked(sc, old, seq, true)
	}
	r.mu.Unlock()
	out = appendMsg(out, 'P', def.parseBody(name))
	return r.writeServer(sc, out)
}

// prepareLocked records that def is being prepared on sc and returns the
// Close of the statement sc must forget to stay within its bound, if any.
// inject says the Parse is the relay's own, anchored at seq. r.mu is held.
func (r *relay) prepareLocked(sc *serverConn, def *stmtDef, seq uint64, inject bool) []byte {
	var out []byte
	if evict := sc.prepared.add(def.server); evict != "" {
		r.injected = append(r.injected, injection{anchor: seq, kind: injClose, name: evict})
		r.closes = append(r.closes, sent{evict, seq})
		out = appendMsg(out, 'C', targetBody('S', evict))
	}
	r.parses = append(r.parses, sent{def.server, seq})
	if inject {
		r.injected = append(r.injected, injection{anchor: seq, kind: injParse, name: def.server})
		out = appendMsg(out, 'P', def.parseBody(def.server))
	}
	return out
}

// useStatement forwards a Bind or a Describe of the client's statement
// name, under its server-side name, prepared first on a connection that
// lacks it.
func (r *relay) useStatement(m message, name string) error {
	def := r.stmts.get(name)
	if def == nil {
		// Not one the client prepared (or forgot): the server answers
		// 26000, as it would.
		sc, err := r.serverFor()
		if err != nil {
			return err
		}
		return r.forward(sc, m, nil)
	}
	sc, err := r.serverFor()
	if err != nil {
		return err
	}
	seq := r.ps.Pushed() - 1
	var out []byte
	r.mu.Lock()
	if !sc.prepared.has(def.server) {
		// In a failed transaction the server refuses this Parse (25P02).
		// PostgreSQL would have refused the Bind the same way, except that
		// it checks the Bind's parameter count first (08P01): the one
		// answer that differs, and the transaction is lost either way.
		out = r.prepareLocked(sc, def, seq, true)
	}
	r.mu.Unlock()
	var body []byte
	if m.typ == 'B' {
		b, ok := rewriteBindName(m.body, def.server)
		if !ok {
			return r.forward(sc, m, out)
		}
		body = b
	} else {
		body = targetBody('S', def.server)
	}
	return r.send(sc, out, m, body)
}

// useUnnamed forwards a Bind or Describe of the unnamed statement, parsed
// again first when the server connection's unnamed statement is not the
// client's (the client parsed it on another one).
func (r *relay) useUnnamed(m message) error {
	sc, err := r.serverFor()
	if err != nil {
		return err
	}
	var pre []byte
	r.mu.Lock()
	if d := r.unnamed; d != nil && sc.unnamed != d.server {
		r.injected = append(r.injected, injection{anchor: r.ps.Pushed() - 1, kind: injParse})
		pre = appendMsg(nil, 'P', d.parseBody(""))
		sc.unnamed = d.server
		r.parses = append(r.parses, sent{unnamedMark, r.ps.Pushed() - 1})
	}
	r.mu.Unlock()
	return r.forward(sc, m, pre)
}

// forward writes the client's message as it came, after pre (the relay's
// own requests), and streams the rest of a large one.
func (r *relay) forward(sc *serverConn, m message, pre []byte) error {
	return r.send(sc, pre, m, m.body)
}

// send writes pre, then the client's message m with body in place of the
// body read (a statement name rewritten), and streams the rest of a large
// one; straight into the server connection's buffer.
func (r *relay) send(sc *serverConn, pre []byte, m message, body []byte) error {
	sc.w.Write(pre)
	writeHeader(sc.w, m.typ, len(body)+m.rest())
	// A bufio.Writer's error sticks: the last write reports any.
	if err := r.writeServer(sc, body); err != nil {
		return err
	}
	if m.rest() > 0 {
		if err := r.cr.copyRest(sc.w, m); err != nil {
			return fmt.Errorf("read from client: %w", err)
		}
	}
	return r.flushServer(sc)
}

// writeServer writes to the session's server connection.
func (r *relay) writeServer(sc *serverConn, b []byte) error {
	if _, err := sc.w.Write(b); err != nil {
		return r.serverBroke(sc, fmt.Errorf("write to server: %w", err))
	}
	return nil
}

// flushServer flushes what was written to the server, unless more client
// messages are already read: a pipeline goes out in one write.
func (r *relay) flushServer(sc *serverConn) error {
	if r.cr.buffered() {
		return nil
	}
	if err := sc.w.Flush(); err != nil {
		return r.serverBroke(sc, fmt.Errorf("write to server: %w", err))
	}
	return nil
}

// serverFor returns the session's server connection, getting one from the
// pool when it has none.
//
// It reserves the connection for the client's goroutine until the message
// is handled (see handle).
func (r *relay) serverFor() (*serverConn, error) {
	r.mu.Lock()
	sc, lost := r.server, r.lost
	if sc != nil && lost == nil {
		r.writing, r.reserved = true, true
	}
	r.mu.Unlock()
	if lost != nil {
		return nil, lost
	}
	if sc != nil {
		return sc, nil
	}
	// The client's requests so far are all answered; the one being
	// handled, if it is one, is the next.
	if err := r.cw.Flush(); err != nil {
		return nil, fmt.Errorf("write to client: %w", err)
	}
	start := time.Now()
	wctx, cancelWait := context.WithCancel(r.ctx)
	r.mu.Lock()
	r.waitCancel = cancelWait
	r.mu.Unlock()
	sc, waited, err := r.pl.acquire(wctx)
	r.mu.Lock()
	canceled := r.waitCanceled
	r.waitCancel, r.waitCanceled = nil, false
	r.mu.Unlock()
	cancelWait()
	if canceled && r.ctx.Err() == nil {
		if err == nil {
			// Lent just as the cancel came: the request is not sent.
			r.pl.release(sc, true)
		}
		return nil, errWaitCanceled
	}
	if waited > 0 {
		// A client that gave up waiting has its statement fail with the
		// wait on it too.
		r.ps.NotePoolWait(start, waited)
	}
	if err != nil {
		r.fatalFromErr(err)
		return nil, err
	}
	sc.holder.Store(&holder{connID: r.ps.ConnID(), addr: r.client.RemoteAddr().String()})
	anchor := r.ps.NextAnswer()
	r.mu.Lock()
	r.server = sc
	r.serverDone = make(chan struct{})
	r.stopping = false
	r.writing, r.reserved = true, true
	var out []byte
	if q := setQuery(r.want, sc.params); q != "" {
		r.injected = append(r.injected, injection{anchor: anchor, kind: injQuery})
		out = appendMsg(out, 'Q', []byte(q), []byte{0})
		for k, v := range r.want {
			sc.params[k] = v
		}
	}
	done := r.serverDone
	r.mu.Unlock()
	go r.serverLoop(sc, done)
	if len(out) > 0 {
		if err := r.writeServer(sc, out); err != nil {
			return nil, err
		}
	}
	return sc, nil
}

// serverLoop reads the server connection sc and writes what the client
// must see, until the connection goes back to the pool or breaks.
func (r *relay) serverLoop(sc *serverConn, done chan struct{}) {
	defer close(done)
	for {
		m, err := sc.mr.next()
		if err != nil {
			r.mu.Lock()
			stopping := r.stopping
			r.mu.Unlock()
			if !stopping {
				r.serverBroke(sc, fmt.Errorf("read from server: %w", err))
			}
			return
		}
		// The relay's own answers whose turn came go first: the tracker's
		// oldest unanswered request then is the one this message answers.
		r.emitSynthetics()
		r.mu.Lock()
		forward := r.classifyLocked(sc, m)
		r.mu.Unlock()
		if !forward {
			if err := sc.mr.discardRest(m); err != nil {
				r.serverBroke(sc, fmt.Errorf("read from server: %w", err))
				return
			}
			r.emitSynthetics() // those that waited for this answer
			continue
		}
		if err := r.toClient(sc, m); err != nil {
			r.clientBroke(sc, err)
			return
		}
		if m.typ == 'Z' && len(m.body) == 1 && r.releaseIfIdle(sc) {
			return // back in the pool
		}
		r.emitSynthetics()
	}
}

// classifyLocked decides whether a server message goes to the client, and
// keeps the relay's books: answers to its own requests, the parameters,
// the statements prepared. r.mu is held.
func (r *relay) classifyLocked(sc *serverConn, m message) (forward bool) {
	if m.typ == 'S' && m.whole {
		if k, rest, ok := cstring(m.body); ok {
			if v, _, ok := cstring(rest); ok {
				sc.params[string(k)] = string(v)
			}
		}
	}
	async := m.typ == 'N' || m.typ == 'A' // NoticeResponse, NotificationResponse: the client's
	if len(r.injected) > 0 && !async && r.injected[0].anchor == r.ps.NextAnswer() &&
		(r.injected[0].kind == injQuery || m.typ != 'Z' && !r.errored) {
		// The answer to a request of the relay's own: a ReadyForQuery
		// ends the client's batch unless the request was a Query (the
		// SET), and after an error the server skips the relay's Parses
		// and Closes as it does the client's requests.
		inj := r.injected[0]
		switch {
		case m.typ == 'E' && inj.kind != injQuery:
			// The relay's own Parse or Close failed: the server skips the
			// client's requests up to its Sync, and the client sees why.
			// A statement taken without a server that does not parse is
			// forgotten: its later uses fail as unknown, as after a
			// failed Parse.
			r.injected = r.injected[1:]
			r.noteErrorLocked()
			if inj.kind == injParse && errorField(m.body, 'C') != "25P02" {
				// In a failed transaction the Parse says nothing of the
				// text: the statement stays taken.
				r.stmts.forgetLazy(inj.name)
			}
			return true
		case inj.kind == injParse && m.typ == '1':
			r.injected = r.injected[1:]
			r.confirmParseLocked()
			r.stmts.parsed(inj.name)
		case inj.kind == injClose && m.typ == '3':
			r.injected = r.injected[1:]
			if len(r.closes) > 0 {
				r.closes = r.closes[1:]
			}
		case inj.kind == injQuery && m.typ == 'Z':
			r.injected = r.injected[1:]
		}
		return false
	}
	switch m.typ {
	case '1':
		r.confirmParseLocked()
	case 'E':
		r.noteErrorLocked()
	case 'C':
		if r.mode == ModeTransaction && m.whole {
			if tag, _, ok := cstring(m.body); ok && (string(tag) == "DISCARD ALL" || string(tag) == "DEALLOCATE ALL") {
				r.deallocatedAllLocked(sc)
			}
		}
	case 'S':
		if m.whole {
			if k, rest, ok := cstring(m.body); ok && trackedParams[string(k)] {
				// The client changed it (SET): its next server connection
				// gets it too.
				if v, _, ok := cstring(rest); ok {
					r.want[string(k)] = string(v)
				}
			}
		}
	}
	return true
}

// deallocatedAllLocked handles a client's DISCARD ALL or DEALLOCATE ALL
// that completed: the server connection has no prepared statements left
// but those Parsed after it (still unconfirmed), and the client none but
// those it Parsed after it. r.mu is held.
func (r *relay) deallocatedAllLocked(sc *serverConn) {
	sc.prepared.clear()
	for _, p := range r.parses {
		if p.name != unnamedMark {
			sc.prepared.restore(p.name)
		}
	}
	// Replay the client's later Parses and Closes, already handled, on an
	// empty set, and put right what each found before it.
	at := r.ps.NextAnswer()
	r.stmts.clear()
	for i := range r.journal {
		c := &r.journal[i]
		if c.seq <= at {
			continue
		}
		c.old = r.stmts.get(c.name)
		if c.def == nil {
			r.stmts.remove(c.name)
		} else {
			r.stmts.put(c.name, c.def)
		}
	}
}

// toClient writes a server message to the client, the tracker seeing it
// first; the rest of a large one streams from sc.
func (r *relay) toClient(sc *serverConn, m message) error {
	r.cwMu.Lock()
	defer r.cwMu.Unlock()
	if err := r.ps.ServerMessage(m.typ, m.body, m.size, m.whole); err != nil {
		return err
	}
	if m.typ == 'Z' && len(m.body) == 1 {
		// The books are put right before the client sees the
		// ReadyForQuery, and so before it sends what comes next.
		r.ready(sc, m.body[0])
	}
	writeHeader(r.cw, m.typ, m.size)
	r.cw.Write(m.body)
	if m.rest() > 0 {
		if err := sc.mr.copyRest(r.cw, m); err != nil {
			return fmt.Errorf("relay to client: %w", err)
		}
	}
	if !sc.mr.buffered() {
		if err := r.cw.Flush(); err != nil {
			return fmt.Errorf("write to client: %w", err)
		}
		r.ps.Flushed()
	}
	return nil
}

// ready handles a ReadyForQuery the tracker has seen and the client is
// about to get: the client's statement changes, the Parses and Closes and
// the relay's own requests of the requests it ended are settled.
//
// A client that pipelines past a Sync has sent its next requests before
// this: a Bind there of a statement whose Close the server skipped after
// an error (or whose Parse it skipped) is judged by what the client asked
// for, not by what the server did. Drivers do not use a statement they
// closed.
func (r *relay) ready(sc *serverConn, status byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = status
	// The client's statement changes of the requests this ReadyForQuery
	// ended took, unless the server skipped them after an error.
	end := r.ps.NextAnswer()
	i := 0
	for ; i < len(r.journal) && r.journal[i].seq < end; i++ {
	}
	if r.errored {
		for j := i - 1; j >= 0; j-- {
			if c := r.journal[j]; c.seq >= r.errorAt {
				if c.old == nil {
					r.stmts.remove(c.name)
				} else {
					r.stmts.put(c.name, c.old)
				}
			}
		}
	}
	r.journal = append(r.journal[:0], r.journal[i:]...)
	r.errored = false
	// Parses and Closes the server skipped after an error: the
	// statements are not there, or still there.
	next := r.ps.NextAnswer()
	for len(r.parses) > 0 && r.parses[0].anchor < next {
		if n := r.parses[0].name; n == unnamedMark {
			sc.unnamed = ""
		} else {
			sc.prepared.remove(n)
		}
		r.parses = r.parses[1:]
	}
	for len(r.closes) > 0 && r.closes[0].anchor < next {
		sc.prepared.restore(r.closes[0].name)
		r.closes = r.closes[1:]
	}
	// Requests the server skipped after an error get no answer: neither
	// do the relay's own among them.
	for len(r.injected) > 0 && r.injected[0].anchor < next {
		r.injected = r.injected[1:]
	}
	for len(r.synthetic) > 0 && r.synthetic[0].anchor < next {
		r.synthetic = r.synthetic[1:]
	}
}

// releaseIfIdle handles a ReadyForQuery the client got: in transaction mode the
// server connection goes back to the pool when the session is idle. It
// reports whether it went.
func (r *relay) releaseIfIdle(sc *serverConn) bool {
	r.mu.Lock()
	status := r.status
	release := r.mode == ModeTransaction && status == 'I' && r.ps.Idle() &&
		len(r.injected) == 0 && len(r.synthetic) == 0 && r.server == sc
	if release && r.writing {
		release, r.releaseDue = false, true
	}
	if release {
		r.server = nil
	}
	r.mu.Unlock()
	if release {
		// The client's write error, if any, ends the session in its own
		// goroutine; the server connection is fine either way.
		r.cwMu.Lock()
		r.cw.Flush()
		r.ps.Flushed()
		r.cwMu.Unlock()
		r.pl.release(sc, true)
	}
	return release
}

// sent is a Parse or Close sent to the server: the statement's
// server-side name, and the client request it belongs to (its own, or the
// one it was sent for).
type sent struct {
	name   string
	anchor uint64
}

// noteErrorLocked notes an ErrorResponse of the server: the oldest
// unanswered request failed, and the server skips those after it up to
// its Sync. r.mu is held.
func (r *relay) noteErrorLocked() {
	if !r.errored {
		r.errored, r.errorAt = true, r.ps.NextAnswer()
	}
}

// unnamedMark stands for the unnamed statement in relay.parses.
const unnamedMark = "\x00unnamed"

// confirmParseLocked notes a ParseComplete: the oldest Parse sent took.
// r.mu is held.
func (r *relay) confirmParseLocked() {
	if len(r.parses) > 0 {
		r.parses = r.parses[1:]
	}
}

// answer gives the client the answer to the request it just sent: at once
// when nothing is unanswered, else in turn, after the server's answers to
// the requests before it.
func (r *relay) answer(msg []byte) error {
	seq := r.ps.Pushed() - 1
	r.mu.Lock()
	if r.server == nil {
		r.mu.Unlock()
		return r.writeClientRaw(msg, !r.cr.buffered())
	}
	r.synthetic = append(r.synthetic, synthetic{anchor: seq, msg: msg})
	r.mu.Unlock()
	r.emitSynthetics()
	return nil
}

// emitSynthetics writes the relay's own answers whose turn has come.
func (r *relay) emitSynthetics() {
	for {
		r.mu.Lock()
		// A request of the relay's own sent before the client's request
		// (a SET of tracked parameters) is answered first.
		if len(r.synthetic) == 0 || r.errored || r.synthetic[0].anchor != r.ps.NextAnswer() ||
			len(r.injected) > 0 && r.injected[0].anchor <= r.synthetic[0].anchor {
			r.mu.Unlock()
			return
		}
		s := r.synthetic[0]
		r.synthetic = r.synthetic[1:]
		r.mu.Unlock()
		if err := r.writeClientRaw(s.msg, true); err != nil {
			return
		}
	}
}

// writeClientRaw writes whole messages of the relay's own to the client,
// each shown to the tracker first.
func (r *relay) writeClientRaw(b []byte, flush bool) error {
	r.cwMu.Lock()
	defer r.cwMu.Unlock()
	for p := b; len(p) >= 5; {
		n := int(binary.BigEndian.Uint32(p[1:5]))
		body := p[5 : 1+n]
		if err := r.ps.ServerMessage(p[0], body, len(body), true); err != nil {
			return err
		}
		p = p[1+n:]
	}
	if _, err := r.cw.Write(b); err != nil {
		return fmt.Errorf("write to client: %w", err)
	}
	if flush {
		if err := r.cw.Flush(); err != nil {
			return fmt.Errorf("write to client: %w", err)
		}
		r.ps.Flushed()
	}
	return nil
}

// serverBroke ends the session on a broken server connection: the client
// gets 08006 (after what it has already been sent), and the connection is
// closed.
func (r *relay) serverBroke(sc *serverConn, err error) error {
	r.mu.Lock()
	if r.lost != nil || r.server != sc {
		r.mu.Unlock()
		return err
	}
	r.lost = err
	r.server = nil
	r.mu.Unlock()
	r.p.log.Warn("server connection lost", "pool", r.pl.key.Name(), "conn", r.ps.ConnID(), "err", err)
	r.pl.release(sc, false)
	r.ps.End(wire.SideUpstream, err)
	r.fatal("08006", "pgtrace: lost the server connection: "+err.Error())
	r.client.Close() // the client's goroutine stops reading
	return err
}

// clientBroke ends the session when the client cannot be written to: the
// server connection, in the middle of an answer, is closed.
func (r *relay) clientBroke(sc *serverConn, err error) {
	r.mu.Lock()
	owned := r.server == sc
	if owned {
		r.server = nil
		r.stopping = true
	}
	r.mu.Unlock()
	if owned {
		r.pl.release(sc, false)
	}
	r.client.Close()
}

// end ends the session: the server connection goes back to the pool when
// the client left it idle outside a transaction (after the reset query in
// session mode), else it is closed.
func (r *relay) end(cause error) error {
	r.mu.Lock()
	sc, done := r.server, r.serverDone
	clean := sc != nil && r.status == 'I' && r.ps.Idle() && len(r.injected) == 0 && len(r.synthetic) == 0
	if sc != nil {
		r.stopping = true
		r.server = nil
	}
	lost := r.lost
	r.mu.Unlock()
	r.cwMu.Lock()
	r.cw.Flush()
	r.ps.Flushed()
	r.cwMu.Unlock()
	if lost != nil {
		return lost
	}
	if sc == nil {
		return cause
	}
	// Stop the server's loop: a read deadline in the past interrupts it.
	if !stopLoop(sc, done) || !clean {
		r.pl.release(sc, false)
		return cause
	}
	if r.mode == ModeSession && r.p.cfg.ResetQuery != "" {
		if err := resetServer(sc, r.p.cfg.ResetQuery); err != nil {
			r.p.log.Debug("reset query failed; closing the server connection", "pool", r.pl.key.Name(), "err", err)
			r.pl.release(sc, false)
			return cause
		}
	}
	r.pl.release(sc, true)
	return cause
}

// resetServer runs the reset query on a server connection no client uses,
// reading up to its ReadyForQuery.
func resetServer(sc *serverConn, query string) error {
	sc.conn.SetDeadline(time.Now().Add(5 * time.Second))
	defer sc.conn.SetDeadline(time.Time{})
	if _, err := sc.w.Write(appendMsg(nil, 'Q', []byte(query), []byte{0})); err != nil {
		return err
	}
	if err := sc.w.Flush(); err != nil {
		return err
	}
	var failed error
	for {
		m, err := sc.mr.next()
		if err != nil {
			return err
		}
		if err := sc.mr.discardRest(m); err != nil {
			return err
		}
		switch m.typ {
		case 'E':
			failed = errors.New("reset query failed")
		case 'S':
			if k, rest, ok := cstring(m.body); ok {
				if v, _, ok := cstring(rest); ok {
					sc.params[string(k)] = string(v)
				}
			}
		case 'Z':
			if failed == nil && strings.EqualFold(strings.TrimSpace(query), "DISCARD ALL") {
				sc.prepared.clear()
			}
			if len(m.body) == 1 && m.body[0] != 'I' {
				return errors.New("reset query left a transaction open")
			}
			return failed
		}
	}
}

// fatal writes a FATAL ErrorResponse of the relay's own to the client.
func (r *relay) fatal(code, msg string) {
	body := errorBody("FATAL", code, msg)
	r.writeClientRaw(appendMsg(nil, 'E', body), true)
}

// fatalFromErr tells the client why it got no server connection.
func (r *relay) fatalFromErr(err error) {
	var se interface{ SQLState() string }
	switch {
	case errors.Is(err, errPoolTimeout):
		st := r.pl.stats()
		r.fatal("53300", fmt.Sprintf("pgtrace: no server connection for pool %s within %s (all %d in use); "+
			"raise --pool-size or --pool-max-wait, or shorten the transactions that hold them", st.Name, r.p.cfg.MaxWait, st.Size))
	case errors.Is(err, errPoolClosed), errors.Is(err, context.Canceled):
		r.fatal("57P01", "pgtrace: the proxy is shutting down")
	case errors.As(err, &se):
		r.fatal(se.SQLState(), "pgtrace: cannot log in to the server: "+err.Error())
	default:
		r.fatal("08001", "pgtrace: cannot connect to the server: "+err.Error())
	}
}

// errorBody is the body of an ErrorResponse.
// errorField returns the field of type t (say 'C', the SQLSTATE) of an
// ErrorResponse or NoticeResponse body, or "".
func errorField(body []byte, t byte) string {
	for len(body) > 1 && body[0] != 0 {
		typ := body[0]
		v, rest, ok := cstring(body[1:])
		if !ok {
			return ""
		}
		if typ == t {
			return string(v)
		}
		body = rest
	}
	return ""
}

func errorBody(severity, code, msg string) []byte {
	var b []byte
	for _, f := range []struct {
		t byte
		v string
	}{{'S', severity}, {'V', severity}, {'C', code}, {'M', msg}} {
		b = append(b, f.t)
		b = append(b, f.v...)
		b = append(b, 0)
	}
	return append(b, 0)
}

// setQuery is the SET that gives a server connection with params the
// client's wanted values; "" when it has them all.
func setQuery(want, have paramSet) string {
	var b strings.Builder
	for _, k := range sortedKeys(want) {
		if have[k] == want[k] {
			continue
		}
		fmt.Fprintf(&b, "SET %s TO %s;", quoteIdent(k), quoteLiteral(want[k]))
	}
	return b.String()
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func quoteLiteral(s string) string {
	if strings.ContainsRune(s, '\\') {
		return "E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'"
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// parseOptions reads the settings in a StartupMessage's options parameter
// (wire.StartupOptions), the tracked parameters spelled as PostgreSQL
// reports them.
func parseOptions(opts string) [][2]string {
	kvs := wire.StartupOptions(opts)
	for i := range kvs {
		kvs[i][0] = canonicalParam(kvs[i][0])
	}
	return kvs
}

// unsupportedParam returns the first startup parameter (or setting in
// options) that a pooled session cannot carry to the server connections it
// gets: neither tracked nor in ignore. "" when there is none.
func unsupportedParam(params [][2]string, ignore []string) string {
	ignored := func(k string) bool {
		return slices.ContainsFunc(ignore, func(i string) bool { return strings.EqualFold(i, k) })
	}
	for _, kv := range params {
		k := canonicalParam(kv[0])
		switch {
		case trackedParams[k] || ignored(k):
		case k == "options":
			for _, o := range parseOptions(kv[1]) {
				if !trackedParams[o[0]] && !ignored(o[0]) {
					return "options " + o[0]
				}
			}
		default:
			return k
		}
	}
	return ""
}

// canonicalParam spells a tracked parameter as PostgreSQL reports it.
func canonicalParam(k string) string {
	for t := range trackedParams {
		if strings.EqualFold(t, k) {
			return t
		}
	}
	return k
}

// sortedKeys orders m's names: a stable SET, a stable startup.
func sortedKeys(m paramSet) []string { return slices.Sorted(maps.Keys(m)) }

// setCredential records how the pool's server connections log in: with
// the latest client's, which keeps a SCRAM pass-through key once one came.
func (pl *Pool) setCredential(c ServerCredential) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if c.ClientKey == nil && pl.cred != nil && pl.cred.ClientKey != nil && c.Secret != nil && pl.cred.Secret != nil &&
		c.Secret.Kind == SecretSCRAM && pl.cred.Secret.Kind == SecretSCRAM {
		c.ClientKey = pl.cred.ClientKey
	}
	pl.cred = &c
}

// knownParams are the ParameterStatus values of the pool's first login,
// a copy; nil before it.
func (pl *Pool) knownParams() paramSet {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.params == nil {
		return nil
	}
	return pl.params.clone()
}
