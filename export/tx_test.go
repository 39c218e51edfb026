package export

import (
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func spansByName(spans []sdktrace.ReadOnlySpan) map[string][]sdktrace.ReadOnlySpan {
	m := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		m[s.Name()] = append(m[s.Name()], s)
	}
	return m
}

func TestTransactionSpan(t *testing.T) {
	none := fingerprint.TraceContext{}
	tests := []struct {
		name string
		// statements in order; the first is BEGIN
		stmts       []*detector.Statement
		closeAt     time.Time // zero: the last statement ends the transaction
		wantParent  trace.SpanID
		wantOutcome string
		wantFailed  bool
	}{
		{
			name: "parent from first statement with context",
			stmts: []*detector.Statement{
				stmt(qBegin, t0, time.Millisecond, none),
				stmt(qSelect, t0.Add(2*time.Millisecond), time.Millisecond, none), // held until the context arrives
				stmt(qInsert, t0.Add(4*time.Millisecond), time.Millisecond, parentTC),
				stmt(qCommit, t0.Add(6*time.Millisecond), time.Millisecond, none),
			},
			wantParent:  parentTC.SpanID,
			wantOutcome: "commit",
		},
		{
			name: "no context: root",
			stmts: []*detector.Statement{
				stmt(qBegin, t0, time.Millisecond, none),
				stmt(qInsert, t0.Add(2*time.Millisecond), time.Millisecond, none),
				stmt(&fingerprint.Query{Fingerprint: "00000000000000b3", Normalized: "ROLLBACK", Summary: "ROLLBACK", Operation: "ROLLBACK", TxControl: fingerprint.TxRollback},
					t0.Add(4*time.Millisecond), time.Millisecond, none),
			},
			wantOutcome: "rollback",
		},
		{
			name: "failed statement then commit is a rollback",
			stmts: []*detector.Statement{
				stmt(qBegin, t0, time.Millisecond, parentTC),
				func() *detector.Statement {
					s := failed(stmt(qInsert, t0.Add(2*time.Millisecond), time.Millisecond, parentTC), "23505", "duplicate key")
					s.Stmt.TxStatus = wire.TxFailed
					return s
				}(),
				stmt(qCommit, t0.Add(4*time.Millisecond), time.Millisecond, none),
			},
			wantParent:  parentTC.SpanID,
			wantOutcome: "rollback",
			wantFailed:  true,
		},
		{
			name: "connection closed mid-transaction",
			stmts: []*detector.Statement{
				stmt(qBegin, t0, time.Millisecond, none),
				stmt(qSelect, t0.Add(2*time.Millisecond), time.Millisecond, parentTC),
			},
			closeAt:     t0.Add(10 * time.Millisecond),
			wantParent:  parentTC.SpanID,
			wantOutcome: "closed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTelEnv(t)
			h := newHarness(t, Config{KeepSlowSpans: true})
			for _, s := range tt.stmts[:len(tt.stmts)-1] {
				if s.Stmt.TxStatus == wire.TxIdle {
					s.Stmt.TxStatus = wire.TxInBlock
				}
			}
			for _, s := range tt.stmts {
				h.e.Statement(s, detector.Verdict{})
			}
			end := tt.stmts[len(tt.stmts)-1].Stmt.End
			if !tt.closeAt.IsZero() {
				if n := len(spansByName(h.spans.Ended())["transaction"]); n != 0 {
					t.Fatalf("transaction span ended before the connection closed")
				}
				h.e.Conn(wire.Event{Kind: wire.ConnClosed, Time: tt.closeAt, Conn: testConn, Side: wire.SideClient})
				end = tt.closeAt
			}
			byName := spansByName(h.spans.Ended())
			txs := byName["transaction"]
			if len(txs) != 1 {
				t.Fatalf("got %d transaction spans, want 1 (spans: %v)", len(txs), byName)
			}
			tx := txs[0]
			if tx.Parent().SpanID() != tt.wantParent {
				t.Errorf("transaction parent = %v, want %v", tx.Parent().SpanID(), tt.wantParent)
			}
			if !tx.StartTime().Equal(t0) || !tx.EndTime().Equal(end) {
				t.Errorf("transaction %v…%v, want BEGIN's start %v … %v", tx.StartTime(), tx.EndTime(), t0, end)
			}
			a := attrMap(tx.Attributes())
			if a["pgtrace.transaction.outcome"] != tt.wantOutcome || a["pgtrace.transaction.statements"] != int64(len(tt.stmts)) {
				t.Errorf("transaction attributes %v, want outcome %s and %d statements", a, tt.wantOutcome, len(tt.stmts))
			}
			if failed := tx.Status().Code.String() == "Error"; failed != tt.wantFailed {
				t.Errorf("transaction status %v, want failed=%v", tx.Status(), tt.wantFailed)
			}
			var children int
			for _, s := range h.spans.Ended() {
				if s.Name() == "transaction" {
					continue
				}
				children++
				if s.Parent().SpanID() != tx.SpanContext().SpanID() || s.SpanContext().TraceID() != tx.SpanContext().TraceID() {
					t.Errorf("span %s parent %v, want the transaction span %v", s.Name(), s.Parent().SpanID(), tx.SpanContext().SpanID())
				}
			}
			if children != len(tt.stmts) {
				t.Errorf("got %d statement spans, want %d", children, len(tt.stmts))
			}
			h.e.mu.Lock()
			open := len(h.e.conns)
			h.e.mu.Unlock()
			if !tt.closeAt.IsZero() && open != 0 {
				t.Errorf("%d connection states left after ConnClosed", open)
			}
			hist := h.metrics(t)["pgtrace.transaction.duration"].Data.(metricdata.Histogram[float64])
			if len(hist.DataPoints) != 1 || hist.DataPoints[0].Count != 1 || hist.DataPoints[0].Sum != end.Sub(t0).Seconds() {
				t.Errorf("transaction duration = %+v, want one of %v", hist.DataPoints, end.Sub(t0))
			}
		})
	}
}

