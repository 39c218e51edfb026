package export

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/internal/otelenv"
	"github.com/dotmac/pgtrace/internal/otlptest"
)

// clearOTLPTargetEnv clears every variable otelenv.OTLP reads, beyond
// clearOTelEnv's.
func clearOTLPTargetEnv(t *testing.T) {
	t.Helper()
	clearOTelEnv(t)
	for _, k := range []string{
		"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
		"OTEL_EXPORTER_OTLP_METRICS_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
		"OTEL_METRIC_EXPORT_INTERVAL", "OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_BSP_SCHEDULE_DELAY",
	} {
		t.Setenv(k, "")
	}
}

// logLines captures JSON log records.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// records returns the records whose message starts with prefix.
func (l *logLines) records(t *testing.T, prefix string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if msg, _ := r["msg"].(string); strings.HasPrefix(msg, prefix) {
			out = append(out, r)
		}
	}
	return out
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestEndpointWithoutScheme: host:port, as the OTLP specification allows
// for gRPC, reaches the collector (plaintext with
// OTEL_EXPORTER_OTLP_INSECURE=true), the startup line says where it goes,
// and the SDK's own "parse url" errors stay out of the log.
func TestEndpointWithoutScheme(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "localhost"} {
		t.Run(host, func(t *testing.T) {
			clearOTLPTargetEnv(t)
			rcv := otlptest.Start(t)
			_, port, _ := net.SplitHostPort(rcv.Addr())
			endpoint := net.JoinHostPort(host, port)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
			t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
			var logs logLines
			e, err := New(context.Background(), Config{Logger: logs.logger()})
			if err != nil {
				t.Fatal(err)
			}
			e.Statement(stmt(qSelect, t0, time.Millisecond, parentTC), detector.Verdict{})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := e.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown: %v\n%s", err, logs.String())
			}
			rcv.WaitSpans(t, 5*time.Second, 1, func(otlptest.Span) bool { return true })
			rcv.WaitMetric(t, 5*time.Second, "db.client.operation.duration", func(otlptest.Metric) bool { return true })

			start := logs.records(t, "OTLP export")
			want := "grpc http://" + endpoint + " (plaintext)"
			if len(start) != 1 || start[0]["traces"] != want || start[0]["metrics"] != want || start[0]["sampler"] != "parentbased_always_on" ||
				start[0]["metric_interval"] != "1m0s" {
				t.Errorf("startup lines %v, want one with traces and metrics %q, the sampler and the interval", start, want)
			}
			if strings.Contains(logs.String(), "parse url") || len(logs.records(t, "opentelemetry export error")) > 0 {
				t.Errorf("log has SDK noise or export errors:\n%s", logs.String())
			}
		})
	}

	// Without OTEL_EXPORTER_OTLP_INSECURE, TLS, as the specification says,
	// and a warning that says how to send plaintext.
	clearOTLPTargetEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:1")
	var logs logLines
	e, err := New(context.Background(), Config{Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = e.Shutdown(ctx)
	w := logs.records(t, "OTEL_EXPORTER_OTLP_ENDPOINT has no scheme: sending with TLS")
	if len(w) != 1 || w[0]["level"] != "WARN" || !strings.Contains(w[0]["fix"].(string), "OTEL_EXPORTER_OTLP_INSECURE=true or write http://127.0.0.1:1") {
		t.Errorf("no-scheme warning %v, want one WARN with the fix\n%s", w, logs.String())
	}
}

// tracesOnlyCollector is an OTLP gRPC server with the trace service only,
// as Jaeger is: metrics exports get Unimplemented.
func tracesOnlyCollector(t *testing.T) (addr string, spans *atomic.Int64) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ts := &countingTraceService{}
	coltracepb.RegisterTraceServiceServer(srv, ts)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), &ts.spans
}

type countingTraceService struct {
	coltracepb.UnimplementedTraceServiceServer
	spans atomic.Int64
}

