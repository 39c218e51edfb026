package wire

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"
)

// scripted drives a session's two observers with hand-written messages, no
// sockets: client messages through the frontendCopier, server messages
// through the backendCopier.
type scripted struct {
	t   *testing.T
	s   *session
	rec *recorder
	fc  *frontendCopier
	bc  *backendCopier
}

func newScripted(t *testing.T) *scripted {
	rec := newRecorder()
	srv := &Server{Observer: rec, Upstream: "up:5432", Logger: testLogger(t)}
	srv.init()
	t.Cleanup(func() { srv.Shutdown(t.Context()) })
	s := &session{srv: srv, log: srv.log, ready: true}
	s.fe = &frontendCopier{s: s}
	return &scripted{t: t, s: s, rec: rec, fc: s.fe, bc: &backendCopier{s: s}}
}

func (sc *scripted) run(obs frameObserver, whole *[256]bool, msgs ...[]byte) {
	sc.t.Helper()
	f := newFramer(bytes.NewReader(concat(msgs...)), io.Discard, whole)
	if err := f.run(obs); err == nil || !strings.Contains(err.Error(), "EOF") {
		sc.t.Fatalf("framer: %v", err)
	}
}

func (sc *scripted) client(msgs ...[]byte) { sc.t.Helper(); sc.run(sc.fc, frontendWhole, msgs...) }
func (sc *scripted) server(msgs ...[]byte) { sc.t.Helper(); sc.run(sc.bc, backendWhole, msgs...) }

// events returns all events once n have arrived.
func (sc *scripted) events(n int) []Event {
	sc.t.Helper()
	return sc.rec.wait(sc.t, "events", func(evs []Event) bool { return len(evs) >= n })
}

func parseMsg(name, text string) []byte { return msg('P', name+"\x00"+text+"\x00\x00\x00") }
func bindMsg(portal, stmt string) []byte {
	return msg('B', portal+"\x00"+stmt+"\x00\x00\x00\x00\x00\x00\x00")
}
func execMsg(portal string) []byte { return msg('E', portal+"\x00\x00\x00\x00\x00") }
func errMsg(code string) []byte {
	return msg('E', "SERROR\x00VERROR\x00C"+code+"\x00Mfailed\x00\x00")
}

var (
	syncMsg       = msg('S', "")
	parseComplete = msg('1', "")
	bindComplete  = msg('2', "")
	noData        = msg('n', "")
)

func cc(tag string) []byte        { return msg('C', tag+"\x00") }
func rfq(status string) []byte    { return msg('Z', status) }
func dataRow() []byte             { return msg('D', "\x00\x01\x00\x00\x00\x01x") }
func describeMsg(k string) []byte { return msg('D', k+"\x00") }

func TestTrackErrorSkipsToSync(t *testing.T) {
	sc := newScripted(t)
	// Batch 1: a, b (fails at Bind), c — then Sync. Batch 2: d, Sync.
	sc.client(
		parseMsg("a", "select a"), bindMsg("", "a"), execMsg(""),
		parseMsg("b", "select b"), bindMsg("", "b"), execMsg(""),
		parseMsg("c", "select c"), bindMsg("", "c"), execMsg(""),
		syncMsg,
		bindMsg("", "a"), execMsg(""), syncMsg,
	)
	sc.server(
		parseComplete, bindComplete, dataRow(), cc("SELECT 1"),
		parseComplete, errMsg("22012"), // b's Bind fails; the rest is skipped
		rfq("I"),
		bindComplete, cc("SELECT 0"), rfq("I"),
	)
	evs := sc.events(3)
	if len(evs) != 3 {
		t.Fatalf("%d events:\n%s", len(evs), dumpEvents(evs))
	}
	want := []struct {
		text, state string
	}{{"select a", ""}, {"select b", "22012"}, {"select a", ""}}
	for i, w := range want {
		st := evs[i].Stmt
		if st.Text != w.text || st.SQLState != w.state || st.TxStatus != TxIdle {
			t.Errorf("event %d: %+v, want %+v", i, st, w)
		}
	}
	if n := sc.s.reqs.len(); n != 0 {
		t.Errorf("queue not drained: %d requests left", n)
	}
}