func TestMultiStatementTransaction(t *testing.T) {
	// "BEGIN; INSERT …; COMMIT; SELECT …" in one Query: every statement carries
	// the final ReadyForQuery's status, 'I'. The boundaries come from the
	// operations.
	clearOTelEnv(t)
	h := newHarness(t, Config{})
	for i, q := range []*fingerprint.Query{qBegin, qInsert, qCommit, qSelect} {
		s := stmt(q, t0.Add(time.Duration(i)*time.Millisecond), time.Millisecond, parentTC)
		s.Stmt.Protocol, s.Stmt.Index = wire.ProtocolSimple, i
		h.e.Statement(s, detector.Verdict{})
	}
	byName := spansByName(h.spans.Ended())
	tx := byName["transaction"]
	if len(tx) != 1 {
		t.Fatalf("got %d transaction spans, want 1", len(tx))
	}
	if p := byName["SELECT users"][0].Parent().SpanID(); p != parentTC.SpanID {
		t.Errorf("statement after COMMIT has parent %v, want the traceparent's %v", p, parentTC.SpanID)
	}
	if p := byName["INSERT orders"][0].Parent().SpanID(); p != tx[0].SpanContext().SpanID() {
		t.Errorf("INSERT parent %v, want the transaction span", p)
	}
}

func TestSweepLostConnections(t *testing.T) {
	clearOTelEnv(t)
	live := map[uint64]bool{}
	h := newHarness(t, Config{Connections: func() []wire.ConnState {
		var out []wire.ConnState
		for id := range live {
			out = append(out, wire.ConnState{ConnInfo: wire.ConnInfo{ID: id}, State: "idle"})
		}
		return out
	}})
	// minSweepAt connections run a statement; their ConnClosed events are
	// "dropped", except that every other one is still live.
	for i := range minSweepAt {
		s := stmt(qBegin, t0, time.Millisecond, fingerprint.TraceContext{})
		s.Conn.ID = uint64(i + 1)
		h.e.Statement(s, detector.Verdict{})
		if i%2 == 0 {
			live[s.Conn.ID] = true
		}
	}
	h.e.Conn(wire.Event{Kind: wire.ConnOpened, Time: t0.Add(time.Minute), Conn: wire.ConnInfo{ID: 99999}})
	h.e.mu.Lock()
	n := len(h.e.conns)
	h.e.mu.Unlock()
	if n != len(live) {
		t.Errorf("%d connection states after the sweep, want the %d live ones", n, len(live))
	}
	if lost := len(spansByName(h.spans.Ended())["transaction"]); lost != minSweepAt-len(live) {
		t.Errorf("%d transaction spans ended by the sweep, want %d", lost, minSweepAt-len(live))
	}
}

