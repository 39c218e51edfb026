// Package observe is the in-process half of pgtrace for Go services: one
// call to set up OpenTelemetry, HTTP tracing with tenant and request ids,
// log–trace correlation, business metrics, and the sqlcommenter comments
// that let the pgtrace proxy parent its query spans under the service's
// spans.
//
// It imports no other pgtrace package; it needs only the OpenTelemetry API
// and SDK, otelhttp and the OTLP exporters.
//
// # Setup
//
// Setup builds the tracer, meter and logger providers from the standard
// OTEL_* variables (plus the guide's ENVIRONMENT, SERVICE_VERSION and
// OTEL_TRACES_SAMPLING_RATIO), installs them and the W3C propagators
// globally, and returns a shutdown function that flushes them. OTLP goes
// over gRPC or HTTP, as OTEL_EXPORTER_OTLP_PROTOCOL says.
// WithDefaultServiceName names the service unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES does:
//
//	shutdown, err := observe.Setup(ctx, observe.WithDefaultServiceName("partners"))
//	if err != nil { ... }
//	defer func() { err = errors.Join(err, shutdown(context.WithoutCancel(ctx))) }()
//
// Use a named error return, as above: an unnamed one loses the shutdown
// error.
//
// # HTTP
//
// NewHandler wraps a ServeMux with otelhttp and adds tenant and request-id
// handling; Tenant, RequestID and Route read them back from a context.
// NewTransport is the client side: otelhttp's transport that also forwards
// the request id, and the tenant to the hosts of WithTenantHosts.
// WithHTTPOptions passes options such as otelhttp.WithFilter through.
// DebugHandler answers /debug/observability.
//
// Tenants are trusted only as they come in through the tenant header (and
// WithTenantValidator) or ContextWithTenant: the middleware drops the W3C
// baggage requests arrive with (WithIncomingBaggage keeps it, less its
// tenant.id), and Tenant never reads baggage.
//
// # Logs
//
// NewLogHandler wraps a slog.Handler (JSON by default) to add trace_id,
// span_id, tenant.id and request.id to every record, and to mark the current
// span failed when an error record carries an "error" attribute.
//
// # Databases
//
// OpenDB and WrapConnector give a *sql.DB whose statements carry a
// sqlcommenter comment (application, db_driver, route, tenant_id,
// traceparent, tracestate); Comment does the same for a query string for
// other drivers. The traceparent is written whenever the span context is
// valid, sampled (flags 01) or not (00): pgtrace then follows the app's
// sampling decision, groups a request's N+1 by its trace id at any ratio,
// and a statement span it keeps anyway (slow, failed, N+1) names the
// request's trace. They make no span per query: the proxy makes those, under
// the traceparent of the comment. TracedTx and TracedOp start a span around
// a transaction or an operation, which then becomes the traceparent of its
// statements.
//
// Client-side statement caches. Every pgx query mode is traced alike: the
// proxy gives each execution of a prepared statement the trace context of
// the text it was prepared from. What differs is the cost. A traceparent
// makes every statement text unique, and pgx caches prepared statements
// and their descriptions by SQL text, so in pgx's default mode
// (QueryExecModeCacheStatement) every commented query is a cache miss: two
// round trips (prepare, then execute), a server-side prepared statement per
// query, and constant eviction from the cache (512 statements by default);
// QueryExecModeCacheDescribe costs the same round trips for its
// descriptions. QueryExecModeExec (DSN parameter
// default_query_exec_mode=exec) sends Parse, Bind and Execute of an unnamed
// statement in one round trip and keeps no cache;
// QueryExecModeSimpleProtocol does too, with the parameters inlined;
// QueryExecModeDescribeExec costs two round trips and no cache. For
// commented queries, Exec is the cheapest; if the cache must stay, set
// statement_cache_capacity and description_cache_capacity to 0 for the
// pool that carries them.
//
// # Business metrics
//
// BusinessMetrics records partner signups, customer acquisitions and MRR,
// commissions, attributed revenue, customer lifecycle events and SLA
// violations as dotmac.* instruments, with partner.id on the current span
// and, bounded, on the metrics.
package observe
