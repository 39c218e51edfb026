package export

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// BenchmarkStatement measures Exporter.StatementSpan, what the pipeline
// calls per statement, alone: the span built and handed to the bounded
// queue of pgtrace's batch processor (fastspan.Sink, fastspan.Batcher),
// whose goroutine passes full batches to a no-op exporter, plus the metric records
// (duration and returned rows, with an exemplar when sampled). cpu-ns/op
// is process CPU, so it includes the batcher's goroutine and the garbage
// collector; exporting a span to a collector is not included (see
// BenchmarkExportSpans).
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
				SpanExporter: discardSpans{}})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Shutdown(context.Background())
			s := stmt(qSelect, t0, time.Millisecond, bc.parent)
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				e.StatementSpan(s, detector.Verdict{})
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
// span with as many attributes as a statement span, through its Tracer
// (Start, SetAttributes, End) and the same processors: the SDK's share of a
// statement span's cost before statement spans were built without the
// Tracer (fastspan.Sink). Transaction and connect spans still take this
// path, and statement spans with SpanPathSDK.
func BenchmarkSDKSpanFloor(b *testing.B) {
	b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	b.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), SpanExporter: discardSpans{}})
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

// BenchmarkExportSpans is what the batcher's goroutine spends per statement
// span after BenchmarkStatement has counted the span: the exporter's
// encoding of a full batch (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512) and the
// request to a local receiver, without compression, over gRPC (the default
// protocol) and HTTP. "pgtrace" is the exporter of the fast span path
// (fastspan.Exporter), "otlptrace" the OTel Go exporter of the SDK path,
// with the same clients. cpu-ns/span is process CPU per span. Both
// receivers drop the request undecoded, so nearly all of it is the
// exporter's.
func BenchmarkExportSpans(b *testing.B) {
	b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	b.Setenv("OTEL_TRACES_SAMPLER", "")
	b.Setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "")
	b.Setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "")
	batch := statementSpans(b, sdktrace.DefaultMaxExportBatchSize)
	ctx := context.Background()
	receivers := map[string]func(b *testing.B) string{
		"grpc": func(b *testing.B) string {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := grpc.NewServer(grpc.ForceServerCodecV2(undecoded{encoding.GetCodecV2(grpcproto.Name)}))
			coltracepb.RegisterTraceServiceServer(srv, discardTraces{})
			go func() { _ = srv.Serve(lis) }()
			b.Cleanup(srv.Stop)
			return lis.Addr().String()
		},
		"http": func(b *testing.B) string {
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/x-protobuf")
			}))
			b.Cleanup(hs.Close)
			return hs.Listener.Addr().String()
		},
	}
	for _, protocol := range []string{"grpc", "http"} {
		for _, impl := range []string{"pgtrace", "otlptrace"} {
			b.Run(protocol+"/"+impl, func(b *testing.B) {
				addr := receivers[protocol](b)
				var exp sdktrace.SpanExporter
				if impl == "pgtrace" {
					exp = ourExporter(b, otlpClient(protocol, addr))
				} else {
					exp = stockExporter(b, protocol, addr)
				}
				if err := exp.ExportSpans(ctx, batch); err != nil { // connect
					b.Fatal(err)
				}
				var ms0, ms1 runtime.MemStats
				runtime.ReadMemStats(&ms0)
				cpu := processCPU()
				for b.Loop() {
					if err := exp.ExportSpans(ctx, batch); err != nil {
						b.Fatal(err)
					}
				}
				spans := float64(b.N * len(batch))
				b.ReportMetric(float64(processCPU()-cpu)/spans, "cpu-ns/span")
				runtime.ReadMemStats(&ms1)
				b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/spans, "allocs/span")
				b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/spans, "B/span")
			})
		}
	}
}

// discardSpans is a span exporter that reads nothing and keeps nothing:
// statement spans are recycled (TransientExporter), as with the OTLP
// exporter.
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }
func (discardSpans) KeepsNoSpans()                                              {}

type discardTraces struct {
	coltracepb.UnimplementedTraceServiceServer
}

func (discardTraces) Export(context.Context, *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// undecoded is a gRPC codec that leaves requests undecoded (the handler
// gets an empty one) and encodes responses with the codec it wraps.
type undecoded struct{ encoding.CodecV2 }

func (undecoded) Unmarshal(mem.BufferSlice, any) error { return nil }

// statementSpans is n sampled statement spans as the exporter builds them.
func statementSpans(b testing.TB, n int) []sdktrace.ReadOnlySpan {
	rec := tracetest.NewSpanRecorder()
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), UpstreamAddr: "db:5432", SpanProcessor: rec})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	for i := range n {
		e.StatementSpan(stmt(qSelect, t0.Add(time.Duration(i)*time.Millisecond), time.Millisecond, parentTC), detector.Verdict{})
	}
	return rec.Ended()
}
