package export

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// spanSink builds finished spans whole and hands them to the span
// processors, without the SDK's Tracer. Statement spans take this path: a
// statement has ended by the time the proxy sees it, so its span needs none
// of what Tracer.Start and Span.End maintain for a span in progress (a
// lock, option closures, an attribute list that is copied, deduplicated and
// copied again at End), which made up most of a sampled statement's
// observation cost (issue 4; BenchmarkSDKSpanFloor).
//
// What the span gets is what a recording SDK span of the same tracer
// provider would: the provider's sampler (called here, with the trace id,
// name, kind, start attributes and links), resource, span limits (read from
// OTEL_SPAN_* as the provider reads them), pgtrace's instrumentation scope,
// and the processors' OnEnd. Processors see no OnStart for these spans, and
// a local parent's ChildSpanCount does not count them.
//
// A spanSink is used under Exporter.mu; its scratch state is not safe for
// concurrent use.
type spanSink struct {
	sampler sdktrace.Sampler
	procs   []sdktrace.SpanProcessor // nil once shut down
	res     *resource.Resource
	scope   instrumentation.Scope
	limits  sdktrace.SpanLimits

	// cur is the span carried by ctx, a context made once. Calls that read
	// a span context from a context (the sampler for the parent, the
	// metric instruments for exemplars) get ctx after cur.sc is set: two
	// contexts fewer to allocate per statement. Both read the span context
	// during the call and keep nothing of ctx; exemplar reservoirs copy it
	// (sdk/metric/exemplar: measurement.store).
	cur *carriedSpan
	ctx context.Context

	// recycle says the spans reach only pgtrace's batcher and an exporter
	// that keeps nothing of them once ExportSpans returns; the batcher
	// then hands each span back (release) when it is done with it, and
	// newSpan reuses it, attribute array included. Otherwise every span is
	// new and left to the garbage collector.
	recycle bool
	free    sync.Pool // of *statementSpan, when recycle
	attrCap int       // capacity of a new span's attributes: the most seen
}

func newSpanSink(sampler sdktrace.Sampler, procs []sdktrace.SpanProcessor, res *resource.Resource, version string, recycle bool) *spanSink {
	cur := &carriedSpan{}
	return &spanSink{
		sampler: sampler,
		procs:   procs,
		res:     res,
		scope:   instrumentation.Scope{Name: ScopeName, Version: version},
		limits:  sdktrace.NewSpanLimits(),
		cur:     cur,
		ctx:     trace.ContextWithSpan(context.Background(), cur),
		recycle: recycle,
		attrCap: 24,
	}
}

// newSpan returns an empty span whose attributes have room for a
// statement's: a released one when the sink recycles, else a new one.
func (k *spanSink) newSpan() *statementSpan {
	if k.recycle {
		if s, ok := k.free.Get().(*statementSpan); ok {
			return s
		}
	}
	return &statementSpan{attrs: make([]attribute.KeyValue, 0, k.attrCap)}
}

// release takes back a span the batcher is done with: dropped, or exported
// and the exporter returned. Spans not built by the sink (transaction and
// connect spans) are left alone. It is called from the batcher's
// goroutines, concurrently with newSpan. s must not be read afterwards.
func (k *spanSink) release(ro sdktrace.ReadOnlySpan) {
	s, ok := ro.(*statementSpan)
	if !ok || !k.recycle {
		return
	}
	// The attribute array is kept, its old values overwritten by the next
	// span; everything else is dropped: events and links are allocated per
	// span, never shared.
	*s = statementSpan{attrs: s.attrs[:0]}
	k.free.Put(s)
}

// carriedSpan is a non-recording span whose context spanSink.ctx carries.
type carriedSpan struct {
	noop.Span
	sc trace.SpanContext
}

func (s *carriedSpan) SpanContext() trace.SpanContext { return s.sc }

// with returns the sink's context carrying sc. It is valid until the next
// call.
func (k *spanSink) with(sc trace.SpanContext) context.Context {
	k.cur.sc = sc
	return k.ctx
}

