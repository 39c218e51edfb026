package wire

import (
	"bytes"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// stmtEvent is an Event and its Statement in one allocation.
type stmtEvent struct {
	ev Event
	st Statement
	// prep is, for an Execute, the version of the statement it runs as the
	// client's messages had it when they were sent (see complete).
	prep *preparedStmt
}

// newStmtEvent starts the event of a statement: the one constructor of the
// statement events wire hands upward, for every protocol.
func newStmtEvent(p Protocol, text string, start time.Time) *stmtEvent {
	se := &stmtEvent{}
	se.ev.Kind = StatementDone
	se.ev.Stmt = &se.st
	se.st.Protocol = p
	se.st.Text = text
	se.st.Start = start
	return se
}

// setError records the ErrorResponse that ended st.
func (st *Statement) setError(e *pgproto3.ErrorResponse) {
	st.SQLState = e.Code
	st.ErrorMessage = e.Message
	st.Severity = severity(e)
}

// severity is e's severity, the unlocalized one when the server sent it
// (PostgreSQL 9.6 and later).
func severity(e *pgproto3.ErrorResponse) string {
	if e.SeverityUnlocalized != "" {
		return e.SeverityUnlocalized
	}
	return e.Severity
}

// tagRows is the row count at the end of a command tag ("INSERT 0 5" → 5);
// 0 when the tag has none.
func tagRows(tag []byte) int64 {
	i := bytes.LastIndexByte(tag, ' ')
	if i < 0 {
		return 0
	}
	n, err := strconv.ParseInt(string(tag[i+1:]), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// ServerError is an ErrorResponse from the upstream that ended a login or a
// session (Event.Err of ConnAuthFailed and ConnClosed).
type ServerError struct {
	Severity string // FATAL, PANIC or ERROR
	Code     string // SQLSTATE
	Message  string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("%s: %s (SQLSTATE %s)", e.Severity, e.Message, e.Code)
}
