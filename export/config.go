package export

import (
	"log/slog"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Config configures an Exporter. Where telemetry goes is not here: the
// standard OTEL_* environment variables decide that (DESIGN.md decision 9).
// The zero value is usable.
type Config struct {
	// UpstreamAddr is the PostgreSQL host:port, reported as server.address
	// and server.port. If empty, each connection's ConnInfo.ServerAddr is used.
	UpstreamAddr string
	// SlowThreshold is the slow-query threshold, recorded on slow spans.
	SlowThreshold time.Duration
	// KeepSlowSpans exports slow, failed and N+1 statements' spans even when
	// head sampling dropped them. The CLI defaults it to true.
	KeepSlowSpans bool
	// Logger receives the exporter's own messages. If nil, slog.Default().
	Logger *slog.Logger
	// Version is pgtrace's version: service.version and the scope version.
	Version string
	// CardinalityLimit bounds the attribute sets each metric instrument keeps
	// per collection; the rest are folded into one set marked
	// otel.metric.overflow=true. Default 2000; negative means no limit.
	CardinalityLimit int
	// ServiceNameFrom says which client application a statement's span
	// and its transaction's are exported under (service.name), and which
	// the metrics name in pgtrace.application: ServiceFromApplicationName,
	// ServiceFromSQLCommenter, or ServiceFromNone; "" is ServiceFromNone,
	// everything under pgtrace's own service. The CLI defaults it to
	// ServiceFromApplicationName.
	ServiceNameFrom string
	// MaxApplications bounds the applications with a service and a metric
	// label of their own; the rest share "other". Default 100.
	MaxApplications int
	// ExponentialHistograms records the duration histograms
	// (db.client.operation.duration, db.client.connection.create_time,
	// .wait_time and .use_time, pgtrace.transaction.duration) as base-2
	// exponential histograms
	// rather than with durationBuckets: finer everywhere, for backends that
	// take them (OTLP; on /metrics, Prometheus native histograms, which a
	// scraper gets over the protobuf format).
	ExponentialHistograms bool
	// RawErrors exports PostgreSQL's error messages as they are. By
	// default the values quoted in them are replaced (scrubError): a
	// failed statement's message can hold the literal it failed on.
	RawErrors bool

	// DroppedEvents reports the relay's dropped events
	// (wire.Server.DroppedEvents), as pgtrace.events.dropped. Optional.
	DroppedEvents func() uint64
	// ForgottenStatements reports the prepared statement names the relay
	// forgot at its per-session cap (wire.Server.ForgottenStatements), as
	// pgtrace.prepared_statements.forgotten. Optional.
	ForgottenStatements func() uint64
	// AnalyzerStats reports the fingerprint cache counters and invalid
	// traceparents. Optional.
	AnalyzerStats func() fingerprint.Stats
	// Connections lists the open sessions for db.client.connection.count.
	// Optional. Called from metric collection, on any goroutine.
	Connections func() []wire.ConnState

	// Pooled says the proxy pools server connections (--pool-mode session
	// or transaction): the db.client.connection.* metrics describe the
	// pools (PoolHooks, ObservePools) rather than the client sessions, and
	// db.client.connection.create_time and pgtrace.connections.opened
	// count the pools' server logins rather than the clients' logins to
	// pgtrace.
	Pooled bool
	// PoolWaitSpanThreshold: a statement whose client waited longer than
	// this for a server connection gets a pgtrace.pool.wait span. 0: any
	// wait. The CLI defaults it to 1ms.
	PoolWaitSpanThreshold time.Duration

	// SpanPath says how statement spans are made and sent:
	// SpanPathFast ("" too), built whole and encoded by pgtrace
	// (export/internal/fastspan), or SpanPathSDK, the OpenTelemetry SDK's
	// Tracer, BatchSpanProcessor and OTLP exporter. Both send the same
	// spans.
	SpanPath string

	// SpanExporter, if set, replaces the OTLP span exporter (tests). It is
	// fed through the same bounded, dropping queue. On the fast path, an
	// exporter that keeps nothing of the spans once ExportSpans returns
	// may say so (TransientExporter): its statement spans are recycled.
	SpanExporter sdktrace.SpanExporter
	// SpanProcessor, if set, is added as is, synchronously (tests:
	// tracetest.SpanRecorder). On the fast path statement spans reach it
	// through OnEnd only: they are built after the statement ended.
	SpanProcessor sdktrace.SpanProcessor
	// MetricReader, if set, is added to the meter provider (tests:
	// sdkmetric.NewManualReader). OTLP metrics still follow the environment.
	MetricReader sdkmetric.Reader
}

// Span paths (Config.SpanPath).
const (
	// SpanPathFast builds statement spans without the SDK's Tracer and
	// encodes them with pgtrace's own OTLP encoder: about a fifth of the
	// SDK path's CPU per sampled statement (bench/RESULTS.md).
	SpanPathFast = "fast"
	// SpanPathSDK is the stock path: the SDK's Tracer, BatchSpanProcessor
	// and otlptrace exporter. pgtrace.spans.dropped stays 0 on it: the
	// SDK's batch processor drops when full but does not say how many.
	SpanPathSDK = "sdk"
)

const (
	defaultCardinalityLimit = 2000
	defaultMaxApplications  = 100
	defaultServiceName      = "pgtrace"
	// ScopeName is the instrumentation scope of pgtrace's spans and metrics.
	ScopeName = "github.com/dotmac/pgtrace/export"
)

// durationBuckets are the bounds of the duration histograms: sub-millisecond
// buckets in front (most statements a proxy sees next to its database take
// well under a millisecond), then dense around the thresholds users alert
// on — the 100 ms slow query, the 120 ms p95 and 800 ms alerts of the
// shipped rules — up to 10 s.
var durationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075,
	0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 0.8, 1, 2.5, 5, 10}

// rowBuckets are the db.client.response.returned_rows advice.
var rowBuckets = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}
