package observe_test

import (
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otellog "go.opentelemetry.io/otel/log"
	"go.opentelemetry.io/otel/log/global"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	collogpb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/dotmac/pgtrace/internal/otlptest"
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
		"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "ENVIRONMENT", "SERVICE_VERSION",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
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
		{opts: []observe.Option{observe.WithSamplingRatio(2)}, want: "not between 0 and 1"},
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

// TestSetupWarnings: an OTEL_* value Setup cannot honour is replaced, as
// pgtrace replaces it (internal/otelenv), with a warning to the OTel error
// handler; Setup does not fail.
func TestSetupWarnings(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"OTEL_TRACES_SAMPLING_RATIO": "lots"}, `sampler argument "lots"`},
		{map[string]string{"OTEL_TRACES_SAMPLER": "bogus"}, `unsupported OTEL_TRACES_SAMPLER "bogus"`},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "zipkin"},
			"OTEL_TRACES_EXPORTER=zipkin: only otlp and none are supported; sending OTLP"},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
			"OTEL_EXPORTER_OTLP_PROTOCOL=http/json: OTLP over http/json is not supported; sending http/protobuf"},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "udp"},
			"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL=udp: unknown OTLP protocol; sending grpc"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			restoreGlobals(t)
			clearOTelEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var h errorRecorder
			otel.SetErrorHandler(&h)
			t.Cleanup(func() { otel.SetErrorHandler(otel.ErrorHandlerFunc(func(error) {})) })
			shutdown, err := observe.Setup(context.Background())
			if err != nil {
				t.Fatalf("Setup: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			_ = shutdown(ctx)
			if !slices.ContainsFunc(h.errs(), func(e string) bool { return strings.Contains(e, tc.want) }) {
				t.Errorf("warnings %q, want one containing %q", h.errs(), tc.want)
			}
		})
	}
}

// errorRecorder is an OTel error handler that keeps what it is handed.
type errorRecorder struct {
	mu  sync.Mutex
	got []string
}

func (r *errorRecorder) Handle(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, err.Error())
}

func (r *errorRecorder) errs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
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

// TestSetupResource: the environment names the service before the
// program's defaults; options override both.
func TestSetupResource(t *testing.T) {
	for _, tc := range []struct {
		name         string
		env          map[string]string
		opts         []observe.Option
		svc, version string
	}{
		{name: "default name", opts: []observe.Option{observe.WithDefaultServiceName("partners")},
			svc: "partners"},
		{name: "OTEL_SERVICE_NAME over the default", env: map[string]string{"OTEL_SERVICE_NAME": "billing"},
			opts: []observe.Option{observe.WithDefaultServiceName("partners")}, svc: "billing"},
		{name: "OTEL_RESOURCE_ATTRIBUTES over the default and SERVICE_VERSION",
			env:  map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing%20eu,service.version=2.0", "SERVICE_VERSION": "1.0"},
			opts: []observe.Option{observe.WithDefaultServiceName("partners")}, svc: "billing eu", version: "2.0"},
		{name: "SERVICE_VERSION", env: map[string]string{"SERVICE_VERSION": "1.0", "OTEL_SERVICE_NAME": "billing"},
			svc: "billing", version: "1.0"},
		{name: "options over the environment", env: map[string]string{"OTEL_SERVICE_NAME": "billing", "SERVICE_VERSION": "1.0"},
			opts: []observe.Option{observe.WithServiceName("checkout"), observe.WithServiceVersion("3.0")}, svc: "checkout", version: "3.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			restoreGlobals(t)
			clearOTelEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			reader := sdkmetric.NewManualReader()
			ctx := context.Background()
			shutdown, err := observe.Setup(ctx, append(tc.opts, observe.WithMetricReader(reader))...)
			if err != nil {
				t.Fatal(err)
			}
			defer shutdown(ctx)
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(ctx, &rm); err != nil {
				t.Fatal(err)
			}
			set := rm.Resource.Set()
			if v, _ := set.Value("service.name"); v.AsString() != tc.svc {
				t.Errorf("service.name = %q, want %q", v.AsString(), tc.svc)
			}
			if v, _ := set.Value("service.version"); v.AsString() != tc.version {
				t.Errorf("service.version = %q, want %q", v.AsString(), tc.version)
			}
			// The sqlcommenter application tag and the debug handler
			// follow the same name.
			want := "SELECT 1 /*application='" + strings.ReplaceAll(tc.svc, " ", "%20") + "'*/"
			if got := observe.Comment(ctx, "SELECT 1"); got != want {
				t.Errorf("Comment = %s, want %s", got, want)
			}
		})
	}
}

