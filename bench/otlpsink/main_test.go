package main

import (
	"testing"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestCount(t *testing.T) {
	attrs := []*commonpb.KeyValue{{Key: "k", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "v"}}}}
	spans := func(n int) []*tracepb.Span {
		var out []*tracepb.Span
		for range n {
			out = append(out, &tracepb.Span{Name: "s", Attributes: attrs, Events: []*tracepb.Span_Event{{Name: "e"}}})
		}
		return out
	}
	traces := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{
		{Resource: &resourcepb.Resource{Attributes: attrs}, ScopeSpans: []*tracepb.ScopeSpans{
			{Scope: &commonpb.InstrumentationScope{Name: "a"}, Spans: spans(3)},
			{Scope: &commonpb.InstrumentationScope{Name: "b"}, Spans: spans(4)},
		}},
		{ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans(5)}}, SchemaUrl: "x"},
	}}
	metrics := &colmetricpb.ExportMetricsServiceRequest{ResourceMetrics: []*metricpb.ResourceMetrics{
		{Resource: &resourcepb.Resource{Attributes: attrs}, ScopeMetrics: []*metricpb.ScopeMetrics{{Metrics: []*metricpb.Metric{
			{Name: "g", Data: &metricpb.Metric_Gauge{Gauge: &metricpb.Gauge{DataPoints: make([]*metricpb.NumberDataPoint, 2)}}},
			{Name: "s", Data: &metricpb.Metric_Sum{Sum: &metricpb.Sum{DataPoints: make([]*metricpb.NumberDataPoint, 3)}}},
			{Name: "h", Data: &metricpb.Metric_Histogram{Histogram: &metricpb.Histogram{
				DataPoints: []*metricpb.HistogramDataPoint{{Count: 1, BucketCounts: []uint64{1}, Attributes: attrs}}}}},
		}}}},
	}}
	for _, m := range []*metricpb.Metric{
		metrics.ResourceMetrics[0].ScopeMetrics[0].Metrics[0],
		metrics.ResourceMetrics[0].ScopeMetrics[0].Metrics[1],
	} {
		for i := range m.GetGauge().GetDataPoints() {
			m.GetGauge().DataPoints[i] = &metricpb.NumberDataPoint{Value: &metricpb.NumberDataPoint_AsInt{AsInt: 1}}
		}
		for i := range m.GetSum().GetDataPoints() {
			m.GetSum().DataPoints[i] = &metricpb.NumberDataPoint{Attributes: attrs}
		}
	}
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tb, mb := marshal(traces), marshal(metrics)
	for _, tc := range []struct {
		name  string
		b     []byte
		path  []protowire.Number
		kinds []protowire.Number
		want  int64
		bad   bool
	}{
		{"spans", tb, []protowire.Number{1, 2, 2}, nil, 12, false},
		{"points", mb, []protowire.Number{1, 2, 2}, []protowire.Number{5, 7, 9}, 6, false},
		{"empty request", nil, []protowire.Number{1, 2, 2}, nil, 0, false},
		{"truncated", tb[:len(tb)-3], []protowire.Number{1, 2, 2}, nil, 0, true},
		{"bad tag", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, []protowire.Number{1}, nil, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := count(tc.b, tc.path, tc.kinds)
			if (err != nil) != tc.bad {
				t.Fatalf("count: err = %v, want error %v", err, tc.bad)
			}
			if !tc.bad && got != tc.want {
				t.Errorf("count = %d, want %d", got, tc.want)
			}
		})
	}
}

func FuzzCount(f *testing.F) {
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Add([]byte{0x0a, 0x04, 0x12, 0x02, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, _ := count(b, []protowire.Number{1, 2, 2}, []protowire.Number{5, 7, 9})
		if n < 0 || n > int64(len(b)) {
			t.Fatalf("count = %d for %d bytes", n, len(b))
		}
	})
}
