package fastspan

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Client is the OTLP trace client otlptracegrpc.NewClient and
// otlptracehttp.NewClient return (otlptrace.Client): it reads every
// OTEL_EXPORTER_OTLP_* setting (endpoint, headers, TLS, compression,
// timeout, retry) and sends an export request built from the resource
// spans it is given. It must encode the request as protobuf: a client
// that encodes JSON (otlptracehttp with http/json) reads the messages'
// fields, which Exporter leaves empty (the caller asks otlptracehttp for
// protobuf).
type Client interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	UploadTraces(ctx context.Context, protoSpans []*tracepb.ResourceSpans) error
}

// Exporter is pgtrace's OTLP span exporter. It sends what the OTel Go
// exporter (otlptrace.Exporter, v1.47) sends, byte for byte, through the
// same client, at a fraction of the CPU.
//
// It writes each span's fields in the OTLP wire format itself
// (protowire), into a buffer kept from one call to the next, and hands the
// client resource, scope and span messages whose content is that
// encoding, held as their unknown fields, which proto.Marshal copies out
// as they are: the OTel exporter's tree of messages per span, its
// encoding and its garbage cost several times more (bench/RESULTS.md,
// "The fast span path"). The messages are generated OTLP types, kept and
// reused, so the client still sees one ResourceSpans per resource, one
// ScopeSpans per scope and one Span per span (it counts them for its own
// telemetry), and no part of the request is allocated per span.
//
// What it writes follows tracetransform field for field: resources
// grouped by attribute set and, within each, scopes in the order they first
// appear; spans in batch order; trace and span ids, trace state, parent
// span id, name, kind, start and end times (0 before the epoch), attributes
// of every type (slices and maps nested as ArrayValue and KeyValueList,
// an empty value as an empty AnyValue, an unknown type as "INVALID"),
// events, links (without their trace state, as tracetransform), dropped
// counts clamped to uint32, the status (code and description) and the
// flags, with the parent-is-remote bits. Each message's fields are written
// in field-number order, as proto.Marshal writes them. The order of the
// resources, which the OTel exporter takes from a map, is the order they
// first appear. Invalid UTF-8 in a string becomes U+FFFD, where the OTel
// exporter fails the whole batch (see oneofStr).
//
// ExportSpans reads the spans only while it runs and keeps none of them
// (export's keepsNoSpans). Calls are serialized: the buffer and messages
// are reused, which the client allows, being done with the request when
// UploadTraces returns.
type Exporter struct {
	client   Client
	stopOnce sync.Once

	mu sync.Mutex // one export at a time; guards everything below
	w  wireBuf
	// The arena: messages handed to the client, reused by the next
	// call. n* count the ones in use in this call.
	rss                        []*tracepb.ResourceSpans
	sss                        []*tracepb.ScopeSpans
	spans                      []*tracepb.Span
	ress                       []*resourcepb.Resource
	scopes                     []*commonpb.InstrumentationScope
	nRS, nSS, nSpan, nRes, nSc int
	raws                       []rawMessage
	resIdx                     map[attribute.Distinct]int // → rss
	ssIdx                      map[scopeKey]int           // → sss
}

// rawMessage is a message whose content is w.b[start:end], set once the
// whole batch is written and the buffer no longer moves.
type rawMessage struct {
	m          protoreflect.Message
	start, end int
}

// scopeKey identifies a ScopeSpans, as in tracetransform.
type scopeKey struct {
	res   attribute.Distinct
	scope instrumentation.Scope
}

// NewExporter starts client and returns an exporter sending through it,
// as otlptrace.New does.
func NewExporter(ctx context.Context, client Client) (*Exporter, error) {
	if err := client.Start(ctx); err != nil {
		return nil, err
	}
	return &Exporter{
		client: client,
		resIdx: make(map[attribute.Distinct]int),
		ssIdx:  make(map[scopeKey]int),
	}, nil
}

// ExportSpans encodes spans and uploads them in one request.
func (x *Exporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	rss := x.encode(spans)
	if len(rss) == 0 {
		return nil
	}
	if err := x.client.UploadTraces(ctx, rss); err != nil {
		return fmt.Errorf("traces export: %w", err)
	}
	return nil
}

// Shutdown stops the client, once.
func (x *Exporter) Shutdown(ctx context.Context) error {
	err := error(nil)
	x.stopOnce.Do(func() { err = x.client.Stop(ctx) })
	return err
}

