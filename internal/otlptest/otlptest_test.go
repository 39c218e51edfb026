package otlptest

import (
	"context"
	"runtime"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func TestReceiver(t *testing.T) {
	r := Start(t)
	cc, err := grpc.NewClient(r.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()

	// A span sent after the wait begins is seen by it.
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, err := coltracepb.NewTraceServiceClient(cc).Export(ctx, &coltracepb.ExportTraceServiceRequest{
			ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{
				{Name: "a", TraceId: make([]byte, 16), SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, Attributes: []*commonpb.KeyValue{str("k", "v")}},
				{Name: "b"},
			}}}}},
		})
		if err != nil {
			t.Errorf("export spans: %v", err)
		}
	}()
	got := r.WaitSpans(t, 5*time.Second, 1, func(s Span) bool { return s.GetName() == "a" })
	if v, _ := Attr(got[0].GetAttributes(), "k"); v != "v" || got[0].SpanID() != "0102030405060708" || got[0].ParentSpanID() != "" {
		t.Errorf("span = %v", got[0].Span)
	}
	if n := len(r.Spans()); n != 2 {
		t.Errorf("received %d spans, want 2", n)
	}

	_, err = colmetricpb.NewMetricsServiceClient(cc).Export(ctx, &colmetricpb.ExportMetricsServiceRequest{
		ResourceMetrics: []*metricpb.ResourceMetrics{{ScopeMetrics: []*metricpb.ScopeMetrics{{Metrics: []*metricpb.Metric{
			{Name: "m", Data: &metricpb.Metric_Sum{Sum: &metricpb.Sum{DataPoints: []*metricpb.NumberDataPoint{
				{Value: &metricpb.NumberDataPoint_AsInt{AsInt: 7}}}}}},
		}}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := r.WaitMetric(t, 5*time.Second, "m", func(m Metric) bool { return m.GetSum().GetDataPoints()[0].GetAsInt() == 7 })
	if m.GetName() != "m" {
		t.Errorf("metric = %v", m.Metric)
	}
}

func TestWaitTimesOut(t *testing.T) {
	r := Start(t)
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.WaitSpans(ft, 100*time.Millisecond, 1, func(Span) bool { return true })
	}()
	<-done
	if !ft.failed {
		t.Error("WaitSpans returned without failing when nothing arrived")
	}
}

// fakeT records Fatalf instead of ending the test.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(string, ...any) {
	f.failed = true
	runtime.Goexit() // as t.FailNow does
}