func TestTrackFailedPrepare(t *testing.T) {
	sc := newScripted(t)
	// pgx's prepare: Parse, Describe, Sync, and the Parse fails.
	sc.client(parseMsg("s1", "select from nosuch"), describeMsg("S"), syncMsg)
	sc.server(errMsg("42P01"), rfq("I"))
	evs := sc.events(1)
	st := evs[0].Stmt
	if st.Text != "select from nosuch" || st.StatementName != "s1" || st.SQLState != "42P01" || st.Protocol != ProtocolExtended {
		t.Errorf("failed prepare: %+v", st)
	}
	// A Describe answered with NoData is consumed too.
	sc.client(parseMsg("s2", "listen x"), describeMsg("S"), syncMsg)
	sc.server(parseComplete, msg('t', "\x00\x00"), noData, rfq("I"))
	if n := sc.s.reqs.len(); n != 0 {
		t.Errorf("queue not drained: %d requests left", n)
	}
}

func TestTrackTxStatusEvent(t *testing.T) {
	sc := newScripted(t)
	sc.s.info.TxStatus = TxIdle
	// A status change at a ReadyForQuery that ends no statement.
	sc.client(syncMsg)
	sc.server(rfq("T"))
	evs := sc.events(1)
	if evs[0].Kind != TxStatus || evs[0].Conn.TxStatus != TxInBlock {
		t.Errorf("event: %+v", evs[0])
	}
	// No change, no event: a following statement's event comes next.
	sc.client(syncMsg, msg('Q', "commit\x00"))
	sc.server(rfq("T"), cc("COMMIT"), rfq("I"))
	evs = sc.events(2)
	if evs[1].Kind != StatementDone || evs[1].Stmt.TxStatus != TxIdle {
		t.Errorf("event: %+v", evs[1])
	}
}

func TestTrackHeldCap(t *testing.T) {
	sc := newScripted(t)
	const n = maxHeld + 10
	var req, resp [][]byte
	req = append(req, parseMsg("", "select 1"))
	resp = append(resp, parseComplete)
	for i := 0; i < n; i++ {
		req = append(req, bindMsg("", ""), execMsg(""))
		resp = append(resp, bindComplete, cc("SELECT 1"))
	}
	req = append(req, syncMsg)
	resp = append(resp, rfq("I"))
	sc.client(req...)
	sc.server(resp...)
	evs := sc.events(n)
	early := 0
	for _, e := range evs {
		if e.Stmt.TxStatus == 0 {
			early++
		} else if e.Stmt.TxStatus != TxIdle {
			t.Fatalf("TxStatus %q", e.Stmt.TxStatus)
		}
	}
	if early != maxHeld {
		t.Errorf("%d events sent early, want %d", early, maxHeld)
	}
}

func TestTrackSimpleCopyAndSuspend(t *testing.T) {
	sc := newScripted(t)
	sc.client(msg('Q', "copy t from stdin\x00"), msg('d', "1\n"), msg('d', "2\n"), msg('c', ""))
	sc.server(msg('G', "\x00\x00\x00"), cc("COPY 2"), rfq("I"))
	sc.client(parseMsg("", "select g"), bindMsg("p", ""), execMsg("p"), syncMsg)
	// Execute with a row limit: PortalSuspended. The portal's statement
	// goes on until the portal is closed.
	sc.server(parseComplete, bindComplete, dataRow(), dataRow(), msg('s', ""), rfq("T"))
	sc.client(msg('C', "Pp\x00"), syncMsg)
	sc.server(msg('3', ""), rfq("T"))
	evs := statementEvents(sc.rec.wait(t, "2 statements", func(evs []Event) bool { return len(statementEvents(evs)) >= 2 }))
	if st := evs[0].Stmt; !st.Copy || st.Rows != 2 || st.BytesIn != int64(len("copy t from stdin")+6+7+7+5) {
		t.Errorf("copy: %+v", st)
	}
	if st := evs[1].Stmt; st.Outcome != OutcomeSuspended || st.Rows != 2 || st.PortalName != "p" || st.TxStatus != TxInBlock || st.Fetches != 1 {
		t.Errorf("suspended: %+v", st)
	}
}

