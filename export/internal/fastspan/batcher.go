package fastspan

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dotmac/pgtrace/internal/otelenv"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Batcher is pgtrace's batch span processor. Like the SDK's, it queues
// ended, sampled spans and exports them in batches from its own goroutine;
// unlike it, it counts what it drops (pgtrace.spans.dropped), and OnEnd
// never wakes a goroutine per span — only when a batch is full. When the
// exporter is slow or its collector dead, the bounded queue fills and
// further spans are dropped; OnEnd never waits (DESIGN.md decision 2).
//
// Sizes and delays are OTEL_BSP_MAX_QUEUE_SIZE, _MAX_EXPORT_BATCH_SIZE,
// _SCHEDULE_DELAY and _EXPORT_TIMEOUT, as internal/otelenv reads them.
type Batcher struct {
	exp sdktrace.SpanExporter
	// release, if not nil, is called with each span the batcher is done
	// with: dropped, or exported and ExportSpans returned (Sink.Release).
	release  func(sdktrace.ReadOnlySpan)
	maxQueue int
	maxBatch int
	delay    time.Duration
	timeout  time.Duration

	mu      sync.Mutex
	queue   []sdktrace.ReadOnlySpan
	dropped atomic.Uint64

	exportMu sync.Mutex // one export at a time
	// runCtx bounds the export loop's exports; Shutdown cancels it when its
	// own deadline passes, so that a hung export cannot outlive it.
	runCtx    context.Context
	cancelRun context.CancelFunc
	kick      chan struct{}
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// NewBatcher starts a batcher exporting through exp as bsp says. release,
// if not nil, is called with each span the batcher is done with.
func NewBatcher(exp sdktrace.SpanExporter, release func(sdktrace.ReadOnlySpan), bsp otelenv.BatchSpanProcessor) *Batcher {
	if release == nil {
		release = func(sdktrace.ReadOnlySpan) {}
	}
	b := &Batcher{
		exp:      exp,
		release:  release,
		maxQueue: bsp.MaxQueueSize,
		maxBatch: bsp.MaxExportBatchSize,
		delay:    bsp.ScheduleDelay,
		timeout:  bsp.ExportTimeout,
		kick:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	b.runCtx, b.cancelRun = context.WithCancel(context.Background())
	go b.run()
	return b
}

func (b *Batcher) OnStart(context.Context, sdktrace.ReadWriteSpan) {}

func (b *Batcher) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		b.release(s)
		return
	}
	b.mu.Lock()
	if len(b.queue) >= b.maxQueue {
		b.mu.Unlock()
		b.dropped.Add(1)
		b.release(s)
		return
	}
	b.queue = append(b.queue, s)
	full := len(b.queue) >= b.maxBatch
	b.mu.Unlock()
	if full {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
}

// Exporter is the exporter the batcher exports through.
func (b *Batcher) Exporter() sdktrace.SpanExporter { return b.exp }

// Dropped is the number of spans dropped because the queue was full.
func (b *Batcher) Dropped() uint64 { return b.dropped.Load() }

// run exports every delay, or as soon as a batch is full, until stop.
func (b *Batcher) run() {
	defer close(b.done)
	t := time.NewTicker(b.delay)
	defer t.Stop()
	for {
		select {
		case <-b.kick:
		case <-t.C:
		case <-b.stop:
			return
		}
		_ = b.exportQueued(b.runCtx)
	}
}

// exportQueued exports what is queued, batch by batch, each bounded by the
// export timeout and by ctx.
func (b *Batcher) exportQueued(ctx context.Context) error {
	b.exportMu.Lock()
	defer b.exportMu.Unlock()
	for {
		b.mu.Lock()
		n := min(len(b.queue), b.maxBatch)
		if n == 0 {
			b.mu.Unlock()
			return nil
		}
		batch := make([]sdktrace.ReadOnlySpan, n)
		copy(batch, b.queue)
		rest := copy(b.queue, b.queue[n:])
		clear(b.queue[rest:])
		b.queue = b.queue[:rest]
		b.mu.Unlock()

		ectx, cancel := context.WithTimeout(ctx, b.timeout)
		err := b.exp.ExportSpans(ectx, batch)
		cancel()
		for _, s := range batch {
			b.release(s)
		}
		if err != nil {
			otel.Handle(err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// ForceFlush exports what is queued.
func (b *Batcher) ForceFlush(ctx context.Context) error { return b.exportQueued(ctx) }

// Shutdown stops the export loop, exports what is still queued while ctx
// allows (what is left is counted as dropped), and shuts the exporter down.
func (b *Batcher) Shutdown(ctx context.Context) error {
	b.stopOnce.Do(func() { close(b.stop) })
	select {
	case <-b.done:
	case <-ctx.Done():
		b.cancelRun() // abandon the loop's export in flight
	}
	defer b.cancelRun()
	err := b.exportQueued(ctx)
	b.mu.Lock()
	b.dropped.Add(uint64(len(b.queue)))
	for _, s := range b.queue {
		b.release(s)
	}
	b.queue = nil
	b.mu.Unlock()
	if serr := b.exp.Shutdown(ctx); serr != nil {
		return serr
	}
	return err
}