// encode writes spans into the arena and returns the resource spans to
// upload, valid until the next call.
func (x *Exporter) encode(spans []sdktrace.ReadOnlySpan) []*tracepb.ResourceSpans {
	x.w.reset()
	x.nRS, x.nSS, x.nSpan, x.nRes, x.nSc = 0, 0, 0, 0, 0
	x.raws = x.raws[:0]
	clear(x.resIdx)
	clear(x.ssIdx)

	var (
		lastRes   *resource.Resource
		lastScope instrumentation.Scope
		ss        *tracepb.ScopeSpans
	)
	for _, sd := range spans {
		if sd == nil {
			continue
		}
		// Consecutive spans mostly share their resource and scope.
		res, scope := sd.Resource(), sd.InstrumentationScope()
		if ss == nil || res != lastRes || scope != lastScope {
			ss = x.scopeSpans(res, scope)
			lastRes, lastScope = res, scope
		}
		start := len(x.w.b)
		x.w.span(sd)
		s := next(&x.spans, &x.nSpan)
		ss.Spans = append(ss.Spans, s)
		x.raws = append(x.raws, rawMessage{s.ProtoReflect(), start, len(x.w.b)})
	}
	for _, r := range x.raws {
		r.m.SetUnknown(protoreflect.RawFields(x.w.b[r.start:r.end:r.end]))
	}
	return x.rss[:x.nRS]
}

// scopeSpans returns the ScopeSpans of the resource and scope, adding it
// (and the ResourceSpans) when new, as tracetransform.Spans does: the first
// span of a resource's attribute set gives its Resource and schema URL.
func (x *Exporter) scopeSpans(res *resource.Resource, scope instrumentation.Scope) *tracepb.ScopeSpans {
	k := scopeKey{res.Equivalent(), scope}
	if i, ok := x.ssIdx[k]; ok {
		return x.sss[i]
	}
	x.ssIdx[k] = x.nSS
	ss := next(&x.sss, &x.nSS)
	ss.Scope, ss.Spans, ss.SchemaUrl = nil, ss.Spans[:0], scope.SchemaURL
	if scope != (instrumentation.Scope{}) {
		ss.Scope = next(&x.scopes, &x.nSc)
		start := len(x.w.b)
		x.w.str(1, scope.Name)
		x.w.str(2, scope.Version)
		x.w.attrs(3, scope.Attributes.Iter())
		x.raws = append(x.raws, rawMessage{ss.Scope.ProtoReflect(), start, len(x.w.b)})
	}

	i, ok := x.resIdx[k.res]
	if ok {
		rs := x.rss[i]
		rs.ScopeSpans = append(rs.ScopeSpans, ss)
		return ss
	}
	x.resIdx[k.res] = x.nRS
	rs := next(&x.rss, &x.nRS)
	rs.Resource, rs.ScopeSpans, rs.SchemaUrl = nil, append(rs.ScopeSpans[:0], ss), res.SchemaURL()
	if res != nil {
		rs.Resource = next(&x.ress, &x.nRes)
		start := len(x.w.b)
		x.w.attrs(1, res.Iter())
		x.raws = append(x.raws, rawMessage{rs.Resource.ProtoReflect(), start, len(x.w.b)})
	}
	return ss
}

// next returns the arena's next message, allocating it the first time.
func next[T any](arena *[]*T, n *int) *T {
	if *n == len(*arena) {
		*arena = append(*arena, new(T))
	}
	m := (*arena)[*n]
	*n++
	return m
}

// wireBuf appends protobuf fields, in the wire format, to b. Messages
// nested in it are written with a one-byte length, widened when the
// message turns out longer than 127 bytes.
type wireBuf struct {
	b []byte
}

func (w *wireBuf) reset() { w.b = w.b[:0] }

// tag writes a field's tag: one byte for the fields below 16.
func (w *wireBuf) tag(f protowire.Number, t protowire.Type) {
	if f < 16 {
		w.b = append(w.b, byte(f)<<3|byte(t))
		return
	}
	w.b = protowire.AppendTag(w.b, f, t)
}

// uvarint writes v as a varint, one byte if small.
func (w *wireBuf) uvarint(v uint64) {
	if v < 1<<7 {
		w.b = append(w.b, byte(v))
		return
	}
	w.b = protowire.AppendVarint(w.b, v)
}

// begin starts a message in field f; end(begin(f)) ends it.
func (w *wireBuf) begin(f protowire.Number) int {
	w.tag(f, protowire.BytesType)
	w.b = append(w.b, 0)
	return len(w.b)
}

func (w *wireBuf) end(start int) {
	n := len(w.b) - start
	if n < 1<<7 {
		w.b[start-1] = byte(n)
		return
	}
	k := protowire.SizeVarint(uint64(n))
	w.b = append(w.b, make([]byte, k-1)...)
	copy(w.b[start+k-1:], w.b[start:start+n])
	protowire.AppendVarint(w.b[:start-1], uint64(n))
}

