package detector

import (
	"strings"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// Transaction boundaries, read once for everyone who follows a
// connection's transactions: the pipeline (a statement's parent is its
// transaction's when it has none of its own) and the exporter (the
// transaction span).

// TxBoundary says whether st begins or ends a transaction, from its
// operation. The transaction status alone cannot say it: the statements of
// a multi-statement Query, or of a pipeline up to its Sync, all carry the
// status of the one ReadyForQuery that follows them.
func TxBoundary(inTx bool, st *wire.Statement, q *fingerprint.Query) (begins, ends bool) {
	var op string
	if q != nil {
		op = q.Operation
	}
	switch op {
	case "BEGIN": // also START TRANSACTION
		// A failed BEGIN begins nothing.
		return !st.Failed(), false
	case "COMMIT", "PREPARE TRANSACTION": // COMMIT also stands for END
		// A failed COMMIT ends the transaction too: PostgreSQL rolls it back.
		return false, inTx
	case "ROLLBACK": // also ABORT
		// ROLLBACK TO SAVEPOINT stays in the transaction.
		if IsRollbackTo(q.Normalized) {
			return false, false
		}
		return false, inTx
	}
	// A statement after which the session was idle ended the transaction,
	// whatever pgtrace missed: a COMMIT whose event was dropped, or whose
	// prepared text it never saw. A statement that failed and left the
	// session idle is the last before that ReadyForQuery, since the rest
	// of its Query or pipeline was skipped.
	if inTx && st.TxStatus == wire.TxIdle && (st.LastInBatch || st.Failed()) {
		return false, true
	}
	return false, false
}

// TxChains reports whether q is COMMIT AND CHAIN or ROLLBACK AND CHAIN,
// which start a new transaction as they end one.
func TxChains(q *fingerprint.Query) bool {
	if q == nil || (q.Operation != "COMMIT" && q.Operation != "ROLLBACK") {
		return false
	}
	f := strings.Fields(strings.ToUpper(strings.TrimRight(q.Normalized, "; \t\n")))
	n := len(f)
	return n >= 3 && f[n-1] == "CHAIN" && f[n-2] == "AND"
}

// IsRollbackTo reports whether a ROLLBACK is ROLLBACK TO SAVEPOINT, which
// stays in the transaction.
func IsRollbackTo(normalized string) bool {
	f := strings.Fields(strings.ToUpper(normalized))
	for i := 1; i < len(f) && i < 4; i++ {
		if f[i] == "TO" {
			return true
		}
	}
	return false
}
