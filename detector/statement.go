package detector

import (
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// Statement is one executed statement with what the fingerprint stage learnt
// of it: the unit the detector, and after it the exporter, work on.
type Statement struct {
	Stmt  *wire.Statement
	Conn  *wire.ConnInfo
	Query *fingerprint.Query // never nil: the pipeline fills in a placeholder for unknown text
	Tags  *fingerprint.Tags  // never nil
	// Parent is the trace context that applies to this execution (DESIGN.md
	// decision 5), or zero: none, invalid, or a comment from an earlier batch.
	Parent fingerprint.TraceContext
}

// Verdict is what the detector concluded about one statement. The exporter
// marks spans and counts metrics from it.
type Verdict struct {
	Slow bool // duration ≥ the slow-query threshold
	// NPlusOne is true when the statement belongs to a repeating group that
	// has reached the N+1 threshold (this one or an earlier execution crossed it).
	NPlusOne bool
	// NPlusOneDetected is true only on the execution that crossed the
	// threshold: the one time per group that db.n_plus_one.detected counts.
	NPlusOneDetected bool
	NPlusOneCount    int // executions in the group so far, when NPlusOne
}

// FindingType names the kinds of Finding.
type FindingType string

const (
	FindingSlowQuery         FindingType = "slow_query"
	FindingNPlusOne          FindingType = "n_plus_one"
	FindingIdleInTransaction FindingType = "idle_in_transaction"
	FindingConnectionChurn   FindingType = "connection_churn"
)

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
}
