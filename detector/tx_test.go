package detector

import (
	"testing"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

func TestTxBoundary(t *testing.T) {
	q := func(op, normalized string) *fingerprint.Query {
		return &fingerprint.Query{Operation: op, Normalized: normalized}
	}
	ok := &wire.Statement{Outcome: wire.OutcomeComplete, TxStatus: wire.TxInBlock}
	failed := &wire.Statement{Outcome: wire.OutcomeError, TxStatus: wire.TxIdle}
	idleLast := &wire.Statement{Outcome: wire.OutcomeComplete, TxStatus: wire.TxIdle, LastInBatch: true}
	tests := []struct {
		name         string
		inTx         bool
		st           *wire.Statement
		q            *fingerprint.Query
		begins, ends bool
	}{
		{"BEGIN", false, ok, q("BEGIN", "BEGIN"), true, false},
		{"failed BEGIN", false, failed, q("BEGIN", "BEGIN"), false, false},
		{"COMMIT", true, ok, q("COMMIT", "COMMIT"), false, true},
		{"COMMIT outside a transaction", false, ok, q("COMMIT", "COMMIT"), false, false},
		{"ROLLBACK", true, ok, q("ROLLBACK", "ROLLBACK"), false, true},
		{"ROLLBACK TO SAVEPOINT", true, ok, q("ROLLBACK", "ROLLBACK TO SAVEPOINT s1"), false, false},
		{"rollback transaction to", true, ok, q("ROLLBACK", "rollback transaction to s1"), false, false},
		{"a statement that left the session idle", true, idleLast, q("SELECT", "SELECT $1"), false, true},
		{"a failed statement that left it idle", true, failed, q("INSERT", "INSERT INTO t VALUES ($1)"), false, true},
		{"a statement in the transaction", true, ok, q("SELECT", "SELECT $1"), false, false},
	}
	for _, tt := range tests {
		begins, ends := TxBoundary(tt.inTx, tt.st, tt.q)
		if begins != tt.begins || ends != tt.ends {
			t.Errorf("%s: begins %v ends %v, want %v %v", tt.name, begins, ends, tt.begins, tt.ends)
		}
	}
	for text, want := range map[string]bool{"COMMIT AND CHAIN": true, "rollback and chain;": true, "COMMIT": false, "COMMIT AND NO CHAIN": false} {
		op := "COMMIT"
		if text[0] == 'r' {
			op = "ROLLBACK"
		}
		if got := TxChains(q(op, text)); got != want {
			t.Errorf("TxChains(%q) = %v, want %v", text, got, want)
		}
	}
}