func (s *countingTraceService) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// TestCollectorWithoutMetrics: a collector that accepts traces only (gRPC
// Unimplemented, or OTLP/HTTP 404 for /v1/metrics) gets one clear warning
// naming OTEL_METRICS_EXPORTER=none, then no more metric exports, no
// export errors, and a clean shutdown; traces keep flowing.
func TestCollectorWithoutMetrics(t *testing.T) {
	grpcAddr, grpcSpans := tracesOnlyCollector(t)
	var httpSpans, httpMetricCalls atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path != "/v1/traces" {
			httpMetricCalls.Add(1)
			http.NotFound(w, r)
			return
		}
		httpSpans.Add(1)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer hs.Close()

	for _, tt := range []struct {
		protocol, endpoint string
		spans              *atomic.Int64
	}{
		{"grpc", "http://" + grpcAddr, grpcSpans},
		{"http/protobuf", hs.URL, &httpSpans},
	} {
		t.Run(tt.protocol, func(t *testing.T) {
			clearOTLPTargetEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tt.endpoint)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tt.protocol)
			t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "50")
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
			var logs logLines
			e, err := New(context.Background(), Config{Logger: logs.logger()})
			if err != nil {
				t.Fatal(err)
			}
			e.Statement(stmt(qSelect, t0, time.Millisecond, parentTC), detector.Verdict{})
			want := "the collector at " + otelenv.OTLP("metrics", func(k string) string {
				return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": tt.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": tt.protocol}[k]
			}).URL + " does not accept metrics; set OTEL_METRICS_EXPORTER=none"
			deadline := time.Now().Add(10 * time.Second)
			for len(logs.records(t, want)) == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			calls := httpMetricCalls.Load()
			time.Sleep(500 * time.Millisecond) // ten more export intervals
			if tt.protocol == "http/protobuf" && httpMetricCalls.Load() != calls {
				t.Errorf("metrics were sent again after the collector refused them: %d, then %d requests", calls, httpMetricCalls.Load())
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := e.Shutdown(ctx); err != nil {
				t.Errorf("Shutdown: %v, want a clean one", err)
			}
			if w := logs.records(t, want); len(w) != 1 || w[0]["level"] != "WARN" {
				t.Errorf("%d %q warnings, want exactly one:\n%s", len(w), want, logs.String())
			}
			if n := len(logs.records(t, "opentelemetry export error")); n > 0 {
				t.Errorf("%d export errors logged:\n%s", n, logs.String())
			}
			if tt.spans.Load() == 0 {
				t.Error("no spans reached the collector")
			}
		})
	}
}

