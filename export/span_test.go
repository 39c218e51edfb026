package export

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestStatementSpanMatchesSDK checks that a statement span built by
// fastspan.Sink is the span the SDK's Tracer would have recorded for the same
// statement — same parent, flags, trace state, kind, times, attributes,
// events, links, status, dropped counts, resource and scope — under the
// default span limits and under tight OTEL_SPAN_* limits.
func TestStatementSpanMatchesSDK(t *testing.T) {
	withState := parentTC
	withState.TraceState = "vendor=a,other=b"
	long := query("SELECT", "users", "SELECT users", "00000000000000a3")
	long.Normalized = "SELECT " + strings.Repeat("é", 40) + " FROM users WHERE id = $1"
	statements := []struct {
		name string
		s    func() *detector.Statement
		v    detector.Verdict
	}{
		{"root", func() *detector.Statement { return stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}) }, detector.Verdict{}},
		{"child with tracestate", func() *detector.Statement { return stmt(qSelect, t0, time.Millisecond, withState) }, detector.Verdict{}},
		{"long text", func() *detector.Statement { return stmt(long, t0, time.Millisecond, parentTC) }, detector.Verdict{}},
		{"failed", func() *detector.Statement {
			return failed(stmt(qInsert, t0, time.Millisecond, parentTC), "23505", "duplicate key")
		}, detector.Verdict{}},
		{"slow n+1", func() *detector.Statement {
			s := stmt(qSelect, t0, 300*time.Millisecond, parentTC)
			s.Tags = &fingerprint.Tags{Tenant: "acme", Route: "/r", Controller: "c", Action: "a", Framework: "f"}
			return s
		}, detector.Verdict{Slow: true, NPlusOne: true, NPlusOneDetected: true, NPlusOneCount: 5}},
	}
	limits := []struct {
		name string
		env  map[string]string
	}{
		{"default limits", nil},
		{"tight limits", map[string]string{
			"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT":        "6",
			"OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "9",
			"OTEL_SPAN_EVENT_COUNT_LIMIT":            "1",
			"OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT":       "1",
			"OTEL_SPAN_LINK_COUNT_LIMIT":             "0",
		}},
	}
	for _, lim := range limits {
		for _, tt := range statements {
			t.Run(lim.name+"/"+tt.name, func(t *testing.T) {
				clearOTelEnv(t)
				for k, v := range lim.env {
					t.Setenv(k, v)
				}
				h := newHarness(t, Config{KeepSlowSpans: true, SlowThreshold: 100 * time.Millisecond, Version: "1.2.3"})
				s := tt.s()
				h.e.Statement(s, tt.v)
				ended := h.spans.Ended()
				if len(ended) != 1 {
					t.Fatalf("got %d spans, want 1", len(ended))
				}
				got := tracetest.SpanStubFromReadOnlySpan(ended[0])
				want := sdkStatementSpan(t, h.e, s, tt.v, trace.SpanContext{})
				compareSpans(t, got, want)
			})
		}
	}
	// A statement whose own parent is not its transaction's is a child of
	// its own, where its findings are, and links to the transaction.
	t.Run("in a transaction, under a second traceparent", func(t *testing.T) {
		clearOTelEnv(t)
		t.Setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "")
		h := newHarness(t, Config{KeepSlowSpans: true})
		begin := stmt(qBegin, t0, time.Millisecond, parentTC)
		begin.Stmt.TxStatus = wire.TxInBlock
		h.e.Statement(begin, detector.Verdict{})
		other := parentTC
		other.SpanID = [8]byte{9, 9, 9, 9, 9, 9, 9, 9}
		s := stmt(qInsert, t0.Add(time.Millisecond), time.Millisecond, other)
		s.Stmt.TxStatus = wire.TxInBlock
		h.e.Statement(s, detector.Verdict{})
		h.e.mu.Lock()
		tx := h.e.conns[testConn.ID].tx.span.SpanContext()
		h.e.mu.Unlock()
		ended := h.spans.Ended()
		got := tracetest.SpanStubFromReadOnlySpan(ended[len(ended)-1])
		if len(got.Links) != 1 || !got.Links[0].SpanContext.Equal(tx) {
			t.Fatalf("links = %v, want the transaction span", got.Links)
		}
		compareSpans(t, got, sdkStatementSpan(t, h.e, s, detector.Verdict{}, tx))
	})
}

