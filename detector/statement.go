package detector

import (
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
	// Findings are the findings this statement made: a slow query, the
	// N+1 group it made cross the threshold. nil when none (most
	// statements): nothing is allocated for them.
	Findings []Finding
}
