package detector

import (
	"testing"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

func TestTxBoundary(t *testing.T) {
	// The Query as the fingerprint stage makes it.
	a := fingerprint.New(fingerprint.Config{})
	q := func(text string) *fingerprint.Query { return a.Analyze(text).Queries[0] }
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
		{"BEGIN", false, ok, q("BEGIN"), true, false},
		{"failed BEGIN", false, failed, q("BEGIN"), false, false},
		{"COMMIT", true, ok, q("COMMIT"), false, true},
		{"COMMIT outside a transaction", false, ok, q("COMMIT"), false, false},
		{"ROLLBACK", true, ok, q("ROLLBACK"), false, true},
		{"ROLLBACK TO SAVEPOINT", true, ok, q("ROLLBACK TO SAVEPOINT s1"), false, false},
		{"rollback transaction to", true, ok, q("rollback transaction to s1"), false, false},
		{"a statement that left the session idle", true, idleLast, q("SELECT $1"), false, true},
		{"a failed statement that left it idle", true, failed, q("INSERT INTO t VALUES ($1)"), false, true},
		{"a statement in the transaction", true, ok, q("SELECT $1"), false, false},
		{"PREPARE TRANSACTION", true, ok, q("PREPARE TRANSACTION 'x'"), false, true},
		{"COMMIT AND CHAIN", true, ok, q("COMMIT AND CHAIN"), false, true},
		{"SAVEPOINT", true, ok, q("SAVEPOINT s1"), false, false},
		{"COMMIT PREPARED", false, ok, q("COMMIT PREPARED 'x'"), false, false},
	}
	for _, tt := range tests {
		begins, ends := TxBoundary(tt.inTx, tt.st, tt.q)
		if begins != tt.begins || ends != tt.ends {
			t.Errorf("%s: begins %v ends %v, want %v %v", tt.name, begins, ends, tt.begins, tt.ends)
		}
	}
	for text, want := range map[string]bool{"COMMIT AND CHAIN": true, "rollback and chain;": true, "COMMIT": false, "COMMIT AND NO CHAIN": false} {
		if got := TxChains(q(text)); got != want {
			t.Errorf("TxChains(%q) = %v, want %v", text, got, want)
		}
	}
}

func TestIsTxControl(t *testing.T) {
	a := fingerprint.New(fingerprint.Config{})
	for text, want := range map[string]bool{
		"BEGIN": true, "START TRANSACTION": true, "COMMIT": true, "END": true, "ROLLBACK": true, "ABORT": true,
		"SAVEPOINT s1": true, "RELEASE SAVEPOINT s1": true, "ROLLBACK TO s1": true, "PREPARE TRANSACTION 'x'": true,
		"COMMIT PREPARED 'x'": true, "SET search_path = app": true, "RESET ALL": true, "SHOW timezone": true,
		"DISCARD ALL": true, "DEALLOCATE ALL": true, "LISTEN ch": true, "UNLISTEN *": true,
		"PREPARE q AS SELECT 1": true,
		"SELECT 1":              false, "SELECT * FROM users WHERE id = 1": false, "UPDATE t SET x = 1": false,
		"EXECUTE q": false, "CALL p()": false,
	} {
		if got := isTxControl(a.Analyze(text).Queries[0]); got != want {
			t.Errorf("isTxControl(%q) = %v, want %v", text, got, want)
		}
	}
}
