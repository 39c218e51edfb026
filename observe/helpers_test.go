package observe_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dotmac/pgtrace/observe"
)

// telemetry is an in-memory tracer and meter provider for one test.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newTelemetry(tb testing.TB) *telemetry {
	tb.Helper()
	t := &telemetry{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	t.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(t.spans))
	t.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(t.reader))
	tb.Cleanup(func() {
		_ = t.tp.Shutdown(context.Background())
		_ = t.mp.Shutdown(context.Background())
	})
	return t
}

// options are the observe options that point at this telemetry.
func (t *telemetry) options(more ...observe.Option) []observe.Option {
	return append([]observe.Option{
		observe.WithTracerProvider(t.tp),
		observe.WithMeterProvider(t.mp),
		observe.WithPropagators(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})),
	}, more...)
}

func (t *telemetry) collect(tb testing.TB) metricdata.ResourceMetrics {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := t.reader.Collect(context.Background(), &rm); err != nil {
		tb.Fatalf("collect metrics: %v", err)
	}
	return rm
}

// metric returns the metric called name, failing the test if there is none.
func findMetric(tb testing.TB, rm metricdata.ResourceMetrics, name string) metricdata.Metrics {
	tb.Helper()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m
			}
		}
	}
	tb.Fatalf("no metric %q", name)
	return metricdata.Metrics{}
}

// sums maps the attribute sets of an int64 sum to their values, each set
// written as its encoded form.
func int64Sums(tb testing.TB, m metricdata.Metrics) map[string]int64 {
	tb.Helper()
	s, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		tb.Fatalf("%s: data is %T, want Sum[int64]", m.Name, m.Data)
	}
	out := map[string]int64{}
	for _, dp := range s.DataPoints {
		out[dp.Attributes.Encoded(attribute.DefaultEncoder())] = dp.Value
	}
	return out
}

// sampledContext is a context whose span context is remote and sampled,
// with fixed ids.
func sampledContext(ctx context.Context, sampled bool) context.Context {
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	var flags trace.TraceFlags
	if sampled {
		flags = trace.FlagsSampled
	}
	return trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: true,
	}))
}

func spanAttr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}
