// Package detector turns enriched statement events into findings and
// per-query statistics: slow queries, N+1 patterns (per trace, or per
// connection when there is no trace context), transactions left idle,
// connection churn, in pooled modes exhausted and churning pools and the
// session-level features a transaction pool cannot keep, and
// pg_stat_statements-like statistics with tail latencies from a bounded
// sketch.
//
// Findings leave by one route: Observe returns a statement's in its
// Verdict, ObserveConn, ObservePool and Tick return theirs, and the caller
// (the pipeline) hands them on. FindingTypes lists the types, with what the
// outside needs to show, log and count each.
//
// It is pure code over observed statements: it knows nothing about
// OpenTelemetry or HTTP. The pipeline feeds it from one goroutine
// (Observe, ObserveConn), a ticker (Tick) and the pools' hooks
// (ObservePool); readers (Queries, Findings,
// Stats, Reset) may call from any goroutine. Every piece of state it keeps
// is bounded, with an eviction rule and a counter (DESIGN.md decision 8).
package detector
