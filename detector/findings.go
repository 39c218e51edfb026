package detector

import (
	"log/slog"
	"slices"
	"time"
)

// Findings leave the detector by one route: Observe returns a statement's
// in its Verdict, ObserveConn, ObservePool and Tick return theirs, and the pipeline
// hands each to the exporter (counted) and the log. The list below is the
// one place that says what finding types there are and how the outside
// shows them: a new type touches its detector, its test and this list.

// FindingType names the kinds of Finding.
type FindingType string

const (
	FindingSlowQuery         FindingType = "slow_query"
	FindingNPlusOne          FindingType = "n_plus_one"
	FindingIdleInTransaction FindingType = "idle_in_transaction"
	FindingConnectionChurn   FindingType = "connection_churn"
	FindingPoolExhausted     FindingType = "pool_exhausted"
	FindingPoolChurn         FindingType = "pool_churn"
	FindingSessionState      FindingType = "session_state_in_transaction_pool"
)

// FindingInfo describes one type of finding for those who show, log and
// count it.
type FindingInfo struct {
	Type  FindingType `json:"type"`
	Title string      `json:"title"` // for people: "slow query"
	// Level is the level of the finding's log line.
	Level slog.Level `json:"-"`
	// Counter is the metric that counts the findings of the type. The
	// zero Counter means none of its own: they are counted in the
	// exporter's generic pgtrace.findings, with the type as
	// pgtrace.finding.type.
	Counter Counter `json:"-"`
}

// Counter names a metric counter (OTel form; Prometheus adds _total). The
// names are a contract: dashboards and alert rules query them.
type Counter struct {
	Name        string
	Unit        string
	Description string
}

var findingTypes = []FindingInfo{
	{Type: FindingSlowQuery, Title: "slow query", Level: slog.LevelWarn,
		Counter: Counter{"pgtrace.slow_queries", "{query}", "Statements slower than the slow-query threshold."}},
	{Type: FindingNPlusOne, Title: "N+1", Level: slog.LevelWarn,
		Counter: Counter{"db.n_plus_one.detected", "{pattern}", "N+1 query patterns detected (once per repeating group)."}},
	{Type: FindingIdleInTransaction, Title: "idle in transaction", Level: slog.LevelWarn,
		Counter: Counter{"pgtrace.idle_in_transaction", "{finding}", "Sessions found idle in a transaction longer than the threshold."}},
	{Type: FindingConnectionChurn, Title: "connection churn", Level: slog.LevelInfo,
		Counter: Counter{"pgtrace.connection_churn", "{finding}", "Connection churn findings."}},
	// Pooled modes (pool.go): counted in pgtrace.findings.
	{Type: FindingPoolExhausted, Title: "pool exhausted", Level: slog.LevelWarn},
	{Type: FindingPoolChurn, Title: "pool churn", Level: slog.LevelWarn},
	{Type: FindingSessionState, Title: "session state in transaction pool", Level: slog.LevelWarn},
}

// FindingTypes lists every type of finding the detector makes, in the
// order people are shown them.
func FindingTypes() []FindingInfo { return slices.Clone(findingTypes) }

// LookupFindingType returns the description of t, and whether t is a type
// the detector makes.
func LookupFindingType(t FindingType) (FindingInfo, bool) {
	for _, fi := range findingTypes {
		if fi.Type == t {
			return fi, true
		}
	}
	return FindingInfo{}, false
}

// Finding is a problem the detector found. Its JSON form is the contract of
// /api/findings: exactly these keys.
type Finding struct {
	Type            FindingType `json:"type"`
	TraceID         string      `json:"trace_id"`       // hex, "" without trace context
	ParentSpanID    string      `json:"parent_span_id"` // hex, "" without trace context
	Fingerprint     string      `json:"fingerprint"`
	Query           string      `json:"query"` // normalized text
	Count           int64       `json:"count"`
	TotalDurationMs float64     `json:"total_duration_ms"`
	FirstSeen       time.Time   `json:"first_seen"`
	LastSeen        time.Time   `json:"last_seen"`
	Application     string      `json:"application"`
	Detail          string      `json:"detail"`

	seq uint64 // its place in the ring (findingRing), for SetTraceID; 0: none
}

// SetTraceID gives f, a finding Observe returned without trace context,
// the trace id of the span exported for its statement (hex), in the ring
// too, so that the finding names the trace its log line and its span
// name. A finding that has a trace id keeps it.
func (d *Detector) SetTraceID(f *Finding, traceID string) {
	if f.TraceID != "" || traceID == "" {
		return
	}
	f.TraceID = traceID
	d.mu.Lock()
	if r := d.findings.get(f.seq); r != nil && r.TraceID == "" {
		r.TraceID = traceID
	}
	d.mu.Unlock()
}