// newTraceID is a random trace id for a root span, never zero. The ids come
// from math/rand/v2's runtime generator (ChaCha8, randomly seeded, safe for
// concurrent use), as random as the SDK's own and cheaper.
func newTraceID() (id trace.TraceID) {
	for !id.IsValid() {
		binary.NativeEndian.PutUint64(id[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

// newSpanID is a random span id, never zero.
func newSpanID() (id trace.SpanID) {
	for !id.IsValid() {
		binary.NativeEndian.PutUint64(id[:], rand.Uint64())
	}
	return id
}

// sample runs the sampler for a span with the given parent (invalid for a
// root) and returns the new span's context, and whether it records. The
// trace id is the parent's or a new random one; the flags are the parent's
// with the sampled bit from the decision; the trace state is the one the
// sampler returns, as in the SDK's Tracer.
func (k *spanSink) sample(parent trace.SpanContext, name string, kind trace.SpanKind,
	attrs []attribute.KeyValue, links []trace.Link,
) (trace.SpanContext, sdktrace.SamplingResult) {
	tid := parent.TraceID()
	if !tid.IsValid() {
		tid = newTraceID()
	}
	res := k.sampler.ShouldSample(sdktrace.SamplingParameters{
		ParentContext: k.with(parent),
		TraceID:       tid,
		Name:          name,
		Kind:          kind,
		Attributes:    attrs,
		Links:         links,
	})
	flags := parent.TraceFlags() &^ trace.FlagsSampled
	if res.Decision == sdktrace.RecordAndSample {
		flags |= trace.FlagsSampled
	}
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    tid,
		SpanID:     newSpanID(),
		TraceFlags: flags,
		TraceState: res.Tracestate,
	}), res
}

// end applies the span limits to s, completes it with the resource and
// scope, and hands it to every processor's OnEnd. s must come from newSpan;
// it belongs to the processors afterwards.
func (k *spanSink) end(s *statementSpan) {
	k.attrCap = max(k.attrCap, len(s.attrs))
	s.attrs, s.droppedAttrs = k.limitAttrs(s.attrs)
	if n := k.limits.EventCountLimit; n >= 0 && len(s.events) > n {
		s.droppedEvents = len(s.events) - n
		s.events = s.events[s.droppedEvents:] // the SDK evicts the oldest
	}
	for i := range s.events {
		ev := &s.events[i]
		if n := k.limits.AttributePerEventCountLimit; n >= 0 && len(ev.Attributes) > n {
			ev.DroppedAttributeCount = len(ev.Attributes) - n
			ev.Attributes = ev.Attributes[:n]
		}
	}
	if n := k.limits.LinkCountLimit; n >= 0 && len(s.links) > n {
		s.droppedLinks = len(s.links) - n
		s.links = s.links[s.droppedLinks:]
	}
	if s.res == nil {
		s.res = k.res // pgtrace's; an application's was set by the caller
	}
	s.scope = k.scope
	for _, p := range k.procs {
		p.OnEnd(s)
	}
}

// statementSpan is a finished statement span as the span processors get
// it: what tracetest.SpanStub's Snapshot makes, but a pointer, so that
// handing it to OnEnd allocates nothing and the sink can reuse it
// (spanSink.recycle).
type statementSpan struct {
	// The embedded interface, always nil, supplies ReadOnlySpan's
	// unexported method, as tracetest's snapshot does. Every exported
	// method is defined below; TestStatementSpanMethods fails if the SDK
	// adds one.
	sdktrace.ReadOnlySpan

	name          string
	sc, parent    trace.SpanContext
	kind          trace.SpanKind
	start, end    time.Time
	attrs         []attribute.KeyValue
	events        []sdktrace.Event
	links         []sdktrace.Link
	status        sdktrace.Status
	droppedAttrs  int
	droppedEvents int
	droppedLinks  int
	res           *resource.Resource
	scope         instrumentation.Scope
}

func (s *statementSpan) Name() string                                { return s.name }
func (s *statementSpan) SpanContext() trace.SpanContext              { return s.sc }
func (s *statementSpan) Parent() trace.SpanContext                   { return s.parent }
func (s *statementSpan) SpanKind() trace.SpanKind                    { return s.kind }
func (s *statementSpan) StartTime() time.Time                        { return s.start }
func (s *statementSpan) EndTime() time.Time                          { return s.end }
func (s *statementSpan) Attributes() []attribute.KeyValue            { return s.attrs }
func (s *statementSpan) Links() []sdktrace.Link                      { return s.links }
func (s *statementSpan) Events() []sdktrace.Event                    { return s.events }
func (s *statementSpan) Status() sdktrace.Status                     { return s.status }
func (s *statementSpan) DroppedAttributes() int                      { return s.droppedAttrs }
func (s *statementSpan) DroppedLinks() int                           { return s.droppedLinks }
func (s *statementSpan) DroppedEvents() int                          { return s.droppedEvents }
func (s *statementSpan) ChildSpanCount() int                         { return 0 }
func (s *statementSpan) Resource() *resource.Resource                { return s.res }
func (s *statementSpan) InstrumentationScope() instrumentation.Scope { return s.scope }

// InstrumentationLibrary is InstrumentationScope.
//
// Deprecated: use InstrumentationScope.
func (s *statementSpan) InstrumentationLibrary() instrumentation.Library { //nolint:staticcheck // ReadOnlySpan requires it
	return s.scope
}

// limitAttrs applies the attribute count and value length limits to a, in
// place, as the SDK does for attributes set on a recording span: the last
// ones past the count are dropped and counted; string values are cut to the
// length in characters, invalid UTF-8 removed. a's keys must be unique (the
// SDK deduplicates; statement attributes need not be).
func (k *spanSink) limitAttrs(a []attribute.KeyValue) ([]attribute.KeyValue, int) {
	dropped := 0
	if n := k.limits.AttributeCountLimit; n >= 0 && len(a) > n {
		dropped = len(a) - n
		a = a[:n]
	}
	if n := k.limits.AttributeValueLengthLimit; n >= 0 {
		for i := range a {
			if a[i].Value.Type() != attribute.STRING {
				continue
			}
			if s := a[i].Value.AsString(); len(s) > n {
				a[i].Value = attribute.StringValue(truncate(s, n))
			}
		}
	}
	return a, dropped
}

// truncate cuts s to at most n characters.
func truncate(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "")
	}
	count := 0
	for i := range s {
		if count == n {
			return s[:i]
		}
		count++
	}
	return s
}
