// Package otlptest is an in-process OTLP/gRPC receiver for tests: it
// implements the collector's trace and metrics services on a loopback port,
// keeps every request it receives, and lets a test wait for the spans or
// metrics it expects.
package otlptest

import (
	"context"
	"encoding/hex"
	"net"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Receiver is a running OTLP/gRPC receiver. Its methods are safe for
// concurrent use.
type Receiver struct {
	lis net.Listener
	srv *grpc.Server

	mu      sync.Mutex
	spans   []Span
	metrics []Metric
	changed chan struct{} // closed and replaced whenever data arrives
}

// Span is one received span with the resource and scope it came with.
type Span struct {
	Resource *resourcepb.Resource
	Scope    *commonpb.InstrumentationScope
	*tracepb.Span
}

// Metric is one received metric with the resource it came with. A metric
// exported every interval appears once per export.
type Metric struct {
	Resource *resourcepb.Resource
	Scope    *commonpb.InstrumentationScope
	*metricpb.Metric
}

// Start starts a receiver on 127.0.0.1:0; it stops when the test ends.
func Start(t testing.TB) *Receiver {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlptest: listen: %v", err)
	}
	r := &Receiver{lis: lis, srv: grpc.NewServer(), changed: make(chan struct{})}
	coltracepb.RegisterTraceServiceServer(r.srv, traceService{r: r})
	colmetricpb.RegisterMetricsServiceServer(r.srv, metricsService{r: r})
	go func() { _ = r.srv.Serve(lis) }()
	t.Cleanup(r.srv.Stop)
	return r
}

// Addr is the receiver's host:port.
func (r *Receiver) Addr() string { return r.lis.Addr().String() }

// Endpoint is the receiver's address as an OTEL_EXPORTER_OTLP_ENDPOINT value
// (plain-text gRPC).
func (r *Receiver) Endpoint() string { return "http://" + r.Addr() }

// Spans returns a copy of the list of spans received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Metrics returns a copy of the list of metrics received so far.
func (r *Receiver) Metrics() []Metric {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Metric(nil), r.metrics...)
}

// WaitSpans waits up to timeout until at least n received spans satisfy
// match, and returns those spans; it fails the test on timeout.
func (r *Receiver) WaitSpans(t testing.TB, timeout time.Duration, n int, match func(Span) bool) []Span {
	t.Helper()
	var got []Span
	ok := r.wait(timeout, func() bool {
		got = got[:0]
		for _, s := range r.spans {
			if match(s) {
				got = append(got, s)
			}
		}
		return len(got) >= n
	})
	if !ok {
		t.Fatalf("otlptest: %d matching span(s) after %v, want %d (received %d spans)", len(got), timeout, n, len(r.Spans()))
	}
	return got
}

// WaitMetric waits up to timeout for the latest export of the metric called
// name to satisfy match, and returns it; it fails the test on timeout.
func (r *Receiver) WaitMetric(t testing.TB, timeout time.Duration, name string, match func(Metric) bool) Metric {
	t.Helper()
	var got Metric
	ok := r.wait(timeout, func() bool {
		for i := len(r.metrics) - 1; i >= 0; i-- {
			if m := r.metrics[i]; m.GetName() == name {
				got = m
				return match(m)
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("otlptest: metric %q not received or not matching after %v (last: %v)", name, timeout, got.Metric)
	}
	return got
}

// wait calls cond under r.mu each time data arrives until it holds or the
// timeout passes.
func (r *Receiver) wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond()
		changed := r.changed
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return false
		}
	}
}

func (r *Receiver) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

type traceService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (s traceService) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				s.r.spans = append(s.r.spans, Span{Resource: rs.GetResource(), Scope: ss.GetScope(), Span: sp})
			}
		}
	}
	s.r.notifyLocked()
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type metricsService struct {
	colmetricpb.UnimplementedMetricsServiceServer
	r *Receiver
}

func (s metricsService) Export(_ context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	s.r.mu.Lock()
	defer s.r.mu.Unlock()
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				s.r.metrics = append(s.r.metrics, Metric{Resource: rm.GetResource(), Scope: sm.GetScope(), Metric: m})
			}
		}
	}
	s.r.notifyLocked()
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

// Attr returns the value of the attribute key in attrs, and whether it is
// there. Values are returned as Go values: string, int64, float64, bool.
func Attr(attrs []*commonpb.KeyValue, key string) (any, bool) {
	for _, kv := range attrs {
		if kv.GetKey() != key {
			continue
		}
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			return v.StringValue, true
		case *commonpb.AnyValue_IntValue:
			return v.IntValue, true
		case *commonpb.AnyValue_DoubleValue:
			return v.DoubleValue, true
		case *commonpb.AnyValue_BoolValue:
			return v.BoolValue, true
		default:
			return kv.GetValue().String(), true
		}
	}
	return nil, false
}

// Attrs returns attrs as a map of Go values (see Attr).
func Attrs(attrs []*commonpb.KeyValue) map[string]any {
	m := make(map[string]any, len(attrs))
	for _, kv := range attrs {
		v, _ := Attr([]*commonpb.KeyValue{kv}, kv.GetKey())
		m[kv.GetKey()] = v
	}
	return m
}

// TraceID returns the span's trace id in hex.
func (s Span) TraceID() string { return hex.EncodeToString(s.GetTraceId()) }

// SpanID returns the span's id in hex.
func (s Span) SpanID() string { return hex.EncodeToString(s.GetSpanId()) }

// ParentSpanID returns the span's parent span id in hex, "" for a root.
func (s Span) ParentSpanID() string { return hex.EncodeToString(s.GetParentSpanId()) }
