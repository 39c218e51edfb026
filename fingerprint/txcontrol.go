package fingerprint

import (
	"strconv"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// TxControl is what a statement does to its session's transaction, read
// once here so that every stage that follows transactions (the pipeline's
// parent rule, the detector, the exporter's transaction spans) reads the
// same answer from Query.TxControl.
type TxControl uint8

const (
	TxNone               TxControl = iota // not transaction control (COMMIT PREPARED and ROLLBACK PREPARED neither: they act on another transaction)
	TxBegin                               // BEGIN, START TRANSACTION
	TxCommit                              // COMMIT, END
	TxRollback                            // ROLLBACK, ABORT
	TxSavepoint                           // SAVEPOINT
	TxRelease                             // RELEASE [SAVEPOINT]
	TxRollbackTo                          // ROLLBACK TO [SAVEPOINT]: stays in the transaction
	TxCommitAndChain                      // COMMIT AND CHAIN: ends the transaction and begins the next
	TxRollbackAndChain                    // ROLLBACK AND CHAIN
	TxPrepareTransaction                  // PREPARE TRANSACTION: ends the session's transaction (two-phase commit)
)

var txControlNames = [...]string{"none", "begin", "commit", "rollback", "savepoint", "release",
	"rollback-to", "commit-and-chain", "rollback-and-chain", "prepare-transaction"}

func (c TxControl) String() string {
	if int(c) < len(txControlNames) {
		return txControlNames[c]
	}
	return "TxControl(" + strconv.Itoa(int(c)) + ")"
}

// Ends reports whether a successful statement of this kind ends the
// session's transaction (and, for the chains, begins the next).
func (c TxControl) Ends() bool {
	switch c {
	case TxCommit, TxRollback, TxCommitAndChain, TxRollbackAndChain, TxPrepareTransaction:
		return true
	}
	return false
}

// Chains reports whether c is COMMIT AND CHAIN or ROLLBACK AND CHAIN, which
// begin a new transaction as they end one.
func (c TxControl) Chains() bool { return c == TxCommitAndChain || c == TxRollbackAndChain }

// RollsBack reports whether c ends the transaction with a rollback.
func (c TxControl) RollsBack() bool { return c == TxRollback || c == TxRollbackAndChain }

// treeTxControl classifies a parsed statement.
func treeTxControl(stmt *pg.Node) TxControl {
	ts := stmt.GetTransactionStmt()
	if ts == nil {
		return TxNone
	}
	switch ts.GetKind() {
	case pg.TransactionStmtKind_TRANS_STMT_BEGIN, pg.TransactionStmtKind_TRANS_STMT_START:
		return TxBegin
	case pg.TransactionStmtKind_TRANS_STMT_COMMIT:
		if ts.GetChain() {
			return TxCommitAndChain
		}
		return TxCommit
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		if ts.GetChain() {
			return TxRollbackAndChain
		}
		return TxRollback
	case pg.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		return TxSavepoint
	case pg.TransactionStmtKind_TRANS_STMT_RELEASE:
		return TxRelease
	case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		return TxRollbackTo
	case pg.TransactionStmtKind_TRANS_STMT_PREPARE:
		return TxPrepareTransaction
	}
	return TxNone
}

// lexTxControl classifies a statement the parser rejected (or one too long
// to parse) by its leading keywords, as PostgreSQL's grammar reads them.
func lexTxControl(text string) TxControl {
	ws := leadingWords(text, 8)
	if len(ws) == 0 {
		return TxNone
	}
	// rest skips an optional WORK or TRANSACTION after the first word.
	rest := ws[1:]
	if len(rest) > 0 && (rest[0] == "WORK" || rest[0] == "TRANSACTION") {
		rest = rest[1:]
	}
	chain := len(rest) >= 2 && rest[0] == "AND" && rest[1] == "CHAIN"
	switch ws[0] {
	case "BEGIN":
		return TxBegin
	case "START":
		if len(ws) > 1 && ws[1] == "TRANSACTION" {
			return TxBegin
		}
	case "COMMIT", "END":
		if len(ws) > 1 && ws[1] == "PREPARED" {
			return TxNone
		}
		if chain {
			return TxCommitAndChain
		}
		return TxCommit
	case "ROLLBACK", "ABORT":
		switch {
		case len(ws) > 1 && ws[1] == "PREPARED":
			return TxNone
		case len(rest) > 0 && rest[0] == "TO":
			return TxRollbackTo
		case chain:
			return TxRollbackAndChain
		}
		return TxRollback
	case "SAVEPOINT":
		return TxSavepoint
	case "RELEASE":
		return TxRelease
	case "PREPARE":
		if len(ws) > 1 && ws[1] == "TRANSACTION" {
			return TxPrepareTransaction
		}
	}
	return TxNone
}
