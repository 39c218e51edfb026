package fingerprint

import "testing"

// TestTxControl classifies each statement twice: as Analyze does it (from
// pg_query's TransactionStmt) and as the lexer does for a text the parser
// rejects; both must agree.
func TestTxControl(t *testing.T) {
	tests := []struct {
		sql  string
		want TxControl
	}{
		{"BEGIN", TxBegin},
		{"begin transaction isolation level serializable", TxBegin},
		{"START TRANSACTION READ ONLY", TxBegin},
		{"COMMIT", TxCommit},
		{"commit work", TxCommit},
		{"END", TxCommit},
		{"END TRANSACTION", TxCommit},
		{"COMMIT AND NO CHAIN", TxCommit},
		{"COMMIT AND CHAIN", TxCommitAndChain},
		{"end transaction and chain", TxCommitAndChain},
		{"ROLLBACK", TxRollback},
		{"ABORT", TxRollback},
		{"ROLLBACK AND CHAIN", TxRollbackAndChain},
		{"abort work and chain", TxRollbackAndChain},
		{"ROLLBACK AND NO CHAIN", TxRollback},
		{"ROLLBACK TO SAVEPOINT sp1", TxRollbackTo},
		{"rollback transaction to sp1", TxRollbackTo},
		{"ROLLBACK TO sp1", TxRollbackTo},
		{"SAVEPOINT sp1", TxSavepoint},
		{"RELEASE SAVEPOINT sp1", TxRelease},
		{"release sp1", TxRelease},
		{"PREPARE TRANSACTION 'tx-1'", TxPrepareTransaction},
		{"COMMIT PREPARED 'tx-1'", TxNone},
		{"ROLLBACK PREPARED 'tx-1'", TxNone},
		{"PREPARE q AS SELECT 1", TxNone},
		{"SELECT 1", TxNone},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", TxNone},
		{"SHOW transaction_isolation", TxNone},
	}
	a := New(Config{})
	for _, tt := range tests {
		res := a.Analyze(tt.sql)
		if len(res.Queries) != 1 {
			t.Fatalf("Analyze(%q): %d queries", tt.sql, len(res.Queries))
		}
		q := res.Queries[0]
		if q.Fallback {
			t.Errorf("Analyze(%q): parser rejected it: %s", tt.sql, q.ParseError)
		}
		if q.TxControl != tt.want {
			t.Errorf("Analyze(%q).TxControl = %v, want %v", tt.sql, q.TxControl, tt.want)
		}
		if got := lexTxControl(tt.sql); got != tt.want {
			t.Errorf("lexTxControl(%q) = %v, want %v", tt.sql, got, tt.want)
		}
	}
}

// TestTxControlBatchAndFallback: each statement of a batch is classified
// on its own, and a statement the parser rejects still is, by the lexer.
func TestTxControlBatchAndFallback(t *testing.T) {
	a := New(Config{})
	res := a.Analyze("BEGIN; UPDATE t SET x = 1; SAVEPOINT s; COMMIT AND CHAIN")
	want := []TxControl{TxBegin, TxNone, TxSavepoint, TxCommitAndChain}
	if len(res.Queries) != len(want) {
		t.Fatalf("%d queries, want %d", len(res.Queries), len(want))
	}
	for i, q := range res.Queries {
		if q.TxControl != want[i] {
			t.Errorf("statement %d (%q): %v, want %v", i, q.Normalized, q.TxControl, want[i])
		}
	}
	// The parser rejects the second statement; the batch is split by the
	// lexer and the ROLLBACK still classified.
	res = a.Analyze("SELEC 1; ROLLBACK")
	if n := len(res.Queries); n != 2 || res.Queries[1].TxControl != TxRollback {
		t.Errorf("fallback batch: %d queries, last %+v", n, res.Queries[n-1])
	}
	if q := a.Analyze("ROLLBACK TO SAVEPOINT s FOO").Queries[0]; !q.Fallback || q.TxControl != TxRollbackTo {
		t.Errorf("unparsable ROLLBACK TO: fallback %v, %v", q.Fallback, q.TxControl)
	}
	if q := truncatedQuery("COMMIT AND CHAIN /* "+string(make([]byte, 100))+" */", 10); q.TxControl != TxCommitAndChain {
		t.Errorf("truncated COMMIT AND CHAIN: %v", q.TxControl)
	}
}

// TestTxControlCached: the answer travels with the cached Query, through
// the exact cache (the same text with another comment) and the shape cache
// (the same text with other constants).
func TestTxControlCached(t *testing.T) {
	a := New(Config{})
	first := a.Analyze("PREPARE TRANSACTION 'tx-1' /*traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/")
	hits := a.Stats().Hits
	for _, sql := range []string{
		"PREPARE TRANSACTION 'tx-1' /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/", // exact
		"PREPARE TRANSACTION 'tx-2'", // shape
	} {
		q := a.Analyze(sql).Queries[0]
		if q.TxControl != TxPrepareTransaction {
			t.Errorf("Analyze(%q).TxControl = %v from the cache", sql, q.TxControl)
		}
	}
	if got := a.Stats().Hits - hits; got != 2 {
		t.Errorf("%d cache hits, want 2", got)
	}
	if first.Queries[0].TxControl != TxPrepareTransaction {
		t.Errorf("first analysis: %v", first.Queries[0].TxControl)
	}
}

func TestTxControlMethods(t *testing.T) {
	for c := TxNone; c <= TxPrepareTransaction; c++ {
		ends := c == TxCommit || c == TxRollback || c == TxCommitAndChain || c == TxRollbackAndChain || c == TxPrepareTransaction
		if c.Ends() != ends {
			t.Errorf("%v.Ends() = %v", c, c.Ends())
		}
		if c.Chains() != (c == TxCommitAndChain || c == TxRollbackAndChain) {
			t.Errorf("%v.Chains() = %v", c, c.Chains())
		}
		if c.RollsBack() != (c == TxRollback || c == TxRollbackAndChain) {
			t.Errorf("%v.RollsBack() = %v", c, c.RollsBack())
		}
		if c.String() == "" || c.String()[0] == 'T' {
			t.Errorf("%d has no name: %q", c, c.String())
		}
	}
}