// str writes a string field unless s is empty (proto3).
func (w *wireBuf) str(f protowire.Number, s string) {
	if s != "" {
		w.oneofStr(f, s)
	}
}

// oneofStr writes a string field even if s is empty (a oneof member).
//
// Protobuf strings are UTF-8: proto.Marshal, and so the OTel exporter,
// fails the whole request over one invalid string, and collectors reject
// it. Statement text in a SQL_ASCII database, or an error message in a
// server encoding other than UTF-8, can be anything, so invalid bytes
// become U+FFFD here rather than cost every other span of the batch.
func (w *wireBuf) oneofStr(f protowire.Number, s string) {
	s = mendUTF8(s)
	w.tag(f, protowire.BytesType)
	w.uvarint(uint64(len(s)))
	w.b = append(w.b, s...)
}

// bytes writes a bytes field unless v is empty (proto3).
func (w *wireBuf) bytes(f protowire.Number, v []byte) {
	if len(v) > 0 {
		w.tag(f, protowire.BytesType)
		w.uvarint(uint64(len(v)))
		w.b = append(w.b, v...)
	}
}

// varint writes a varint field unless v is 0 (proto3).
func (w *wireBuf) varint(f protowire.Number, v uint64) {
	if v != 0 {
		w.tag(f, protowire.VarintType)
		w.uvarint(v)
	}
}

// fixed64 writes a fixed64 field unless v is 0 (proto3).
func (w *wireBuf) fixed64(f protowire.Number, v uint64) {
	if v != 0 {
		w.tag(f, protowire.Fixed64Type)
		w.b = protowire.AppendFixed64(w.b, v)
	}
}

// fixed32 writes a fixed32 field unless v is 0 (proto3).
func (w *wireBuf) fixed32(f protowire.Number, v uint32) {
	if v != 0 {
		w.tag(f, protowire.Fixed32Type)
		w.b = protowire.AppendFixed32(w.b, v)
	}
}

// span writes the fields of an opentelemetry.proto.trace.v1.Span.
func (w *wireBuf) span(sd sdktrace.ReadOnlySpan) {
	sc := sd.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	w.bytes(1, tid[:])
	w.bytes(2, sid[:])
	if ts := sc.TraceState(); ts.Len() > 0 {
		w.str(3, ts.String())
	}
	parent := sd.Parent()
	if psid := parent.SpanID(); psid.IsValid() {
		w.bytes(4, psid[:])
	}
	w.str(5, sd.Name())
	w.varint(6, uint64(spanKind(sd.SpanKind())))
	w.fixed64(7, unixNano(sd.StartTime()))
	w.fixed64(8, unixNano(sd.EndTime()))
	for _, kv := range sd.Attributes() {
		w.keyValue(9, kv)
	}
	w.varint(10, uint64(clampUint32(sd.DroppedAttributes())))
	for _, ev := range sd.Events() {
		m := w.begin(11)
		w.fixed64(1, unixNano(ev.Time))
		w.str(2, ev.Name)
		for _, kv := range ev.Attributes {
			w.keyValue(3, kv)
		}
		w.varint(4, uint64(clampUint32(ev.DroppedAttributeCount)))
		w.end(m)
	}
	w.varint(12, uint64(clampUint32(sd.DroppedEvents())))
	for _, l := range sd.Links() {
		m := w.begin(13)
		tid, sid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
		w.bytes(1, tid[:])
		w.bytes(2, sid[:])
		for _, kv := range l.Attributes {
			w.keyValue(4, kv)
		}
		w.varint(5, uint64(clampUint32(l.DroppedAttributeCount)))
		w.fixed32(6, spanFlags(l.SpanContext.TraceFlags(), l.SpanContext))
		w.end(m)
	}
	w.varint(14, uint64(clampUint32(sd.DroppedLinks())))
	st := sd.Status()
	m := w.begin(15) // always present, if empty
	w.str(2, st.Description)
	w.varint(3, uint64(statusCode(st.Code)))
	w.end(m)
	w.fixed32(16, spanFlags(sc.TraceFlags(), parent))
}

// attrs writes the attributes of it as KeyValue messages in field f.
func (w *wireBuf) attrs(f protowire.Number, it attribute.Iterator) {
	for it.Next() {
		w.keyValue(f, it.Attribute())
	}
}

// keyValue writes kv as an opentelemetry.proto.common.v1.KeyValue in
// field f.
func (w *wireBuf) keyValue(f protowire.Number, kv attribute.KeyValue) {
	m := w.begin(f)
	w.str(1, string(kv.Key))
	v := w.begin(2) // the AnyValue, always present
	w.anyValue(kv.Value)
	w.end(v)
	w.end(m)
}