// TestTrackNamedStatementText follows DESIGN.md decision 5 as the relay
// applies it: every execution of a named statement carries the text the
// statement was parsed from (and so that text's comment), however many
// batches later; a Close, or a new Parse of the name, changes that.
func TestTrackNamedStatementText(t *testing.T) {
	sc := newScripted(t)
	sc.client(
		parseMsg("p", "select p /*a*/"), describeMsg("Sp"), syncMsg, // prepare only
		bindMsg("", "p"), execMsg(""), bindMsg("", "p"), execMsg(""), syncMsg,
		syncMsg, syncMsg,
		bindMsg("", "p"), execMsg(""), syncMsg, // batches later
		msg('C', "Sp\x00"), parseMsg("p", "select p /*b*/"), bindMsg("", "p"), execMsg(""), syncMsg,
		bindMsg("", "p"), execMsg(""), syncMsg,
	)
	sc.server(
		parseComplete, noData, rfq("I"),
		bindComplete, cc("SELECT 0"), bindComplete, cc("SELECT 0"), rfq("I"),
		rfq("I"), rfq("I"),
		bindComplete, cc("SELECT 0"), rfq("I"),
		msg('3', ""), parseComplete, bindComplete, cc("SELECT 0"), rfq("I"),
		bindComplete, cc("SELECT 0"), rfq("I"),
	)
	want := []string{"select p /*a*/", "select p /*a*/", "select p /*a*/", "select p /*b*/", "select p /*b*/"}
	got := statementEvents(sc.rec.wait(t, "5 statements", func(evs []Event) bool { return len(statementEvents(evs)) >= len(want) }))
	if len(got) != len(want) {
		t.Fatalf("%d statements, want %d", len(got), len(want))
	}
	for i, w := range want {
		if st := got[i].Stmt; st.Text != w || st.StatementName != "p" || st.Fetches != 1 {
			t.Errorf("statement %d: text %q name %q fetches %d, want %q", i, st.Text, st.StatementName, st.Fetches, w)
		}
	}
}

// statementEvents are the StatementDone events of evs: TxStatus events
// (the empty batches') come in between.
func statementEvents(evs []Event) (out []Event) {
	for _, e := range evs {
		if e.Kind == StatementDone {
			out = append(out, e)
		}
	}
	return out
}