// TestSetupOTLPProtocols exports a span, a metric point and a log record
// over each protocol to a real receiver: internal/otlptest for gRPC, an
// HTTP server decoding OTLP/protobuf for http/protobuf.
func TestSetupOTLPProtocols(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  func(t *testing.T) (got func() map[string]int)
	}{
		{name: "grpc (default)", env: func(t *testing.T) func() map[string]int {
			rcv := otlptest.Start(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.Endpoint())
			t.Setenv("OTEL_LOGS_EXPORTER", "none") // otlptest has no logs service
			return func() map[string]int {
				got := map[string]int{}
				for _, s := range rcv.Spans() {
					if svc, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name"); svc == "proto-test" {
						got["span "+s.GetName()]++
					}
				}
				for _, m := range rcv.Metrics() {
					got["metric "+m.GetName()]++
				}
				return got
			}
		}},
		{name: "http/protobuf", env: func(t *testing.T) func() map[string]int {
			rcv := newHTTPReceiver(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL())
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
			return rcv.received
		}},
		{name: "http/json is sent as http/protobuf", env: func(t *testing.T) func() map[string]int {
			rcv := newHTTPReceiver(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL())
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
			return rcv.received
		}},
		{name: "http/protobuf per signal", env: func(t *testing.T) func() map[string]int {
			rcv := newHTTPReceiver(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1") // unused: every signal has its own
			for _, sig := range []string{"TRACES", "METRICS", "LOGS"} {
				t.Setenv("OTEL_EXPORTER_OTLP_"+sig+"_ENDPOINT", rcv.URL()+"/v1/"+strings.ToLower(sig))
				t.Setenv("OTEL_EXPORTER_OTLP_"+sig+"_PROTOCOL", "http/protobuf")
			}
			return rcv.received
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			restoreGlobals(t)
			clearOTelEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
			t.Setenv("OTEL_SERVICE_NAME", "proto-test")
			received := tc.env(t)
			ctx := context.Background()
			shutdown, err := observe.Setup(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, span := otel.Tracer("test").Start(ctx, "exported")
			span.End()
			counter, _ := otel.Meter("test").Int64Counter("test.exported")
			counter.Add(ctx, 1)
			var rec otellog.Record
			rec.SetBody(attribute.StringValue("exported"))
			global.GetLoggerProvider().Logger("test").Emit(ctx, rec)
			// Shutdown flushes every signal.
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := shutdown(sctx); err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			got := received()
			for _, k := range []string{"span exported", "metric test.exported"} {
				if got[k] == 0 {
					t.Errorf("receiver got no %s; got %v", k, got)
				}
			}
			if strings.HasPrefix(tc.name, "http") && got["log exported"] == 0 {
				t.Errorf("receiver got no log record; got %v", got)
			}
		})
	}
}

// httpReceiver is an OTLP/HTTP receiver: it decodes the protobuf bodies
// POSTed to /v1/traces, /v1/metrics and /v1/logs and counts what they hold.
type httpReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	got map[string]int
}

func newHTTPReceiver(t *testing.T) *httpReceiver {
	r := &httpReceiver{got: map[string]int{}}
	mux := http.NewServeMux()
	handle := func(path string, msg func() proto.Message, count func(proto.Message)) {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, req *http.Request) {
			body, err := io.ReadAll(req.Body)
			if err != nil || req.Header.Get("Content-Type") != "application/x-protobuf" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			m := msg()
			if err := proto.Unmarshal(body, m); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.mu.Lock()
			count(m)
			r.mu.Unlock()
			w.Header().Set("Content-Type", "application/x-protobuf")
			w.WriteHeader(http.StatusOK)
		})
	}
	handle("/v1/traces", func() proto.Message { return &coltracepb.ExportTraceServiceRequest{} }, func(m proto.Message) {
		for _, rs := range m.(*coltracepb.ExportTraceServiceRequest).GetResourceSpans() {
			if svc, _ := otlptest.Attr(rs.GetResource().GetAttributes(), "service.name"); svc != "proto-test" {
				continue
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					r.got["span "+s.GetName()]++
				}
			}
		}
	})
	handle("/v1/metrics", func() proto.Message { return &colmetricpb.ExportMetricsServiceRequest{} }, func(m proto.Message) {
		for _, rm := range m.(*colmetricpb.ExportMetricsServiceRequest).GetResourceMetrics() {
			for _, sm := range rm.GetScopeMetrics() {
				for _, mt := range sm.GetMetrics() {
					r.got["metric "+mt.GetName()]++
				}
			}
		}
	})
	handle("/v1/logs", func() proto.Message { return &collogpb.ExportLogsServiceRequest{} }, func(m proto.Message) {
		for _, rl := range m.(*collogpb.ExportLogsServiceRequest).GetResourceLogs() {
			for _, sl := range rl.GetScopeLogs() {
				for _, l := range sl.GetLogRecords() {
					r.got["log "+l.GetBody().GetStringValue()]++
				}
			}
		}
	})
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *httpReceiver) URL() string { return r.srv.URL }

func (r *httpReceiver) received() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.got)
}