// anyValue writes the fields of an opentelemetry.proto.common.v1.AnyValue
// holding v: one member of its oneof, written even when zero.
func (w *wireBuf) anyValue(v attribute.Value) {
	t := v.Type()
	if t == attribute.STRING { // most, before the switch's jump table
		w.oneofStr(1, v.AsString())
		return
	}
	switch t {
	case attribute.BOOL:
		w.tag(2, protowire.VarintType)
		w.b = append(w.b, byte(protowire.EncodeBool(v.AsBool())))
	case attribute.INT64:
		w.tag(3, protowire.VarintType)
		w.uvarint(uint64(v.AsInt64())) //nolint:gosec // int64 as protobuf encodes it
	case attribute.FLOAT64:
		w.b = protowire.AppendTag(w.b, 4, protowire.Fixed64Type)
		w.b = protowire.AppendFixed64(w.b, math.Float64bits(v.AsFloat64()))
	case attribute.BYTESLICE:
		w.b = protowire.AppendTag(w.b, 7, protowire.BytesType)
		w.b = protowire.AppendBytes(w.b, v.AsByteSlice())
	case attribute.BOOLSLICE:
		m := w.begin(5)
		for _, e := range v.AsBoolSlice() {
			w.b = append(w.b, byte(protowire.EncodeTag(1, protowire.BytesType)), 2,
				byte(protowire.EncodeTag(2, protowire.VarintType)), byte(protowire.EncodeBool(e)))
		}
		w.end(m)
	case attribute.INT64SLICE:
		m := w.begin(5)
		for _, e := range v.AsInt64Slice() {
			a := w.begin(1)
			w.b = protowire.AppendTag(w.b, 3, protowire.VarintType)
			w.b = protowire.AppendVarint(w.b, uint64(e)) //nolint:gosec // int64 as protobuf encodes it
			w.end(a)
		}
		w.end(m)
	case attribute.FLOAT64SLICE:
		m := w.begin(5)
		for _, e := range v.AsFloat64Slice() {
			a := w.begin(1)
			w.b = protowire.AppendTag(w.b, 4, protowire.Fixed64Type)
			w.b = protowire.AppendFixed64(w.b, math.Float64bits(e))
			w.end(a)
		}
		w.end(m)
	case attribute.STRINGSLICE:
		m := w.begin(5)
		for _, e := range v.AsStringSlice() {
			a := w.begin(1)
			w.oneofStr(1, e)
			w.end(a)
		}
		w.end(m)
	case attribute.SLICE:
		m := w.begin(5)
		for _, e := range v.AsSlice() {
			a := w.begin(1)
			w.anyValue(e)
			w.end(a)
		}
		w.end(m)
	case attribute.MAP:
		m := w.begin(6)
		for _, kv := range v.AsMap() {
			w.keyValue(1, kv)
		}
		w.end(m)
	case attribute.EMPTY:
	default:
		w.oneofStr(1, "INVALID")
	}
}

// unixNano is t for OTLP: nanoseconds since the epoch, 0 before it.
func unixNano(t time.Time) uint64 {
	return uint64(max(0, t.UnixNano())) //nolint:gosec // not negative
}

// clampUint32 is a count for a uint32 field.
func clampUint32(v int) uint32 {
	switch {
	case v < 0:
		return 0
	case int64(v) > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(v) //nolint:gosec // in range
}

// spanFlags are the W3C trace flags with the bits saying whether the
// parent (or linked span) is remote, always known here.
func spanFlags(tf trace.TraceFlags, parent trace.SpanContext) uint32 {
	flags := uint32(tf) | uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
	if parent.IsRemote() {
		flags |= uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
	}
	return flags
}

func spanKind(k trace.SpanKind) tracepb.Span_SpanKind {
	switch k {
	case trace.SpanKindInternal:
		return tracepb.Span_SPAN_KIND_INTERNAL
	case trace.SpanKindClient:
		return tracepb.Span_SPAN_KIND_CLIENT
	case trace.SpanKindServer:
		return tracepb.Span_SPAN_KIND_SERVER
	case trace.SpanKindProducer:
		return tracepb.Span_SPAN_KIND_PRODUCER
	case trace.SpanKindConsumer:
		return tracepb.Span_SPAN_KIND_CONSUMER
	}
	return tracepb.Span_SPAN_KIND_UNSPECIFIED
}

func statusCode(c codes.Code) tracepb.Status_StatusCode {
	switch c {
	case codes.Ok:
		return tracepb.Status_STATUS_CODE_OK
	case codes.Error:
		return tracepb.Status_STATUS_CODE_ERROR
	}
	return tracepb.Status_STATUS_CODE_UNSET
}

// mendUTF8 returns s with U+FFFD in place of each run of bytes that is not
// UTF-8, as export's metric labels have it.
func mendUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
