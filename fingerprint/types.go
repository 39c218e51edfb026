package fingerprint

// TraceContext is a W3C trace context read from a sqlcommenter traceparent
// (and tracestate) tag. SpanID is the caller's span: the proxy's span is its
// child, never the span itself (DESIGN.md decision 5).
type TraceContext struct {
	TraceID    [16]byte
	SpanID     [8]byte
	Flags      byte   // trace-flags; bit 0 is sampled
	TraceState string // the tracestate tag, unvalidated beyond its length
}

// IsValid reports whether tc holds a usable trace context.
func (tc TraceContext) IsValid() bool {
	return tc.TraceID != [16]byte{} && tc.SpanID != [8]byte{}
}

// Sampled reports whether the caller sampled its span.
func (tc TraceContext) Sampled() bool { return tc.Flags&0x01 != 0 }

// Tags are the sqlcommenter tags pgtrace turns into attributes. Values are
// URL-decoded. Unknown keys land in Extra only when Config.KeepUnknownTags is
// set; otherwise Extra is nil.
type Tags struct {
	Application string // application
	Route       string // route
	Controller  string // controller
	Action      string // action
	Framework   string // framework
	DBDriver    string // db_driver
	Tenant      string // the key in Config.TenantKey (default tenant_id)
	Extra       map[string]string
}

// Query is what pgtrace knows of one statement's text once comments are
// stripped. Queries come from a shared cache: treat them as read-only.
type Query struct {
	Fingerprint string // 16 lowercase hex digits; equal for executions of the same query
	Normalized  string // literals replaced by $n; safe to export
	Summary     string // db.query.summary, e.g. "SELECT partners customers"
	Operation   string // db.operation.name, e.g. "SELECT"
	Collection  string // db.collection.name when exactly one table, else ""
	Tables      []string
	TxControl   TxControl // what it does to the session's transaction
	ParseError  string    // why pg_query could not parse it; "" when it did
	Fallback    bool      // Fingerprint and Normalized come from the lexer fallback
	Truncated   bool      // longer than Config.MaxStatementLength: not parsed
	// Body is, for a PREPARE, the statement after its AS: what an EXECUTE
	// of the name runs, and is counted as (as pg_stat_statements counts
	// it). Nil for anything else.
	Body *Query
	// Session lists the session-level features the statement uses (SET,
	// LISTEN, session advisory locks, WITH HOLD cursors, temporary tables
	// that outlive their transaction, SQL PREPARE): state that stays on
	// the server session. Nil for most statements, and for those the
	// parser rejected.
	Session []SessionUse
}

// Result is the analysis of one SQL text as sent by a client.
type Result struct {
	// Queries has one entry per statement in the text (several for a
	// multi-statement simple Query). Shared from the cache: read-only.
	Queries []*Query
	Tags    Tags
	// Trace is the valid trace context from a traceparent tag, or zero.
	Trace TraceContext
	// TraceInvalid reports that a traceparent tag was present but invalid
	// (and so ignored).
	TraceInvalid bool
}

// Query returns the i-th statement's Query, or the last one when i is out of
// range (a server can count statements differently from the splitter), or nil
// when there are none.
func (r *Result) Query(i int) *Query {
	if len(r.Queries) == 0 {
		return nil
	}
	if i < 0 || i >= len(r.Queries) {
		return r.Queries[len(r.Queries)-1]
	}
	return r.Queries[i]
}

// Config tunes an Analyzer. The zero value uses the defaults.
type Config struct {
	CacheSize          int    // distinct comment-stripped texts kept; default 10000
	MaxStatementLength int    // longer texts are hashed and truncated, not parsed; default 64 KiB
	TenantKey          string // sqlcommenter key read as the tenant; default "tenant_id"
	NoTenant           bool   // read no tenant tag at all (TenantKey is then ignored)
	KeepUnknownTags    bool   // keep keys pgtrace does not know in Tags.Extra
}

// Stats are an Analyzer's counters since it was made.
type Stats struct {
	Hits                uint64
	Misses              uint64
	Evictions           uint64
	Size                int
	InvalidTraceparents uint64
	Fallbacks           uint64
}
