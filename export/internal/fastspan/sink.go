package fastspan

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

// Sink builds finished spans whole and hands them to the span processors,
// without the SDK's Tracer. Statement spans take this path: a statement
// has ended by the time the proxy sees it, so its span needs none of what
// Tracer.Start and Span.End maintain for a span in progress (a lock,
// option closures, an attribute list that is copied, deduplicated and
// copied again at End).
//
// What the span gets is what a recording SDK span of the same tracer
// provider would: the provider's sampler (called here, with the trace id,
// name, kind, start attributes and links), resource, span limits (read from
// OTEL_SPAN_* as the provider reads them), the instrumentation scope,
// and the processors' OnEnd. Processors see no OnStart for these spans, and
// a local parent's ChildSpanCount does not count them.
//
// A Sink is used under its owner's lock; its scratch state is not safe for
// concurrent use (Release aside).
type Sink struct {
	sampler sdktrace.Sampler
	procs   []sdktrace.SpanProcessor
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
	free    sync.Pool // of *Span, when recycle
	attrCap int       // capacity of a new span's attributes: the most seen
}

// NewSink returns a sink that samples with sampler and completes spans
// with res and scope. recycle says the spans reach only a Batcher and an
// exporter that keeps nothing of them once ExportSpans returns: the
// batcher then hands each span back (Release) when it is done with it,
// and NewSpan reuses it, attribute array included. Otherwise every span is
// new and left to the garbage collector.
func NewSink(sampler sdktrace.Sampler, res *resource.Resource, scope instrumentation.Scope, recycle bool) *Sink {
	cur := &carriedSpan{}
	return &Sink{
		sampler: sampler,
		res:     res,
		scope:   scope,
		limits:  sdktrace.NewSpanLimits(),
		cur:     cur,
		ctx:     trace.ContextWithSpan(context.Background(), cur),
		recycle: recycle,
		attrCap: 24,
	}
}

// SetProcessors sets the processors End hands spans to.
func (k *Sink) SetProcessors(procs []sdktrace.SpanProcessor) { k.procs = procs }

// Recycles reports whether the sink reuses the spans Release hands back.
func (k *Sink) Recycles() bool { return k.recycle }

// Resource is the resource of the spans whose Data.Resource is nil.
func (k *Sink) Resource() *resource.Resource { return k.res }

// NewSpan returns an empty span whose attributes have room for a
// statement's: a released one when the sink recycles, else a new one. The
// caller fills in its Data and hands it to End.
func (k *Sink) NewSpan() *Span {
	if k.recycle {
		if s, ok := k.free.Get().(*Span); ok {
			return s
		}
	}
	return &Span{Data: Data{Attrs: make([]attribute.KeyValue, 0, k.attrCap)}}
}

// Release takes back a span the batcher is done with: dropped, or exported
// and the exporter returned. Spans not built by the sink (transaction and
// connect spans) are left alone. It is called from the batcher's
// goroutines, concurrently with NewSpan. s must not be read afterwards.
func (k *Sink) Release(ro sdktrace.ReadOnlySpan) {
	s, ok := ro.(*Span)
	if !ok || !k.recycle {
		return
	}
	// The attribute array is kept, its old values overwritten by the next
	// span; everything else is dropped: events and links are allocated per
	// span, never shared.
	*s = Span{Data: Data{Attrs: s.Data.Attrs[:0]}}
	k.free.Put(s)
}

// carriedSpan is a non-recording span whose context Sink.ctx carries.
type carriedSpan struct {
	noop.Span
	sc trace.SpanContext
}

func (s *carriedSpan) SpanContext() trace.SpanContext { return s.sc }