// sdkStatementSpan records s's span through an SDK tracer of the exporter's
// resource, scope and (environment) span limits, the way the exporter did
// before statement spans bypassed the Tracer. txSpan, if valid, is the open
// transaction's span, which the span links to.
func sdkStatementSpan(t *testing.T, e *Exporter, s *detector.Statement, v detector.Verdict, txSpan trace.SpanContext) tracetest.SpanStub {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithResource(e.spans.Resource()),
		sdktrace.WithSampler(keepSampler{base: sdktrace.ParentBased(sdktrace.AlwaysSample())}),
		sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	tracer := tp.Tracer(ScopeName, trace.WithInstrumentationVersion(e.cfg.Version))

	st := s.Stmt
	ctx := context.Background()
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(st.Start)}
	if txSpan.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: txSpan}))
	}
	if s.Parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, remoteSpanContext(s.Parent))
	}
	switch {
	case st.Failed():
		opts = append(opts, trace.WithAttributes(keyKeep.String("error")))
	case v.Slow:
		opts = append(opts, trace.WithAttributes(keyKeep.String("slow")))
	case v.NPlusOneDetected:
		opts = append(opts, trace.WithAttributes(keyKeep.String("n_plus_one")))
	}
	_, span := tracer.Start(ctx, s.Query.Summary, opts...)
	e.mu.Lock()
	base := e.conns[s.Conn.ID].base
	e.mu.Unlock()
	span.SetAttributes(e.statementAttrs(nil, base, s, v)...)
	if st.Failed() {
		span.SetStatus(codes.Error, st.ErrorMessage)
	}
	if v.Slow {
		span.AddEvent("pgtrace.slow_query", trace.WithTimestamp(st.End), trace.WithAttributes(
			keyDurationMs.Float64(float64(st.Duration())/float64(time.Millisecond)),
			keySlowThresholdMs.Float64(float64(e.cfg.SlowThreshold)/float64(time.Millisecond))))
	}
	if v.NPlusOneDetected {
		span.AddEvent("pgtrace.n_plus_one", trace.WithTimestamp(st.End), trace.WithAttributes(
			keyNPlusOneCount.Int(v.NPlusOneCount)))
	}
	span.End(trace.WithTimestamp(st.End))
	return tracetest.SpanStubFromReadOnlySpan(rec.Ended()[0])
}

func compareSpans(t *testing.T, got, want tracetest.SpanStub) {
	t.Helper()
	gsc, wsc := got.SpanContext, want.SpanContext
	if !gsc.SpanID().IsValid() || gsc.IsRemote() || gsc.TraceFlags() != wsc.TraceFlags() ||
		gsc.TraceState().String() != wsc.TraceState().String() ||
		(want.Parent.IsValid() && gsc.TraceID() != wsc.TraceID()) {
		t.Errorf("span context = %+v, want like %+v", gsc, wsc)
	}
	if !got.Parent.Equal(want.Parent) {
		t.Errorf("parent = %+v, want %+v", got.Parent, want.Parent)
	}
	// The OTLP transform groups spans by resource equivalence and by scope
	// value: both must match the provider's for statement spans to share
	// the transaction and connect spans' ResourceSpans and ScopeSpans.
	if got.Resource.Equivalent() != want.Resource.Equivalent() || got.Resource.SchemaURL() != want.Resource.SchemaURL() {
		t.Errorf("resource = %v, want the provider's %v", got.Resource, want.Resource)
	}
	if got.InstrumentationScope != want.InstrumentationScope {
		t.Errorf("scope = %+v, want the tracer's %+v", got.InstrumentationScope, want.InstrumentationScope)
	}
	byKey := func(a []attribute.KeyValue) []attribute.KeyValue {
		a = append([]attribute.KeyValue(nil), a...)
		sort.Slice(a, func(i, j int) bool { return a[i].Key < a[j].Key })
		return a
	}
	got.Attributes, want.Attributes = byKey(got.Attributes), byKey(want.Attributes)
	opts := cmp.Options{
		cmpopts.IgnoreFields(tracetest.SpanStub{}, "SpanContext", "Parent", "Resource", "InstrumentationScope",
			"InstrumentationLibrary", "ChildSpanCount"),
		cmp.Comparer(func(a, b attribute.Value) bool { return a.Type() == b.Type() && a.Emit() == b.Emit() }),
		cmp.Comparer(func(a, b trace.SpanContext) bool { return a.Equal(b) }),
		cmpopts.EquateEmpty(),
	}
	if diff := cmp.Diff(want, got, opts...); diff != "" {
		t.Errorf("span differs from the SDK's (-sdk +pgtrace):\n%s", diff)
	}
}

func TestNoStatementSpanAfterShutdown(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{})
	if err := h.e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if traceID, _ := h.e.Statement(stmt(qSelect, t0, time.Millisecond, parentTC), detector.Verdict{}); traceID != "" {
		t.Errorf("span %s exported after Shutdown", traceID)
	}
	if n := len(h.spans.Ended()); n != 0 {
		t.Errorf("%d spans ended after Shutdown", n)
	}
}

func TestRootIDs(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{})
	traces, spans := map[string]bool{}, map[string]bool{}
	for range 100 {
		traceID, spanID := h.e.Statement(stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
		if traceID == "" || traceID == (trace.TraceID{}).String() || spanID == (trace.SpanID{}).String() {
			t.Fatalf("ids %q/%q, want valid ones", traceID, spanID)
		}
		traces[traceID], spans[spanID] = true, true
	}
	if len(traces) != 100 || len(spans) != 100 {
		t.Errorf("%d trace ids and %d span ids for 100 roots, want all different", len(traces), len(spans))
	}
}
