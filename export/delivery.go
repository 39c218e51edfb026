package export

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/dotmac/pgtrace/export/internal/fastspan"
	"github.com/dotmac/pgtrace/internal/otelenv"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// delivery watches what one signal's exporter manages to send. A
// collector that does not take the signal at all (Jaeger takes traces
// only) is told once, with what to set, and then not asked again: every
// further export would fail the same way and fill the log. Other failures
// are counted for the shutdown report and returned, so the SDK reports
// them (errorHandler, rate-limited).
type delivery struct {
	signal string // "traces" or "metrics"
	target otelenv.Target
	log    *slog.Logger

	refused atomic.Bool
	failed  atomic.Uint64 // spans or metric points in exports that failed
}

// done takes the result of an export of n items.
func (d *delivery) done(err error, n int) error {
	if err == nil {
		return nil
	}
	if refusesSignal(err) {
		if d.refused.CompareAndSwap(false, true) {
			collector := d.target.Addr()
			if collector == "" {
				collector = "the configured endpoint"
			}
			d.log.Warn(fmt.Sprintf("the collector at %s does not accept %s; set OTEL_%s_EXPORTER=none",
				collector, d.signal, strings.ToUpper(d.signal)),
				"collector", collector, "err", err,
				"effect", "pgtrace stops sending "+d.signal+" until it restarts; /metrics and the admin API are not affected")
		}
		return nil
	}
	d.failed.Add(uint64(n))
	return err
}

// refusesSignal reports whether err says the collector does not serve the
// signal: gRPC's Unimplemented (no such service), or an OTLP/HTTP answer
// of 404, 405 or 501 for the signal's path. The OTLP/HTTP clients give
// the status only in the error text: "failed to send metrics to …: 404
// Not Found (body: …)".
func refusesSignal(err error) bool {
	if status.Code(err) == codes.Unimplemented {
		return true
	}
	// The status comes right before the body, which may quote anything.
	head, _, _ := strings.Cut(err.Error(), " (body: ")
	for _, s := range []string{": 404 Not Found", ": 405 Method Not Allowed", ": 501 Not Implemented"} {
		if strings.HasSuffix(head, s) {
			return true
		}
	}
	return false
}

// deliveredTraces is an OTLP trace client under a delivery's watch.
type deliveredTraces struct {
	fastspan.Client
	d *delivery
}

func (x deliveredTraces) UploadTraces(ctx context.Context, rss []*tracepb.ResourceSpans) error {
	if x.d.refused.Load() {
		return nil
	}
	n := 0
	for _, rs := range rss {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	return x.d.done(x.Client.UploadTraces(ctx, rss), n)
}

// deliveredMetrics is a metric exporter under a delivery's watch.
type deliveredMetrics struct {
	sdkmetric.Exporter
	d *delivery
}

func (x deliveredMetrics) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	if x.d.refused.Load() {
		return nil
	}
	return x.d.done(x.Exporter.Export(ctx, rm), dataPoints(rm))
}

// dataPoints counts the data points of rm.
func dataPoints(rm *metricdata.ResourceMetrics) int {
	n := 0
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Gauge[int64]:
				n += len(d.DataPoints)
			case metricdata.Gauge[float64]:
				n += len(d.DataPoints)
			case metricdata.Sum[int64]:
				n += len(d.DataPoints)
			case metricdata.Sum[float64]:
				n += len(d.DataPoints)
			case metricdata.Histogram[int64]:
				n += len(d.DataPoints)
			case metricdata.Histogram[float64]:
				n += len(d.DataPoints)
			case metricdata.ExponentialHistogram[int64]:
				n += len(d.DataPoints)
			case metricdata.ExponentialHistogram[float64]:
				n += len(d.DataPoints)
			case metricdata.Summary:
				n += len(d.DataPoints)
			}
		}
	}
	return n
}

// ShutdownError is what Exporter.Shutdown returns when spans or metrics
// could not be sent before its context ended, typically to a slow or dead
// collector. Its message is one line: what was not sent, and why.
type ShutdownError struct {
	// SpansNotSent counts the spans that never reached the collector since
	// start: in exports that failed, dropped from a full queue, or still
	// queued at the end.
	SpansNotSent uint64
	// MetricPointsNotSent counts the metric data points in exports that
	// failed since start (they remain on /metrics).
	MetricPointsNotSent uint64
	// Cause is the distinct reasons, on one line.
	Cause string

	errs []error
}

func newShutdownError(spans, points uint64, errs ...error) *ShutdownError {
	var causes []string
	seen := map[string]bool{}
	for _, err := range errs {
		if err == nil {
			continue
		}
		// errors.Join puts one error per line; the same cause often comes
		// from both signals.
		for _, line := range strings.Split(err.Error(), "\n") {
			line = strings.TrimSpace(line)
			if line != "" && !seen[line] {
				seen[line] = true
				causes = append(causes, line)
			}
		}
	}
	return &ShutdownError{SpansNotSent: spans, MetricPointsNotSent: points, Cause: strings.Join(causes, "; "), errs: errs}
}

func (e *ShutdownError) Error() string {
	return fmt.Sprintf("OTLP export incomplete: %d spans and %d metric points not sent: %s", e.SpansNotSent, e.MetricPointsNotSent, e.Cause)
}

// Unwrap gives the errors of the tracing and metrics shutdowns, for
// errors.Is (context.DeadlineExceeded).
func (e *ShutdownError) Unwrap() []error {
	var out []error
	for _, err := range e.errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}
