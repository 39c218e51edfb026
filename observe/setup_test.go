package observe_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log/global"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dotmac/pgtrace/observe"
)

// restoreGlobals puts the OpenTelemetry globals back after a test that runs
// Setup.
func restoreGlobals(t *testing.T) {
	tp, mp, lp, p := otel.GetTracerProvider(), otel.GetMeterProvider(), global.GetLoggerProvider(), otel.GetTextMapPropagator()
	t.Cleanup(func() {
		if otel.GetTracerProvider() != tp {
			otel.SetTracerProvider(tp)
			otel.SetMeterProvider(mp)
			global.SetLoggerProvider(lp)
			otel.SetTextMapPropagator(p)
		}
	})
}

// clearOTelEnv unsets the variables Setup reads, for the test's duration.
func clearOTelEnv(t *testing.T) {
	for _, k := range []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
		"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
		"OTEL_LOGS_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_SAMPLING_RATIO",
		"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "ENVIRONMENT",
	} {
		t.Setenv(k, "")
	}
}

func TestSetup(t *testing.T) {
	restoreGlobals(t)
	clearOTelEnv(t)
	t.Setenv("ENVIRONMENT", "staging")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "team=partners")
	t.Setenv("OTEL_TRACES_SAMPLING_RATIO", "0")

	spans := keepExporter{tracetest.NewInMemoryExporter()}
	reader := sdkmetric.NewManualReader()
	ctx := context.Background()
	shutdown, err := observe.Setup(ctx,
		observe.WithServiceName("checkout"), observe.WithServiceVersion("1.2.3"),
		observe.WithSpanExporter(spans), observe.WithMetricReader(reader))
	if err != nil {
		t.Fatal(err)
	}

	tracer := otel.Tracer("test")
	// Ratio 0: a root is not sampled...
	_, root := tracer.Start(ctx, "root")
	if root.SpanContext().IsSampled() {
		t.Error("root span sampled with ratio 0")
	}
	root.End()
	// ...but a sampled remote parent is followed.
	_, child := tracer.Start(sampledContext(ctx, true), "child")
	if !child.SpanContext().IsSampled() {
		t.Error("child of a sampled parent not sampled")
	}
	child.End()

	counter, _ := otel.Meter("test").Int64Counter("test.counter")
	counter.Add(ctx, 1)
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[attribute.Key]string{
		"service.name": "checkout", "service.version": "1.2.3",
		"deployment.environment.name": "staging", "team": "partners",
	} {
		if v, ok := rm.Resource.Set().Value(key); !ok || v.AsString() != want {
			t.Errorf("resource %s = %q, want %q", key, v.AsString(), want)
		}
	}

	// The propagators are installed.
	fields := otel.GetTextMapPropagator().Fields()
	slices.Sort(fields)
	if want := []string{"baggage", "traceparent", "tracestate"}; !slices.Equal(fields, want) {
		t.Errorf("propagator fields %v, want %v", fields, want)
	}

	// Comment's application follows Setup.
	if got := observe.Comment(ctx, "SELECT 1"); got != "SELECT 1 /*application='checkout'*/" {
		t.Errorf("Comment = %s", got)
	}

	// Shutdown flushes the batched span.
	if err := shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if got := spans.GetSpans(); len(got) != 1 || got[0].Name != "child" {
		t.Errorf("exported spans %v, want [child]", got)
	}
}

func TestSetupErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		opts []observe.Option
		want string
	}{
		{env: map[string]string{"OTEL_TRACES_SAMPLING_RATIO": "lots"}, want: "OTEL_TRACES_SAMPLING_RATIO"},
		{opts: []observe.Option{observe.WithSamplingRatio(2)}, want: "not between 0 and 1"},
		{env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, want: "OTEL_TRACES_EXPORTER"},
		{env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, want: "OTEL_EXPORTER_OTLP_PROTOCOL"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			restoreGlobals(t)
			clearOTelEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			shutdown, err := observe.Setup(context.Background(), tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
			if shutdown != nil {
				t.Error("shutdown returned with an error")
			}
		})
	}
}

func TestSetupOTLPEndpoint(t *testing.T) {
	restoreGlobals(t)
	clearOTelEnv(t)
	// Exporters are created without connecting; shutdown must not hang on an
	// unreachable collector beyond its context.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	ctx := context.Background()
	shutdown, err := observe.Setup(ctx, observe.WithServiceName("x"))
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_ = shutdown(sctx) // the final metric export fails (nothing listens); it must return
}

// keepExporter keeps its spans after Shutdown, which InMemoryExporter
// clears, so that a test can see what shutdown flushed.
type keepExporter struct{ *tracetest.InMemoryExporter }

func (keepExporter) Shutdown(context.Context) error { return nil }