func TestTransactionEndsOnFailure(t *testing.T) {
	none := fingerprint.TraceContext{}
	qRollbackTo := &fingerprint.Query{Fingerprint: "00000000000000b4", Normalized: "ROLLBACK TO SAVEPOINT s1", Summary: "ROLLBACK", Operation: "ROLLBACK", TxControl: fingerprint.TxRollbackTo}
	tests := []struct {
		name        string
		stmts       func() []*detector.Statement
		wantOutcome string
		wantFailed  bool
	}{
		{
			// "BEGIN; INSERT …(fails); COMMIT" in one Query: COMMIT never runs,
			// every event carries the final 'I'.
			name: "failed statement leaves the session idle",
			stmts: func() []*detector.Statement {
				b := stmt(qBegin, t0, time.Millisecond, none)
				f := failed(stmt(qInsert, t0.Add(time.Millisecond), time.Millisecond, parentTC), "23505", "dup")
				return []*detector.Statement{b, f}
			},
			wantOutcome: "rollback", wantFailed: true,
		},
		{
			name: "failed COMMIT ends it",
			stmts: func() []*detector.Statement {
				b := stmt(qBegin, t0, time.Millisecond, parentTC)
				b.Stmt.TxStatus = wire.TxInBlock
				return []*detector.Statement{b, failed(stmt(qCommit, t0.Add(time.Millisecond), time.Millisecond, none), "23503", "deferred fk")}
			},
			wantOutcome: "rollback", wantFailed: true,
		},
		{
			name: "recovered by ROLLBACK TO SAVEPOINT",
			stmts: func() []*detector.Statement {
				b := stmt(qBegin, t0, time.Millisecond, parentTC)
				b.Stmt.TxStatus = wire.TxInBlock
				f := failed(stmt(qInsert, t0.Add(time.Millisecond), time.Millisecond, none), "23505", "dup")
				f.Stmt.TxStatus = wire.TxFailed
				r := stmt(qRollbackTo, t0.Add(2*time.Millisecond), time.Millisecond, none)
				r.Stmt.TxStatus = wire.TxInBlock
				return []*detector.Statement{b, f, r, stmt(qCommit, t0.Add(3*time.Millisecond), time.Millisecond, none)}
			},
			wantOutcome: "commit",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTelEnv(t)
			h := newHarness(t, Config{})
			for _, s := range tt.stmts() {
				h.e.Statement(s, detector.Verdict{})
			}
			txs := spansByName(h.spans.Ended())["transaction"]
			if len(txs) != 1 {
				t.Fatalf("%d transaction spans ended, want 1", len(txs))
			}
			a := attrMap(txs[0].Attributes())
			if a["pgtrace.transaction.outcome"] != tt.wantOutcome || (txs[0].Status().Code.String() == "Error") != tt.wantFailed {
				t.Errorf("outcome %v status %v, want %s failed=%v", a["pgtrace.transaction.outcome"], txs[0].Status(), tt.wantOutcome, tt.wantFailed)
			}
			h.e.mu.Lock()
			open := h.e.conns[testConn.ID].tx
			h.e.mu.Unlock()
			if open != nil {
				t.Error("transaction still open")
			}
		})
	}
}

