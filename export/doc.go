// Package export turns what the proxy observed into OpenTelemetry: spans,
// metrics, OTLP export configured by the standard OTEL_* environment
// variables, and a Prometheus /metrics handler.
//
// It is the only package of the proxy that imports the OpenTelemetry SDK.
// The wire, fingerprint and detector packages know nothing of it.
//
// # Spans
//
//   - A CLIENT span per executed statement, named by db.query.summary, with
//     the wire's start and end times, the stable database attributes and
//     the legacy ones SigNoz reads (db.system, db.name, db.statement,
//     db.operation), and pgtrace.* attributes (fingerprint, application,
//     route, controller, action, framework; tenant.id). Failed statements
//     have error status, db.response.status_code and error.type set to the
//     SQLSTATE. Slow ones carry pgtrace.slow and a pgtrace.slow_query event;
//     the execution that crosses the N+1 threshold carries a
//     pgtrace.n_plus_one event with the count.
//   - An INTERNAL "transaction" span from BEGIN to COMMIT/ROLLBACK (or the
//     connection's end) parenting its statements. Its parent is the first
//     trace context seen in the transaction, so it is opened lazily; see
//     txState.
//   - A CLIENT "connect" span per upstream connect and authentication (in
//     a pooled mode, per client login to pgtrace).
//   - In a pooled mode, an INTERNAL "pgtrace.pool.wait" span for a client's
//     wait for a server connection longer than
//     Config.PoolWaitSpanThreshold, beside the statement it delayed (a child
//     of the statement's parent, or of the statement's span when it is a
//     root); the statement's span carries every wait as
//     pgtrace.pool.wait_ms. See pool.go.
//
// Statement spans take one of two paths (Config.SpanPath, the CLI's
// --span-path). The fast path (export/internal/fastspan, the default)
// builds them whole, after the statement ended, and hands them to the
// span processors without going through the SDK's Tracer; they get the
// tracer provider's sampler, resource, span limits and processors all the
// same, and pgtrace's own OTLP encoder sends them. The SDK path uses the
// SDK's Tracer, BatchSpanProcessor and OTLP exporter. Both send the same
// spans (TestSpanPathParity). Transaction and connect spans use the
// Tracer on both.
//
// Sampling is parent-based (the traceparent's flag decides; roots follow
// OTEL_TRACES_SAMPLER/_ARG, or OTEL_TRACES_SAMPLING_RATIO as an alias), and
// with Config.KeepSlowSpans failed, slow and N+1-crossing statements are
// recorded whatever the sampler said (keepSampler).
//
// # Metrics
//
// Recorded for every statement, whatever the sampling, with attribute sets
// cached per fingerprint and bounded by Config.CardinalityLimit:
// db.client.operation.duration, db.client.response.returned_rows,
// db.client.connection.count (state idle|used),
// db.client.connection.create_time, pgtrace.transaction.duration,
// pgtrace.connections.opened, the finding counters the detector's list of
// finding types names (pgtrace.slow_queries, db.n_plus_one.detected,
// pgtrace.idle_in_transaction, pgtrace.connection_churn; pgtrace.findings
// by pgtrace.finding.type for a type without one),
// pgtrace.events.dropped, pgtrace.spans.dropped,
// pgtrace.fingerprint.cache.hits, pgtrace.fingerprint.cache.misses and
// pgtrace.traceparent.invalid. Duration records carry the span's context,
// so sampled spans become exemplars. In a pooled mode (Config.Pooled) the
// db.client.connection.* metrics describe the pools, by
// db.client.connection.pool.name = database/user: count, idle.max,
// idle.min, max, pending_requests, timeouts, create_time, wait_time and
// use_time (PoolHooks, ObservePools).
//
// # Never blocking
//
// Observation never slows traffic (DESIGN.md decision 2): spans go through
// a bounded queue that drops and counts (pgtrace.spans.dropped) when the
// exporter falls behind — a dead collector — and metric exports run on the
// SDK's own goroutine.
package export
