// Package fastspan is export's fast span path: statement spans built whole,
// without the SDK's Tracer (Sink, Span), queued by a batch processor that
// counts what it drops (Batcher), and written in the OTLP wire format by
// pgtrace's own encoder (Exporter), handed to the stock OTLP gRPC or HTTP
// client.
//
// It exists because a proxy makes a span for every statement of every
// application behind it, so the span's cost is paid per query. On two
// shared cores, the SDK path (Tracer.Start/End, BatchSpanProcessor,
// otlptrace) costs about 5–7 µs of CPU per sampled statement span to build
// (BenchmarkSDKSpanFloor) and 11–15 µs to encode and send
// (BenchmarkExportSpans/*/otlptrace); this path about 2 µs
// (BenchmarkStatement/sampled_child) and 2.3–2.7 µs (BenchmarkExportSpans/*/pgtrace),
// with no allocation per span. The figures and how they were measured are
// in bench/RESULTS.md; the benchmarks are in export/bench_test.go:
//
//	go test -run '^$' -bench 'Statement|SDKSpanFloor|ExportSpans' -benchmem -count 5 ./export/
//
// The stock path stays beside it (export.SpanPathSDK, pgtrace's
// --span-path sdk), and export's TestSpanPathParity checks that both send
// the same spans.
package fastspan