// TestTransactionEndsWhatPgtraceMissed covers transactions whose end
// pgtrace did not see as a COMMIT or ROLLBACK, and the chained ones: each
// must end, and no later transaction may be glued onto it.
func TestTransactionEndsWhatPgtraceMissed(t *testing.T) {
	none := fingerprint.TraceContext{}
	qChain := &fingerprint.Query{Fingerprint: "00000000000000b5", Normalized: "COMMIT AND CHAIN", Summary: "COMMIT", Operation: "COMMIT", TxControl: fingerprint.TxCommitAndChain}
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	// in builds a statement at sec seconds that left the session with
	// status tx; last marks it the last of its batch.
	in := func(q *fingerprint.Query, sec int, tx byte, last bool) *detector.Statement {
		s := stmt(q, at(sec), time.Millisecond, none)
		s.Stmt.TxStatus, s.Stmt.LastInBatch = tx, last
		return s
	}
	unknown := in(qCommit, 2, wire.TxIdle, true)
	unknown.Query = nil // an Execute of a statement whose Parse pgtrace never saw
	type txWant struct {
		start, end time.Time
		outcome    string
	}
	tests := []struct {
		name  string
		stmts []*detector.Statement
		want  []txWant
		// chained: the second INSERT must be a child of the second
		// transaction
		chained bool
	}{
		{
			name: "COMMIT lost, then an idle statement",
			stmts: []*detector.Statement{
				in(qBegin, 0, wire.TxInBlock, true), in(qInsert, 1, wire.TxInBlock, true),
				in(qSelect, 10, wire.TxIdle, true),
				in(qBegin, 3600, wire.TxInBlock, true), in(qInsert, 3601, wire.TxInBlock, true), in(qCommit, 3602, wire.TxIdle, true),
			},
			want: []txWant{
				{at(0), at(10).Add(time.Millisecond), "ended"},
				{at(3600), at(3602).Add(time.Millisecond), "commit"},
			},
		},
		{
			name: "COMMIT lost, then BEGIN",
			stmts: []*detector.Statement{
				in(qBegin, 0, wire.TxInBlock, true), in(qInsert, 1, wire.TxInBlock, true),
				in(qBegin, 3600, wire.TxInBlock, true), in(qInsert, 3601, wire.TxInBlock, true), in(qCommit, 3602, wire.TxIdle, true),
			},
			want: []txWant{
				{at(0), at(1).Add(time.Millisecond), "lost"},
				{at(3600), at(3602).Add(time.Millisecond), "commit"},
			},
		},
		{
			name: "COMMIT of unknown text",
			stmts: []*detector.Statement{
				in(qBegin, 0, wire.TxInBlock, true), in(qInsert, 1, wire.TxInBlock, true), unknown,
			},
			want: []txWant{{at(0), at(2).Add(time.Millisecond), "ended"}},
		},
		{
			name: "COMMIT AND CHAIN",
			stmts: []*detector.Statement{
				in(qBegin, 0, wire.TxInBlock, true), in(qInsert, 1, wire.TxInBlock, true),
				in(qChain, 2, wire.TxInBlock, true), in(qInsert, 3, wire.TxInBlock, true), in(qCommit, 4, wire.TxIdle, true),
			},
			want: []txWant{
				{at(0), at(2).Add(time.Millisecond), "commit"},
				{at(2).Add(time.Millisecond), at(4).Add(time.Millisecond), "commit"},
			},
			chained: true,
		},
		{
			// BEGIN inside the chained transaction only warns; pgtrace ends
			// the chained one there, at its start.
			name: "COMMIT AND CHAIN, then BEGIN",
			stmts: []*detector.Statement{
				in(qBegin, 0, wire.TxInBlock, true), in(qChain, 1, wire.TxInBlock, true),
				in(qBegin, 2, wire.TxInBlock, true), in(qCommit, 3, wire.TxIdle, true),
			},
			want: []txWant{
				{at(0), at(1).Add(time.Millisecond), "commit"},
				{at(1).Add(time.Millisecond), at(1).Add(time.Millisecond), "lost"},
				{at(2), at(3).Add(time.Millisecond), "commit"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTelEnv(t)
			h := newHarness(t, Config{})
			for _, s := range tt.stmts {
				h.e.Statement(s, detector.Verdict{})
			}
			txs := spansByName(h.spans.Ended())["transaction"]
			if len(txs) != len(tt.want) {
				t.Fatalf("%d transaction spans, want %d", len(txs), len(tt.want))
			}
			for i, w := range tt.want {
				got := txs[i]
				if !got.StartTime().Equal(w.start) || !got.EndTime().Equal(w.end) || attrMap(got.Attributes())["pgtrace.transaction.outcome"] != w.outcome {
					t.Errorf("transaction %d: %v to %v, outcome %v; want %v to %v, %s", i,
						got.StartTime(), got.EndTime(), attrMap(got.Attributes())["pgtrace.transaction.outcome"], w.start, w.end, w.outcome)
				}
			}
			if tt.chained {
				ins := spansByName(h.spans.Ended())["INSERT orders"]
				if len(ins) != 2 || ins[1].Parent().SpanID() != txs[1].SpanContext().SpanID() {
					t.Errorf("the chained transaction's INSERT is not its child")
				}
			}
		})
	}
}