// TestTrackSQLPrepared covers the names that SQL statements change: PREPARE
// and EXECUTE, DEALLOCATE and DISCARD ALL, shared with the protocol's.
func TestTrackSQLPrepared(t *testing.T) {
	q := func(text string) []byte { return msg('Q', text+"\x00") }
	// A round trip: the client's messages, then the server's answers.
	type step struct{ client, server [][]byte }
	rt := func(c ...[]byte) func(s ...[]byte) step {
		return func(s ...[]byte) step { return step{c, s} }
	}
	tests := []struct {
		name  string
		steps []step
		want  []Statement // Text, PreparedText, PreparedSQL, StatementName, SQLState
	}{{
		name: "PREPARE then EXECUTE",
		steps: []step{
			rt(q("/*a*/ PREPARE Q1 (int) AS select $1"))(cc("PREPARE"), rfq("I")),
			rt(q("execute q1(1)"))(cc("SELECT 1"), rfq("I")),
			rt(q(`EXECUTE "q1" (2) /*b*/`))(cc("SELECT 1"), rfq("I")),
		},
		want: []Statement{
			{Text: "/*a*/ PREPARE Q1 (int) AS select $1"},
			{Text: "execute q1(1)", PreparedText: "/*a*/ PREPARE Q1 (int) AS select $1", PreparedSQL: true, StatementName: "q1"},
			{Text: `EXECUTE "q1" (2) /*b*/`, PreparedText: "/*a*/ PREPARE Q1 (int) AS select $1", PreparedSQL: true, StatementName: "q1"},
		},
	}, {
		name: "a failed PREPARE defines nothing",
		steps: []step{
			rt(q("prepare s2 as select nosuch"))(errMsg("42703"), rfq("I")),
			rt(q("execute s2"))(errMsg("26000"), rfq("I")),
		},
		want: []Statement{
			{Text: "prepare s2 as select nosuch", SQLState: "42703"},
			{Text: "execute s2", StatementName: "s2", SQLState: "26000"},
		},
	}, {
		name: "EXECUTE of a protocol statement, then Bind of a SQL one",
		steps: []step{
			rt(parseMsg("p3", "select 3"), syncMsg)(parseComplete, rfq("I")),
			rt(q("execute p3"))(cc("SELECT 1"), rfq("I")),
			rt(q("prepare s3 as select 3"))(cc("PREPARE"), rfq("I")),
			rt(bindMsg("", "s3"), execMsg(""), syncMsg)(bindComplete, cc("SELECT 1"), rfq("I")),
		},
		want: []Statement{
			{Text: "execute p3", PreparedText: "select 3", StatementName: "p3"},
			{Text: "prepare s3 as select 3"},
			{Text: "prepare s3 as select 3", PreparedSQL: true, StatementName: "s3"},
		},
	}, {
		name: "DEALLOCATE drops a protocol statement",
		steps: []step{
			rt(parseMsg("p4", "select 4"), syncMsg)(parseComplete, rfq("I")),
			rt(q("deallocate prepare p4"))(cc("DEALLOCATE"), rfq("I")),
			rt(bindMsg("", "p4"), execMsg(""), syncMsg)(errMsg("26000"), rfq("I")),
		},
		want: []Statement{
			{Text: "deallocate prepare p4"},
			{SQLState: "26000"},
		},
	}, {
		name: "a failed DISCARD ALL drops nothing",
		steps: []step{
			rt(parseMsg("p5", "select 5"), syncMsg)(parseComplete, rfq("I")),
			rt(q("begin"))(cc("BEGIN"), rfq("T")),
			rt(q("discard all"))(errMsg("25001"), rfq("E")),
			rt(q("rollback"))(cc("ROLLBACK"), rfq("I")),
			rt(bindMsg("", "p5"), execMsg(""), syncMsg)(bindComplete, cc("SELECT 1"), rfq("I")),
		},
		want: []Statement{
			{Text: "begin"}, {Text: "discard all", SQLState: "25001"}, {Text: "rollback"},
			{Text: "select 5", StatementName: "p5"},
		},
	}, {
		name: "DISCARD ALL drops every name but the unnamed statement",
		steps: []step{
			rt(parseMsg("p6", "select 6"), parseMsg("", "select 0"), syncMsg)(parseComplete, parseComplete, rfq("I")),
			rt(q("DISCARD ALL;"))(cc("DISCARD ALL"), rfq("I")),
			rt(bindMsg("", "p6"), execMsg(""), syncMsg)(errMsg("26000"), rfq("I")),
			rt(bindMsg("", ""), execMsg(""), syncMsg)(bindComplete, cc("SELECT 1"), rfq("I")),
		},
		want: []Statement{
			{Text: "DISCARD ALL;"},
			{SQLState: "26000"},
			{Text: "select 0"},
		},
	}, {
		name: "a DEALLOCATE pipelined behind a Parse of the name",
		steps: []step{
			rt(parseMsg("p7", "select 7"), syncMsg, q("deallocate p7"), parseMsg("p7", "select 77"), syncMsg,
				bindMsg("", "p7"), execMsg(""), syncMsg)(
				parseComplete, rfq("I"), cc("DEALLOCATE"), rfq("I"), parseComplete, rfq("I"),
				bindComplete, cc("SELECT 1"), rfq("I")),
		},
		want: []Statement{
			{Text: "deallocate p7"},
			{Text: "select 77", StatementName: "p7"},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := newScripted(t)
			for _, st := range tt.steps {
				sc.client(st.client...)
				sc.server(st.server...)
			}
			got := statementEvents(sc.rec.wait(t, "statements", func(evs []Event) bool { return len(statementEvents(evs)) >= len(tt.want) }))
			if len(got) != len(tt.want) {
				t.Fatalf("%d statements, want %d", len(got), len(tt.want))
			}
			for i, w := range tt.want {
				st := got[i].Stmt
				if st.Text != w.Text || st.PreparedText != w.PreparedText || st.PreparedSQL != w.PreparedSQL ||
					st.StatementName != w.StatementName || st.SQLState != w.SQLState {
					t.Errorf("statement %d: text %q prepared %q sql %v name %q sqlstate %q\nwant text %q prepared %q sql %v name %q sqlstate %q",
						i, st.Text, st.PreparedText, st.PreparedSQL, st.StatementName, st.SQLState,
						w.Text, w.PreparedText, w.PreparedSQL, w.StatementName, w.SQLState)
				}
			}
			if n := len(sc.fc.stmts); n > 2 {
				t.Errorf("%d statement names kept", n)
			}
		})
	}
}

