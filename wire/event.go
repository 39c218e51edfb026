package wire

import (
	"net/netip"
	"time"
)

// EventKind says what an Event reports.
type EventKind uint8

const (
	// ConnOpened: a client connection was accepted.
	ConnOpened EventKind = iota + 1
	// ConnAuthenticated: the upstream accepted the login (first ReadyForQuery
	// after AuthenticationOk). Event.ConnectDuration holds the upstream
	// connect + authentication time.
	ConnAuthenticated
	// ConnAuthFailed: the upstream was unreachable or rejected the login.
	// Event.Err says why.
	ConnAuthFailed
	// ConnClosed: the session ended. Event.Side and Event.Err say who ended it
	// and why.
	ConnClosed
	// StatementDone: a statement finished. Event.Stmt describes it.
	StatementDone
	// TxStatus: the connection's transaction status changed at a ReadyForQuery
	// that ended no statement (for example an empty Sync). Event.Conn.TxStatus
	// holds the new status. Statement events carry the status themselves.
	TxStatus
)

func (k EventKind) String() string {
	switch k {
	case ConnOpened:
		return "conn_opened"
	case ConnAuthenticated:
		return "conn_authenticated"
	case ConnAuthFailed:
		return "conn_auth_failed"
	case ConnClosed:
		return "conn_closed"
	case StatementDone:
		return "statement_done"
	case TxStatus:
		return "tx_status"
	}
	return "unknown"
}

// Side names the end of a session that closed it.
type Side uint8

const (
	SideNone     Side = iota
	SideClient        // the client closed or vanished
	SideUpstream      // the upstream closed or died
	SideProxy         // the proxy ended it (shutdown, protocol error, limit)
)

func (s Side) String() string {
	switch s {
	case SideClient:
		return "client"
	case SideUpstream:
		return "upstream"
	case SideProxy:
		return "proxy"
	}
	return "none"
}

// Protocol is the sub-protocol a statement arrived with.
type Protocol uint8

const (
	ProtocolSimple       Protocol = iota + 1 // Query message
	ProtocolExtended                         // Parse/Bind/Execute
	ProtocolFunctionCall                     // FunctionCall message
)

// Outcome is the backend message that ended a statement.
type Outcome uint8

const (
	OutcomeComplete  Outcome = iota + 1 // CommandComplete
	OutcomeError                        // ErrorResponse
	OutcomeEmpty                        // EmptyQueryResponse
	OutcomeSuspended                    // the portal was closed, replaced or ended with its transaction before its last row (see Statement.Fetches)
)

// Transaction status bytes as sent in ReadyForQuery.
const (
	TxIdle    byte = 'I'
	TxInBlock byte = 'T'
	TxFailed  byte = 'E'
)

// ConnInfo identifies a client session. Events carry a copy; it never changes
// after the event is sent.
type ConnInfo struct {
	ID          uint64         // unique per proxy process, starting at 1
	ClientAddr  netip.AddrPort // the client's address (zero for Unix sockets)
	ServerAddr  string         // the upstream host:port or Unix socket path
	User        string         // from the StartupMessage
	Database    string         // from the StartupMessage (defaults to User)
	Application string         // application_name, from startup or ParameterStatus
	Schema      string         // first schema of the search_path, when known (startup, ParameterStatus)
	BackendPID  uint32         // from BackendKeyData; 0 until known
	TxStatus    byte           // last ReadyForQuery status; 0 until the first
	OpenedAt    time.Time
}

