package fastspan

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/otelenv"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// blockingExporter counts the spans handed to it and blocks each export
// until release is closed or the export's context ends.
type blockingExporter struct {
	got     atomic.Int64
	release chan struct{}
	once    sync.Once
}

func (x *blockingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	x.got.Add(int64(len(spans)))
	select {
	case <-x.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (x *blockingExporter) Shutdown(context.Context) error {
	x.once.Do(func() { close(x.release) })
	return nil
}

func TestBatcherDropsAndCounts(t *testing.T) {
	x := &blockingExporter{release: make(chan struct{})}
	b := NewBatcher(x, nil, otelenv.BatchSpanProcessor{MaxQueueSize: 8, MaxExportBatchSize: 4,
		ScheduleDelay: 5 * time.Millisecond, ExportTimeout: time.Minute})
	sampled := tracetest.SpanStub{SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: [16]byte{1}, SpanID: [8]byte{1}, TraceFlags: trace.FlagsSampled})}.Snapshot()
	unsampled := tracetest.SpanStub{SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: [16]byte{1}, SpanID: [8]byte{2}})}.Snapshot()

	start := time.Now()
	const n = 1000
	for range n {
		b.OnEnd(sampled)
		b.OnEnd(unsampled) // never queued, never counted
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("OnEnd blocked: %d spans took %v", n, d)
	}
	// The one export in flight holds at most a batch; the queue at most 8.
	if got := b.Dropped(); got < n-8-4 {
		t.Errorf("dropped %d of %d spans with a blocked exporter, want at least %d", got, n, n-12)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	close(x.release) // the collector recovers
	x.once.Do(func() {})
	if err := b.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if total := uint64(x.got.Load()) + b.Dropped(); total != n {
		t.Errorf("exported %d + dropped %d = %d, want every sampled span accounted for (%d)", x.got.Load(), b.Dropped(), total, n)
	}
}
