package export

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// checkingExporter is a slow exporter that keeps nothing of the spans once
// ExportSpans returns (TransientExporter, so statement spans are
// recycled). It reads each span's attributes when the export starts and
// again at its end, after a pause in which the proxy goes on building
// spans, and checks both against what was recorded for the statement, which
// it finds by the span's start time. The statements start one after the
// other, so the spans must arrive in order of start time.
type checkingExporter struct {
	t    *testing.T
	want func(start time.Time) (name string, attrs map[string]any)
	wait time.Duration

	mu       sync.Mutex
	exported int
	last     time.Time                      // start of the last span exported
	spans    map[sdktrace.ReadOnlySpan]bool // distinct span values seen
	bad      int
}

func (x *checkingExporter) KeepsNoSpans() {}

func (x *checkingExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	first := make([][]attribute.KeyValue, len(spans))
	for i, s := range spans {
		first[i] = slices.Clone(s.Attributes())
		x.check("at the start of the export", s, first[i])
	}
	time.Sleep(x.wait)
	x.mu.Lock()
	defer x.mu.Unlock()
	for i, s := range spans {
		x.check("at the end of the export", s, s.Attributes())
		if !slices.Equal(first[i], s.Attributes()) {
			x.fail("span %v: attributes changed during the export:\n%v\nthen\n%v", s.StartTime(), first[i], s.Attributes())
		}
		// The queue is FIFO and each span in it is a different
		// statement: a span reused while still queued would show up
		// twice, or out of order.
		if !s.StartTime().After(x.last) {
			x.fail("span %v exported after span %v: spans must reach the exporter once, in order", s.StartTime(), x.last)
		}
		x.last = s.StartTime()
		x.spans[s] = true
	}
	x.exported += len(spans)
	return nil
}

func (x *checkingExporter) check(when string, s sdktrace.ReadOnlySpan, attrs []attribute.KeyValue) {
	name, want := x.want(s.StartTime())
	if s.Name() != name {
		x.fail("span %v %s: name %q, want %q", s.StartTime(), when, s.Name(), name)
	}
	got := attrMap(attrs)
	if len(attrs) != len(want) {
		x.fail("span %v %s: %d attributes, want %d", s.StartTime(), when, len(attrs), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			x.fail("span %v %s: %s = %v, want %v", s.StartTime(), when, k, got[k], v)
		}
	}
}

func (x *checkingExporter) fail(format string, args ...any) {
	x.bad++
	if x.bad <= 10 {
		x.t.Errorf(format, args...)
	}
}

func (x *checkingExporter) Shutdown(context.Context) error { return nil }

// TestRecycledSpansKeepTheirAttributes drives statements through a small
// export queue to a slow exporter while statement spans are recycled: no
// span's attributes may change before the exporter has returned, whether
// the span waited in the queue, was exported, or was dropped. Run it with
// -race: a span handed back too early is also a data race.
func TestRecycledSpansKeepTheirAttributes(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
	t.Setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "1")

	const n = 3000
	statement := func(i int) *detector.Statement {
		q := query("SELECT", fmt.Sprintf("t%d", i), fmt.Sprintf("SELECT t%d", i), fmt.Sprintf("%016x", i))
		s := stmt(q, t0.Add(time.Duration(i)*time.Millisecond), time.Millisecond, parentTC)
		s.Conn.ID = uint64(i % 5)
		s.Stmt.Rows = int64(i)
		if i%3 == 0 {
			s.Tags = &fingerprint.Tags{Tenant: fmt.Sprintf("tenant%d", i)}
		}
		return s
	}
	// What each statement's span carries, read from a span recorded
	// without recycling (a user processor turns it off).
	rec := tracetest.NewSpanRecorder()
	ref, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), UpstreamAddr: "db:5432", SpanProcessor: rec})
	if err != nil {
		t.Fatal(err)
	}
	if ref.spans.Recycles() {
		t.Fatal("spans recycled with a user span processor")
	}
	for i := range n {
		ref.Statement(statement(i), detector.Verdict{})
	}
	_ = ref.Shutdown(context.Background())
	want := map[time.Time]tracetest.SpanStub{}
	for _, s := range rec.Ended() {
		want[s.StartTime()] = tracetest.SpanStubFromReadOnlySpan(s)
	}
	if len(want) != n {
		t.Fatalf("reference: %d spans, want %d", len(want), n)
	}

	x := &checkingExporter{t: t, wait: 2 * time.Millisecond, spans: map[sdktrace.ReadOnlySpan]bool{},
		want: func(start time.Time) (string, map[string]any) {
			s := want[start]
			return s.Name, attrMap(s.Attributes)
		}}
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), UpstreamAddr: "db:5432", SpanExporter: x})
	if err != nil {
		t.Fatal(err)
	}
	if !e.spans.Recycles() {
		t.Fatal("spans not recycled with a transient exporter and no user processor")
	}
	for i := range n {
		e.Statement(statement(i), detector.Verdict{})
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // let some batches through
		}
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	t.Logf("%d spans exported, %d dropped, %d distinct span values", x.exported, e.SpansDropped(), len(x.spans))
	if x.exported+int(e.SpansDropped()) != n {
		t.Errorf("exported %d + dropped %d, want %d", x.exported, e.SpansDropped(), n)
	}
	if x.exported == 0 || e.SpansDropped() == 0 {
		t.Errorf("want both exported and dropped spans to test both ways back")
	}
	if len(x.spans) >= x.exported {
		t.Errorf("no span was reused: the test tests nothing")
	}
}
