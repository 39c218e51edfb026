package export

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// BenchmarkStatement measures Exporter.Statement alone: a sampled span
// through the bounded queue and batch processor to a no-op exporter, plus
// the metric records.
func BenchmarkStatement(b *testing.B) {
	for _, bc := range []struct {
		name   string
		parent fingerprint.TraceContext
		env    string // OTEL_TRACES_SAMPLER
	}{
		{"sampled_child", parentTC, "parentbased_always_on"},
		{"unsampled_root", fingerprint.TraceContext{}, "parentbased_always_off"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
			b.Setenv("OTEL_TRACES_SAMPLER", bc.env)
			e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), UpstreamAddr: "db:5432",
				SpanExporter: tracetest.NewNoopExporter()})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Shutdown(context.Background())
			s := stmt(qSelect, t0, time.Millisecond, bc.parent)
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				e.Statement(s, detector.Verdict{})
			}
			reportCPU(b, cpu)
		})
	}
}

// processCPU is the CPU time (user + system) the process has used: the
// honest cost on a shared machine where wall time per op is inflated by
// other load. It includes the span processor's and the GC's goroutines.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process CPU time per op since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkSDKSpanFloor is the OpenTelemetry SDK's own cost for one sampled
// span with as many attributes as a statement span, through the same
// processors: the floor under BenchmarkStatement/sampled_child.
func BenchmarkSDKSpanFloor(b *testing.B) {
	b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	b.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), SpanExporter: tracetest.NewNoopExporter()})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	s := stmt(qSelect, t0, time.Millisecond, parentTC)
	attrs := e.statementAttrs(nil, e.connLocked(s.Conn).base, s, detector.Verdict{})
	b.ReportMetric(float64(len(attrs)), "attrs")
	ctx := context.Background()
	b.ReportAllocs()
	cpu := processCPU()
	for b.Loop() {
		_, span := e.tracer.Start(ctx, "SELECT users", trace.WithSpanKind(trace.SpanKindClient))
		span.SetAttributes(attrs...)
		span.End()
	}
	reportCPU(b, cpu)
}