// TestTrackResumedPortal: a portal run in several Executes is one
// statement, from its first Execute to its CommandComplete, its close, its
// replacement or the end of its transaction.
func TestTrackResumedPortal(t *testing.T) {
	suspended := msg('s', "")
	tests := []struct {
		name        string
		client      [][]byte
		server      [][]byte
		want        []Statement // Outcome, Rows, Fetches, PortalName, CommandTag
		wantPending int         // portals still suspended at the end
	}{{
		name: "to CommandComplete across batches",
		client: [][]byte{
			parseMsg("s", "select g"), bindMsg("c", "s"), execMsg("c"), syncMsg,
			execMsg("c"), syncMsg,
			execMsg("c"), syncMsg,
		},
		server: [][]byte{
			parseComplete, bindComplete, dataRow(), dataRow(), suspended, rfq("T"),
			dataRow(), dataRow(), suspended, rfq("T"),
			dataRow(), cc("SELECT 1"), rfq("T"),
		},
		want: []Statement{{Outcome: OutcomeComplete, Rows: 5, Fetches: 3, PortalName: "c", CommandTag: "SELECT 1"}},
	}, {
		name: "closed before its end",
		client: [][]byte{
			parseMsg("s", "select g"), bindMsg("c", "s"), execMsg("c"), execMsg("c"), syncMsg,
			msg('C', "Pc\x00"), syncMsg,
		},
		server: [][]byte{
			parseComplete, bindComplete, dataRow(), suspended, dataRow(), suspended, rfq("T"),
			msg('3', ""), rfq("T"),
		},
		want: []Statement{{Outcome: OutcomeSuspended, Rows: 2, Fetches: 2, PortalName: "c"}},
	}, {
		name: "the unnamed portal replaced by a Bind",
		client: [][]byte{
			parseMsg("", "select g"), bindMsg("", ""), execMsg(""), syncMsg,
			bindMsg("", ""), execMsg(""), syncMsg,
		},
		server: [][]byte{
			parseComplete, bindComplete, dataRow(), suspended, rfq("T"),
			bindComplete, dataRow(), cc("SELECT 1"), rfq("T"),
		},
		want: []Statement{
			{Outcome: OutcomeSuspended, Rows: 1, Fetches: 1},
			{Outcome: OutcomeComplete, Rows: 1, Fetches: 1, CommandTag: "SELECT 1"},
		},
	}, {
		name: "the unnamed portal replaced by a Query",
		client: [][]byte{
			parseMsg("", "select g"), bindMsg("", ""), execMsg(""), syncMsg,
			msg('Q', "select 1\x00"),
		},
		server: [][]byte{
			parseComplete, bindComplete, dataRow(), suspended, rfq("T"),
			dataRow(), cc("SELECT 1"), rfq("T"),
		},
		want: []Statement{
			{Outcome: OutcomeSuspended, Rows: 1, Fetches: 1},
			{Outcome: OutcomeComplete, Rows: 1, CommandTag: "SELECT 1"},
		},
	}, {
		name: "ended with its transaction",
		client: [][]byte{
			parseMsg("s", "select g"), bindMsg("c", "s"), execMsg("c"), syncMsg,
			execMsg("c"), syncMsg,
			msg('Q', "commit\x00"),
		},
		server: [][]byte{
			parseComplete, bindComplete, dataRow(), suspended, rfq("T"),
			dataRow(), suspended, rfq("T"),
			cc("COMMIT"), rfq("I"),
		},
		want: []Statement{
			{Outcome: OutcomeSuspended, Rows: 2, Fetches: 2, PortalName: "c"},
			{Outcome: OutcomeComplete, CommandTag: "COMMIT"},
		},
	}, {
		name: "a failing fetch fails the statement",
		client: [][]byte{
			parseMsg("s", "select 1/g"), bindMsg("c", "s"), execMsg("c"), syncMsg,
			execMsg("c"), syncMsg,
		},
		server: [][]byte{
			parseComplete, bindComplete, dataRow(), suspended, rfq("T"),
			errMsg("22012"), rfq("E"),
		},
		want: []Statement{{Outcome: OutcomeError, Rows: 1, Fetches: 2, PortalName: "c"}},
	}, {
		name: "still open",
		client: [][]byte{
			parseMsg("s", "select g"), bindMsg("c", "s"), execMsg("c"), syncMsg,
			msg('Q', "select 1\x00"),
		},
		server: [][]byte{
			parseComplete, bindComplete, dataRow(), suspended, rfq("T"),
			dataRow(), cc("SELECT 1"), rfq("T"),
		},
		want:        []Statement{{Outcome: OutcomeComplete, Rows: 1, CommandTag: "SELECT 1"}},
		wantPending: 1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := newScripted(t)
			sc.client(tt.client...)
			sc.server(tt.server...)
			got := statementEvents(sc.rec.wait(t, "statements", func(evs []Event) bool { return len(statementEvents(evs)) >= len(tt.want) }))
			if len(got) != len(tt.want) {
				t.Fatalf("%d statements, want %d:\n%s", len(got), len(tt.want), dumpEvents(got))
			}
			for i, w := range tt.want {
				st := got[i].Stmt
				if st.Outcome != w.Outcome || st.Rows != w.Rows || st.Fetches != w.Fetches || st.PortalName != w.PortalName || st.CommandTag != w.CommandTag {
					t.Errorf("statement %d: outcome %d rows %d fetches %d portal %q tag %q\nwant outcome %d rows %d fetches %d portal %q tag %q",
						i, st.Outcome, st.Rows, st.Fetches, st.PortalName, st.CommandTag,
						w.Outcome, w.Rows, w.Fetches, w.PortalName, w.CommandTag)
				}
				if st.End.Before(st.Start) {
					t.Errorf("statement %d ends %v before it starts %v", i, st.End, st.Start)
				}
			}
			if n := len(sc.bc.suspended); n != tt.wantPending {
				t.Errorf("%d portals still suspended, want %d", n, tt.wantPending)
			}
		})
	}
}

