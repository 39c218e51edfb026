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

	// SpanExporter, if set, replaces the OTLP span exporter (tests). It is
	// fed through the same bounded, dropping queue.
	SpanExporter sdktrace.SpanExporter
	// SpanProcessor, if set, is added as is, synchronously (tests:
	// tracetest.SpanRecorder). Statement spans reach it through OnEnd
	// only: they are built after the statement ended (spanSink).
	SpanProcessor sdktrace.SpanProcessor
	// MetricReader, if set, is added to the meter provider (tests:
	// sdkmetric.NewManualReader). OTLP metrics still follow the environment.
	MetricReader sdkmetric.Reader
}

const (
	defaultCardinalityLimit = 2000
	defaultServiceName      = "pgtrace"
	// ScopeName is the instrumentation scope of pgtrace's spans and metrics.
	ScopeName = "github.com/dotmac/pgtrace/export"
)

// durationBuckets are the stable db.client.operation.duration advice
// [0.001 … 10] s with sub-millisecond buckets in front: most statements a
// proxy sees next to its database take well under a millisecond.
var durationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}

// rowBuckets are the db.client.response.returned_rows advice.
var rowBuckets = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}
