package detector

import (
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// Transaction boundaries, read once for everyone who follows a
// connection's transactions: the pipeline (a statement's parent is its
// transaction's when it has none of its own) and the exporter (the
// transaction span).

// TxBoundary says whether st begins or ends a transaction, from what the
// fingerprint stage made of it (Query.TxControl). The transaction status
// alone cannot say it: the statements of a multi-statement Query, or of a
// pipeline up to its Sync, all carry the status of the one ReadyForQuery
// that follows them.
func TxBoundary(inTx bool, st *wire.Statement, q *fingerprint.Query) (begins, ends bool) {
	var c fingerprint.TxControl
	if q != nil {
		c = q.TxControl
	}
	switch {
	case c == fingerprint.TxBegin:
		// A failed BEGIN begins nothing.
		return !st.Failed(), false
	case c.Ends():
		// A failed COMMIT ends the transaction too: PostgreSQL rolls it
		// back. ROLLBACK TO SAVEPOINT (TxRollbackTo) stays in it.
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
	return q != nil && q.TxControl.Chains()
}