// Statement is one executed statement: a statement of a simple Query, an
// Execute of a portal, or a FunctionCall.
//
// Every string is copied out of the relay's read buffers before the event
// leaves the relay, so an Observer may keep the Statement.
type Statement struct {
	// Text is the SQL as the client sent it: the whole Query string for the
	// simple protocol (Index says which of its statements this is), the Parse
	// text of the executed statement for the extended protocol, and empty for
	// a FunctionCall. Empty when unknown (a prepared statement whose Parse the
	// proxy never saw).
	Text string
	// Index is the 0-based position of this statement within a multi-statement
	// Query message; 0 for the extended protocol.
	Index int
	// PreparedText is, for a SQL EXECUTE, the text the executed statement
	// was prepared with: the query of its Parse, or a whole PREPARE
	// statement. Empty for anything else, and when the proxy never saw
	// the name prepared.
	PreparedText string
	// PreparedSQL reports that the prepared statement that ran was defined
	// by a SQL PREPARE: its text (Text for the extended protocol,
	// PreparedText for EXECUTE) is a whole PREPARE statement, and what ran
	// is the statement after its AS.
	PreparedSQL bool

	Protocol      Protocol
	StatementName string // extended protocol: "" is the unnamed statement
	PortalName    string // extended protocol: "" is the unnamed portal
	FunctionOID   uint32 // FunctionCall only

	Start time.Time // the request (Query, Execute or FunctionCall) was read from the client
	End   time.Time // the message that ended it was read from the upstream

	Outcome    Outcome
	CommandTag string // e.g. "SELECT 3", "INSERT 0 1"; empty unless OutcomeComplete
	// Rows is the row count of the command tag, plus, for a portal run in
	// several Executes, the DataRows of the Executes before the last; for
	// a portal never run to its end, the DataRows sent.
	Rows int64
	// Fetches is the number of Execute messages that ran the statement's
	// portal: 1, or more when the client fetched the rows in parts
	// (Execute with a row limit, PortalSuspended, Execute again). Such a
	// portal is one statement, from its first Execute to its
	// CommandComplete, or to its close, its replacement or the end of its
	// transaction. 0 for the simple protocol and FunctionCall.
	Fetches int
	// Copy is true when the statement ran a COPY (FROM STDIN or TO STDOUT).
	Copy bool

	// SQLState, ErrorMessage and Severity describe the ErrorResponse that
	// ended the statement. In the extended protocol an error answering the
	// Sync (the batch's implicit transaction failed to commit: a deferred
	// constraint, a serialization failure) fails the batch's last
	// statement, whose CommandComplete came first, as drivers report it.
	SQLState     string // ErrorResponse code, e.g. "42P01"; empty on success
	ErrorMessage string // ErrorResponse message; empty on success
	Severity     string // ErrorResponse severity (ERROR, FATAL, PANIC)

	// TxStatus is the status of the ReadyForQuery that followed, or 0 when the
	// event had to be sent before one arrived (a long pipeline). All the
	// statements of a Query or of a pipeline up to its Sync carry that one
	// status; LastInBatch marks the one right before it, for which it is
	// the status the statement left.
	TxStatus    byte
	LastInBatch bool

	BytesIn  int64 // client→server bytes attributed to the statement
	BytesOut int64 // server→client bytes attributed to the statement

	// PoolWait is, in a pooled mode, how long the client waited for a
	// server connection before the statement could run, from
	// PoolWaitStart; 0 when one was at hand.
	PoolWait      time.Duration
	PoolWaitStart time.Time
}

// Duration is End - Start.
func (s *Statement) Duration() time.Duration { return s.End.Sub(s.Start) }

// Failed reports whether the statement ended with an ErrorResponse.
func (s *Statement) Failed() bool { return s.Outcome == OutcomeError }

// Event is what the relay reports to an Observer.
type Event struct {
	Kind EventKind
	Time time.Time
	Conn ConnInfo   // the session, as known when the event was made
	Stmt *Statement // StatementDone only

	// Connection events.
	ConnectDuration time.Duration // ConnAuthenticated, ConnAuthFailed: upstream dial + auth
	Side            Side          // ConnClosed
	Err             error         // ConnAuthFailed, ConnClosed: the reason, nil for a clean close
	Statements      int64         // ConnClosed: statements executed in the session
	BytesIn         int64         // ConnClosed: client→server bytes in the session
	BytesOut        int64         // ConnClosed: server→client bytes in the session
}

// Observer receives the relay's events.
//
// Observe is called from one dispatcher goroutine, never from a relay
// goroutine, and in the order the relay produced the events; per connection
// that is the order on the wire. The Event and the Statement it points to
// belong to the observer after the call. When the observer falls behind, the
// bounded queue in front of it fills and further events are dropped and
// counted (Server.DroppedEvents); the relay never waits.
type Observer interface {
	Observe(Event)
}

// ObserverFunc adapts a function to the Observer interface.
type ObserverFunc func(Event)

// Observe calls f(e).
func (f ObserverFunc) Observe(e Event) { f(e) }