// TestTrackPreparedCap: a session that prepares more names than the relay
// keeps has them forgotten and counted, and its later statements are
// tracked as before.
func TestTrackPreparedCap(t *testing.T) {
	sc := newScripted(t)
	var req, resp [][]byte
	for i := 0; i <= maxPrepared; i++ {
		req = append(req, parseMsg("s"+strconv.Itoa(i), "select "+strconv.Itoa(i)))
		resp = append(resp, parseComplete)
	}
	req = append(req, syncMsg, bindMsg("", "s"+strconv.Itoa(maxPrepared)), execMsg(""), syncMsg)
	resp = append(resp, rfq("I"), bindComplete, cc("SELECT 1"), rfq("I"))
	sc.client(req...)
	sc.server(resp...)
	// Other events may come first: wait for the statement's.
	evs := statementEvents(sc.rec.wait(t, "the statement event", func(evs []Event) bool { return len(statementEvents(evs)) >= 1 }))
	if got := sc.s.srv.ForgottenStatements(); got != maxPrepared {
		t.Errorf("ForgottenStatements = %d, want %d", got, maxPrepared)
	}
	if len(evs) != 1 || evs[0].Stmt.Text != "select "+strconv.Itoa(maxPrepared) {
		t.Errorf("statement after the cap: %s", dumpEvents(evs))
	}
	if n := len(sc.fc.stmts); n != 1 {
		t.Errorf("%d names kept, want 1", n)
	}
}