// TestShutdownReportsWhatWasNotSent: with a collector that never answers,
// Shutdown's error is one line that says how many spans and metric points
// were not sent, and the cause once.
func TestShutdownReportsWhatWasNotSent(t *testing.T) {
	clearOTLPTargetEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+deadCollector(t))
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000") // everything waits for Shutdown
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		e.Statement(stmt(qSelect, t0.Add(time.Duration(i)*time.Millisecond), time.Millisecond, parentTC), detector.Verdict{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = e.Shutdown(ctx)
	var se *ShutdownError
	if !errors.As(err, &se) {
		t.Fatalf("Shutdown = %v (%T), want a *ShutdownError", err, err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("the error spans lines: %q", msg)
	}
	if se.SpansNotSent != 10 || se.MetricPointsNotSent == 0 {
		t.Errorf("not sent: %d spans, %d metric points; want 10 and some", se.SpansNotSent, se.MetricPointsNotSent)
	}
	if !strings.HasPrefix(msg, "OTLP export incomplete: 10 spans and ") || !strings.Contains(se.Cause, "context deadline exceeded") {
		t.Errorf("error %q, want the counts and the cause", msg)
	}
	seen := map[string]bool{}
	for _, c := range strings.Split(se.Cause, "; ") {
		if seen[c] {
			t.Errorf("cause %q repeats %q", se.Cause, c)
		}
		seen[c] = true
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
	}
}

// TestSDKLogsThroughLogger: the OTel SDK's own messages reach pgtrace's
// logger, in its format, marked as the SDK's.
func TestSDKLogsThroughLogger(t *testing.T) {
	clearOTLPTargetEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem") // the SDK logs that it cannot read it
	var logs logLines
	e, err := New(context.Background(), Config{Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = e.Shutdown(ctx)
	rs := logs.records(t, "read tls ca cert file")
	if len(rs) == 0 || rs[0]["component"] != "opentelemetry-sdk" || rs[0]["level"] != "ERROR" {
		t.Errorf("SDK message %v, want it as a JSON record with component=opentelemetry-sdk\n%s", rs, logs.String())
	}
}

// TestDeliveryRefusal: which errors mean "this collector does not take the
// signal", and that the refusal is said once, naming the signal's variable,
// while other failures are counted and returned.
func TestDeliveryRefusal(t *testing.T) {
	for _, tt := range []struct {
		err     error
		refused bool
	}{
		{status.Error(codes.Unimplemented, "unknown service opentelemetry.proto.collector.metrics.v1.MetricsService"), true},
		{fmt.Errorf("traces export: %w", status.Error(codes.Unimplemented, "unknown service")), true},
		{errors.New("failed to send metrics to http://c:4318/v1/metrics: 404 Not Found (body: 404 page not found)"), true},
		{errors.New("failed to send to http://c:4318/v1/traces: 405 Method Not Allowed (body: (empty))"), true},
		{status.Error(codes.Unavailable, "connection refused"), false},
		{context.DeadlineExceeded, false},
		{errors.New("failed to send metrics to http://c:4318/v1/metrics: 400 Bad Request (body: 404 Not Found)"), false},
	} {
		if got := refusesSignal(tt.err); got != tt.refused {
			t.Errorf("refusesSignal(%v) = %v, want %v", tt.err, got, tt.refused)
		}
	}

	var logs logLines
	d := &delivery{signal: "traces", target: otelenv.Target{URL: "http://c:4317"}, log: logs.logger()}
	unimplemented := status.Error(codes.Unimplemented, "unknown service")
	for range 3 {
		if err := d.done(unimplemented, 5); err != nil {
			t.Errorf("done(Unimplemented) = %v, want nil (not an error to report again)", err)
		}
	}
	if w := logs.records(t, "the collector at http://c:4317 does not accept traces; set OTEL_TRACES_EXPORTER=none"); len(w) != 1 {
		t.Errorf("%d refusal lines, want 1:\n%s", len(w), logs.String())
	}
	if err := d.done(context.DeadlineExceeded, 7); !errors.Is(err, context.DeadlineExceeded) || d.failed.Load() != 7 {
		t.Errorf("done(deadline) = %v with %d failed, want the error and 7", err, d.failed.Load())
	}
}

// TestStartupLineWhenOff: with OTLP off, the one line says why, signal by
// signal.
func TestStartupLineWhenOff(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{nil, "OTLP export off: no OTEL_EXPORTER_OTLP_ENDPOINT set; metrics on /metrics only"},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"},
			"OTLP export off; metrics on /metrics only"},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"},
			"OTLP export disabled by OTEL_SDK_DISABLED; metrics on /metrics only"},
	} {
		clearOTLPTargetEnv(t)
		for k, v := range tt.env {
			t.Setenv(k, v)
		}
		var logs logLines
		e, err := New(context.Background(), Config{Logger: logs.logger()})
		if err != nil {
			t.Fatal(err)
		}
		_ = e.Shutdown(context.Background())
		if rs := logs.records(t, "OTLP export"); len(rs) != 1 || rs[0]["msg"] != tt.want {
			t.Errorf("env %v: startup lines %v, want one %q", tt.env, rs, tt.want)
		}
	}
}
