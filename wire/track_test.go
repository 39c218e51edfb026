package wire

import (
	"bytes"
	"io"
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
	return &scripted{t: t, s: s, rec: rec, fc: &frontendCopier{s: s}, bc: &backendCopier{s: s}}
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
		reused      bool
	}{{"select a", "", false}, {"select b", "22012", false}, {"select a", "", true}}
	for i, w := range want {
		st := evs[i].Stmt
		if st.Text != w.text || st.SQLState != w.state || st.Reused != w.reused || st.TxStatus != TxIdle {
			t.Errorf("event %d: %+v, want %+v", i, st, w)
		}
	}
	if sc.s.qhead != len(sc.s.queue) {
		t.Errorf("queue not drained: %d of %d", sc.s.qhead, len(sc.s.queue))
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
	if sc.s.qhead != len(sc.s.queue) {
		t.Errorf("queue not drained: %d of %d", sc.s.qhead, len(sc.s.queue))
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
	// Execute with a row limit: PortalSuspended.
	sc.server(parseComplete, bindComplete, dataRow(), dataRow(), msg('s', ""), rfq("T"))
	evs := sc.events(2)
	if st := evs[0].Stmt; !st.Copy || st.Rows != 2 || st.BytesIn != int64(len("copy t from stdin")+6+7+7+5) {
		t.Errorf("copy: %+v", st)
	}
	if st := evs[1].Stmt; st.Outcome != OutcomeSuspended || st.Rows != 2 || st.PortalName != "p" || st.TxStatus != TxInBlock {
		t.Errorf("suspended: %+v", st)
	}
}

// TestTrackReused follows DESIGN.md decision 5 as the relay applies it: the
// executions in a Parse's own batch, or in the next batch when none ran in
// its own (pgx's prepare-then-execute round trips), are fresh; any later one
// is a reuse.
func TestTrackReused(t *testing.T) {
	sc := newScripted(t)
	sc.client(
		parseMsg("p", "select p"), describeMsg("Sp"), syncMsg, // batch 1: prepare only
		bindMsg("", "p"), execMsg(""), bindMsg("", "p"), execMsg(""), syncMsg, // batch 2: fresh, fresh
		bindMsg("", "p"), execMsg(""), syncMsg, // batch 3: reused
		parseMsg("q", "select q"), bindMsg("", "q"), execMsg(""), syncMsg, // batch 4: fresh
		bindMsg("", "q"), execMsg(""), syncMsg, // batch 5: reused (q ran in its own batch)
		parseMsg("r", "select r"), syncMsg, syncMsg, // batches 6, 7
		bindMsg("", "r"), execMsg(""), syncMsg, // batch 8: reused (two batches later)
	)
	sc.server(
		parseComplete, noData, rfq("I"),
		bindComplete, cc("SELECT 0"), bindComplete, cc("SELECT 0"), rfq("I"),
		bindComplete, cc("SELECT 0"), rfq("I"),
		parseComplete, bindComplete, cc("SELECT 0"), rfq("I"),
		bindComplete, cc("SELECT 0"), rfq("I"),
		parseComplete, rfq("I"), rfq("I"),
		bindComplete, cc("SELECT 0"), rfq("I"),
	)
	want := []struct {
		text   string
		reused bool
	}{{"select p", false}, {"select p", false}, {"select p", true}, {"select q", false}, {"select q", true}, {"select r", true}}
	// Wait for the statements themselves: TxStatus events (the empty
	// batches') come in between.
	statements := func(evs []Event) (out []Event) {
		for _, e := range evs {
			if e.Kind == StatementDone {
				out = append(out, e)
			}
		}
		return out
	}
	evs := sc.rec.wait(t, "6 statements", func(evs []Event) bool { return len(statements(evs)) >= len(want) })
	got := statements(evs)
	if len(got) != len(want) {
		t.Fatalf("%d statements, want %d:\n%s", len(got), len(want), dumpEvents(evs))
	}
	for i, w := range want {
		if st := got[i].Stmt; st.Text != w.text || st.Reused != w.reused {
			t.Errorf("statement %d: text %q reused %v, want %q %v", i, st.Text, st.Reused, w.text, w.reused)
		}
	}
}