// With returns the sink's context carrying sc, for calls that read a span
// context from a context (metric exemplars). It is valid until the next
// call.
func (k *Sink) With(sc trace.SpanContext) context.Context {
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

// Sample runs the sampler for a span with the given parent (invalid for a
// root) and returns the new span's context, and whether it records. The
// trace id is the parent's or a new random one; the flags are the parent's
// with the sampled bit from the decision; the trace state is the one the
// sampler returns, as in the SDK's Tracer.
func (k *Sink) Sample(parent trace.SpanContext, name string, kind trace.SpanKind,
	attrs []attribute.KeyValue, links []trace.Link,
) (trace.SpanContext, sdktrace.SamplingResult) {
	tid := parent.TraceID()
	if !tid.IsValid() {
		tid = newTraceID()
	}
	res := k.sampler.ShouldSample(sdktrace.SamplingParameters{
		ParentContext: k.With(parent),
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

// End applies the span limits to s, completes it with the resource and
// scope, and hands it to every processor's OnEnd. s must come from NewSpan;
// it belongs to the processors afterwards.
func (k *Sink) End(s *Span) {
	d := &s.Data
	k.attrCap = max(k.attrCap, len(d.Attrs))
	d.Attrs, s.droppedAttrs = k.limitAttrs(d.Attrs)
	if n := k.limits.EventCountLimit; n >= 0 && len(d.Events) > n {
		s.droppedEvents = len(d.Events) - n
		d.Events = d.Events[s.droppedEvents:] // the SDK evicts the oldest
	}
	for i := range d.Events {
		ev := &d.Events[i]
		if n := k.limits.AttributePerEventCountLimit; n >= 0 && len(ev.Attributes) > n {
			ev.DroppedAttributeCount = len(ev.Attributes) - n
			ev.Attributes = ev.Attributes[:n]
		}
	}
	if n := k.limits.LinkCountLimit; n >= 0 && len(d.Links) > n {
		s.droppedLinks = len(d.Links) - n
		d.Links = d.Links[s.droppedLinks:]
	}
	if d.Resource == nil {
		d.Resource = k.res
	}
	s.scope = k.scope
	for _, p := range k.procs {
		p.OnEnd(s)
	}
}

// Span is a finished span as the span processors get it: what
// tracetest.SpanStub's Snapshot makes, but a pointer, so that handing it
// to OnEnd allocates nothing and the sink can reuse it (recycle).
type Span struct {
	// The embedded interface, always nil, supplies ReadOnlySpan's
	// unexported method, as tracetest's snapshot does. Every exported
	// method is defined below; TestSpanMethods fails if the SDK adds one.
	sdktrace.ReadOnlySpan

	// Data is what the caller sets between NewSpan and End.
	Data Data

	droppedAttrs  int
	droppedEvents int
	droppedLinks  int
	scope         instrumentation.Scope
}

// Data is the content of a Span.
type Data struct {
	Name                string
	SpanContext, Parent trace.SpanContext
	Kind                trace.SpanKind
	Start, End          time.Time
	Attrs               []attribute.KeyValue // keys must be unique; the array is reused when the sink recycles
	Events              []sdktrace.Event
	Links               []sdktrace.Link
	Status              sdktrace.Status
	Resource            *resource.Resource // nil: the sink's
}

func (s *Span) Name() string                                { return s.Data.Name }
func (s *Span) SpanContext() trace.SpanContext              { return s.Data.SpanContext }
func (s *Span) Parent() trace.SpanContext                   { return s.Data.Parent }
func (s *Span) SpanKind() trace.SpanKind                    { return s.Data.Kind }
func (s *Span) StartTime() time.Time                        { return s.Data.Start }
func (s *Span) EndTime() time.Time                          { return s.Data.End }
func (s *Span) Attributes() []attribute.KeyValue            { return s.Data.Attrs }
func (s *Span) Links() []sdktrace.Link                      { return s.Data.Links }
func (s *Span) Events() []sdktrace.Event                    { return s.Data.Events }
func (s *Span) Status() sdktrace.Status                     { return s.Data.Status }
func (s *Span) DroppedAttributes() int                      { return s.droppedAttrs }
func (s *Span) DroppedLinks() int                           { return s.droppedLinks }
func (s *Span) DroppedEvents() int                          { return s.droppedEvents }
func (s *Span) ChildSpanCount() int                         { return 0 }
func (s *Span) Resource() *resource.Resource                { return s.Data.Resource }
func (s *Span) InstrumentationScope() instrumentation.Scope { return s.scope }

// InstrumentationLibrary is InstrumentationScope.
//
// Deprecated: use InstrumentationScope.
func (s *Span) InstrumentationLibrary() instrumentation.Library { //nolint:staticcheck // ReadOnlySpan requires it
	return s.scope
}

// limitAttrs applies the attribute count and value length limits to a, in
// place, as the SDK does for attributes set on a recording span: the last
// ones past the count are dropped and counted; string values are cut to the
// length in characters, invalid UTF-8 removed. a's keys must be unique (the
// SDK deduplicates; statement attributes need not be).
func (k *Sink) limitAttrs(a []attribute.KeyValue) ([]attribute.KeyValue, int) {
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
