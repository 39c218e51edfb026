package export

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export/internal/fastspan"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// traceSink is an OTLP trace receiver, over gRPC or HTTP, that keeps every
// request it receives: decoded, and over HTTP also the body as sent.
type traceSink struct {
	coltracepb.UnimplementedTraceServiceServer
	addr string

	mu     sync.Mutex
	reqs   []*coltracepb.ExportTraceServiceRequest
	bodies [][]byte
}

func (s *traceSink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (s *traceSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	req := new(coltracepb.ExportTraceServiceRequest)
	if err == nil {
		err = proto.Unmarshal(body, req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	s.bodies = append(s.bodies, body)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
}

// take returns the requests and bodies received so far and forgets them.
func (s *traceSink) take() ([]*coltracepb.ExportTraceServiceRequest, [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	reqs, bodies := s.reqs, s.bodies
	s.reqs, s.bodies = nil, nil
	return reqs, bodies
}

func startSink(t *testing.T, protocol string) *traceSink {
	t.Helper()
	s := &traceSink{}
	if protocol == "http" {
		hs := httptest.NewServer(s)
		t.Cleanup(hs.Close)
		s.addr = hs.Listener.Addr().String()
		return s
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	s.addr = lis.Addr().String()
	return s
}

// otlpClient is the client pgtrace's exporter uses for protocol ("grpc"
// or "http"), sending to addr without TLS.
func otlpClient(protocol, addr string) fastspan.Client {
	if protocol == "http" {
		return otlptracehttp.NewClient(otlptracehttp.WithEndpoint(addr), otlptracehttp.WithInsecure())
	}
	return otlptracegrpc.NewClient(otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
}

// stockExporter is the OTel Go OTLP exporter, what pgtrace used before.
func stockExporter(t testing.TB, protocol, addr string) sdktrace.SpanExporter {
	t.Helper()
	var exp sdktrace.SpanExporter
	var err error
	if protocol == "http" {
		exp, err = otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(addr), otlptracehttp.WithInsecure())
	} else {
		exp, err = otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exp.Shutdown(context.Background()) })
	return exp
}

func ourExporter(t testing.TB, client fastspan.Client) *fastspan.Exporter {
	t.Helper()
	exp, err := fastspan.NewExporter(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exp.Shutdown(context.Background()) })
	return exp
}

// clearCompression makes the OTLP clients send plain protobuf.
func clearCompression(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
		"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"} {
		t.Setenv(k, "")
	}
}

// recordedStatementSpans are the spans of a few statements, failed, slow
// and tagged ones among them, and of a connection's setup, as pgtrace
// builds them (fastspan.Span, and SDK spans for the connection).
func recordedStatementSpans(t testing.TB) []sdktrace.ReadOnlySpan {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), UpstreamAddr: "db.internal:5432",
		SpanProcessor: rec, Version: "1.2.3", KeepSlowSpans: true, SlowThreshold: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.Conn(wire.Event{Kind: wire.ConnOpened, Time: t0, Conn: testConn})
	e.Conn(wire.Event{Kind: wire.ConnAuthenticated, Time: t0.Add(time.Millisecond), Conn: testConn, ConnectDuration: time.Millisecond})
	at := t0.Add(2 * time.Millisecond)
	e.Statement(stmt(qSelect, at, time.Millisecond, parentTC), detector.Verdict{})
	e.Statement(failed(stmt(qSelect, at.Add(time.Millisecond), time.Millisecond, parentTC), "42P01",
		`relation "users" does not exist`), detector.Verdict{})
	e.Statement(stmt(qInsert, at.Add(2*time.Millisecond), 300*time.Millisecond, fingerprint.TraceContext{}),
		detector.Verdict{Slow: true})
	tagged := stmt(qSelect, at.Add(3*time.Millisecond), time.Millisecond, parentTC)
	tagged.Tags = &fingerprint.Tags{Application: "billing", Route: "/partners/{id}", Tenant: "acmé"}
	e.Statement(tagged, detector.Verdict{NPlusOne: true, NPlusOneDetected: true, NPlusOneCount: 5})
	long := query("SELECT", "orders", "SELECT orders", "00000000000000c1")
	long.Normalized = "SELECT " + strings.Repeat("a, ", 6000) + "b FROM orders WHERE id = $1"
	e.Statement(stmt(long, at.Add(4*time.Millisecond), time.Millisecond, parentTC), detector.Verdict{})
	e.Conn(wire.Event{Kind: wire.ConnClosed, Time: at.Add(time.Second), Conn: testConn, Side: wire.SideClient})
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	if len(spans) < 5 {
		t.Fatalf("recorded %d spans, want at least 5", len(spans))
	}
	return spans
}

// allAttrs has an attribute of every type, and edge cases of each.
func allAttrs(prefix string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.Bool(prefix+"bool.true", true),
		attribute.Bool(prefix+"bool.false", false),
		attribute.Int64(prefix+"int.zero", 0),
		attribute.Int64(prefix+"int.neg", -42),
		attribute.Int64(prefix+"int.max", math.MaxInt64),
		attribute.Float64(prefix+"float", 3.25),
		attribute.Float64(prefix+"float.zero", 0),
		attribute.Float64(prefix+"float.inf", math.Inf(-1)),
		attribute.String(prefix+"string", "grüße, 世界"),
		attribute.String(prefix+"string.empty", ""),
		attribute.String(prefix+"string.long", strings.Repeat("x", 200)),
		attribute.BoolSlice(prefix+"bools", []bool{true, false, true}),
		attribute.BoolSlice(prefix+"bools.empty", []bool{}),
		attribute.Int64Slice(prefix+"ints", []int64{0, -1, 1 << 40}),
		attribute.Float64Slice(prefix+"floats", []float64{0, -2.5, math.MaxFloat64}),
		attribute.StringSlice(prefix+"strings", []string{"a", "", strings.Repeat("y", 130)}),
		attribute.StringSlice(prefix+"strings.empty", nil),
		attribute.ByteSlice(prefix+"bytes", []byte{0, 1, 0xff}),
		attribute.ByteSlice(prefix+"bytes.empty", nil),
		attribute.Slice(prefix+"slice", attribute.IntValue(1), attribute.StringValue("two"),
			attribute.SliceValue(attribute.BoolValue(true)), attribute.MapValue(attribute.String("k", "v")),
			attribute.Value{}),
		attribute.Slice(prefix + "slice.empty"),
		attribute.Map(prefix+"map", attribute.Int("n", 1), attribute.StringSlice("s", []string{"x"}),
			attribute.Map("inner", attribute.Float64("f", 1.5))),
		attribute.Map(prefix + "map.empty"),
		{Key: attribute.Key(prefix + "empty")}, // an empty value
		attribute.String("", "empty key"),
	}
}

// sdkSpans are spans made by two tracer providers with different
// resources and several scopes: every kind, remote and local parents,
// trace state, events and links over their limits, every status.
func sdkSpans(t testing.TB) []sdktrace.ReadOnlySpan {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	limits := sdktrace.NewSpanLimits()
	limits.EventCountLimit, limits.LinkCountLimit = 2, 2
	limits.AttributePerEventCountLimit, limits.AttributePerLinkCountLimit = 3, 1
	limits.AttributeCountLimit = 30
	resA := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.26.0",
		attribute.String("service.name", "svc-a"), attribute.StringSlice("host.ips", []string{"10.0.0.1"}))
	resB := resource.NewSchemaless(attribute.String("service.name", "svc-b"), attribute.Int("shard", 3))
	tpA := sdktrace.NewTracerProvider(sdktrace.WithResource(resA), sdktrace.WithRawSpanLimits(limits),
		sdktrace.WithSpanProcessor(rec))
	tpB := sdktrace.NewTracerProvider(sdktrace.WithResource(resB), sdktrace.WithSpanProcessor(rec))

	ts, err := trace.ParseTraceState("vendor=abc,other=x-y")
	if err != nil {
		t.Fatal(err)
	}
	remote := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: parentTC.TraceID, SpanID: parentTC.SpanID, TraceFlags: trace.FlagsSampled,
		TraceState: ts, Remote: true,
	})
	link := func(i byte, remote bool) trace.Link {
		return trace.Link{
			SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: trace.TraceID{1, i}, SpanID: trace.SpanID{2, i}, TraceState: ts, Remote: remote,
			}),
			Attributes: []attribute.KeyValue{attribute.Int("link.n", int(i)), attribute.String("link.x", "y")},
		}
	}

	tracers := []trace.Tracer{
		tpA.Tracer("pgtrace/test/a", trace.WithInstrumentationVersion("0.1.0"),
			trace.WithSchemaURL("https://opentelemetry.io/schemas/1.24.0"),
			trace.WithInstrumentationAttributes(attribute.String("scope.attr", "v"))),
		tpA.Tracer("pgtrace/test/b"),
		tpB.Tracer("pgtrace/test/a", trace.WithInstrumentationVersion("0.1.0")),
		tpB.Tracer(""),
	}
	kinds := []trace.SpanKind{trace.SpanKindUnspecified, trace.SpanKindInternal, trace.SpanKindServer,
		trace.SpanKindClient, trace.SpanKindProducer, trace.SpanKindConsumer}
	remoteCtx := trace.ContextWithRemoteSpanContext(context.Background(), remote)
	for i, tr := range tracers {
		ctx, root := tr.Start(remoteCtx, fmt.Sprintf("root %d", i), trace.WithSpanKind(kinds[i%len(kinds)]),
			trace.WithAttributes(allAttrs("")...), trace.WithLinks(link(1, true), link(2, false), link(3, true)))
		root.AddEvent("first", trace.WithAttributes(allAttrs("ev.")[:5]...))
		root.AddEvent("", trace.WithTimestamp(t0))
		root.AddEvent("third", trace.WithAttributes(attribute.Int("n", 3)))
		root.SetStatus(codes.Error, "it broke: ünïcode")
		for j, k := range kinds {
			_, child := tr.Start(ctx, fmt.Sprintf("child %d.%d", i, j), trace.WithSpanKind(k),
				trace.WithTimestamp(t0.Add(time.Duration(j)*time.Millisecond)))
			child.SetAttributes(attribute.Int("j", j))
			switch j % 3 {
			case 0:
				child.SetStatus(codes.Ok, "ignored by the SDK")
			case 1:
				child.RecordError(fmt.Errorf("error %d", j))
			}
			child.End(trace.WithTimestamp(t0.Add(time.Duration(j+1) * time.Millisecond)))
		}
		root.End()
	}
	_, unsampledRoot := tracers[0].Start(context.Background(), "new root")
	unsampledRoot.End()
	_ = tpA.Shutdown(context.Background())
	_ = tpB.Shutdown(context.Background())
	return rec.Ended()
}

// stubSpans are spans no SDK makes but a ReadOnlySpan can be: no
// resource, no scope, zero times, out-of-range counts and kinds, an OK
// status with a description, an unsampled span.
func stubSpans() []sdktrace.ReadOnlySpan {
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{9}, SpanID: trace.SpanID{9}})
	stubs := tracetest.SpanStubs{
		{Name: "bare", SpanContext: sc},
		{
			Name: "odd", SpanContext: sc, SpanKind: trace.SpanKind(99),
			Parent:    trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{9}, SpanID: trace.SpanID{8}, Remote: true}),
			StartTime: time.Unix(0, -5), EndTime: time.Unix(1, 0),
			Status:            sdktrace.Status{Code: codes.Ok, Description: "fine"},
			DroppedAttributes: -1, DroppedEvents: math.MaxInt64, DroppedLinks: 7,
			Resource:             resource.Empty(), // the same set as none: grouped with "bare"
			InstrumentationScope: instrumentation.Scope{Name: "stub"},
			Events:               []sdktrace.Event{{Name: "e", DroppedAttributeCount: 2}},
			Links:                []sdktrace.Link{{DroppedAttributeCount: -3}},
		},
		{Name: "", SpanContext: trace.SpanContext{}, Resource: resource.NewSchemaless(attribute.Bool("stub", true))},
	}
	return append(stubs.Snapshots(), nil) // a nil span is skipped
}

// sortedRequest is req's resource spans in a fixed order: the OTel
// exporter orders them as a map iterates.
func sortedRequest(t *testing.T, req *coltracepb.ExportTraceServiceRequest) *coltracepb.ExportTraceServiceRequest {
	t.Helper()
	key := func(rs *tracepb.ResourceSpans) string {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(rs.GetResource())
		if err != nil {
			t.Fatal(err)
		}
		return string(b) + "\x00" + rs.GetSchemaUrl()
	}
	out := proto.Clone(req).(*coltracepb.ExportTraceServiceRequest)
	slices.SortFunc(out.ResourceSpans, func(a, b *tracepb.ResourceSpans) int { return strings.Compare(key(a), key(b)) })
	return out
}

// exportAndCompare sends batch through the OTel exporter and through
// exp, each to its own receiver, and fails unless both receivers got the
// same requests: equal messages, and over HTTP, for a batch of one
// resource, the same bytes.
func exportAndCompare(t *testing.T, protocol string, stock sdktrace.SpanExporter, stockSink *traceSink,
	exp sdktrace.SpanExporter, sink *traceSink, batch []sdktrace.ReadOnlySpan,
) {
	t.Helper()
	ctx := context.Background()
	errStock := stock.ExportSpans(ctx, batch)
	errOurs := exp.ExportSpans(ctx, batch)
	if (errStock == nil) != (errOurs == nil) {
		t.Fatalf("OTel exporter: %v; pgtrace's: %v", errStock, errOurs)
	}
	want, wantBodies := stockSink.take()
	got, gotBodies := sink.take()
	if len(got) != len(want) {
		t.Fatalf("pgtrace's exporter sent %d request(s), the OTel exporter %d", len(got), len(want))
	}
	for i := range want {
		if len(want[i].ResourceSpans) == 1 && protocol == "http" && !bytes.Equal(gotBodies[i], wantBodies[i]) {
			t.Errorf("request %d: body of %d bytes differs from the OTel exporter's (%d bytes)",
				i, len(gotBodies[i]), len(wantBodies[i]))
		}
		g, w := sortedRequest(t, got[i]), sortedRequest(t, want[i])
		if !proto.Equal(g, w) {
			t.Errorf("request %d differs from the OTel exporter's:\ngot:  %v\nwant: %v", i, g, w)
		}
	}
}

// TestOTLPExporterSendsWhatOTelSends sends the same batches through the
// OTel Go OTLP exporter and through pgtrace's, over gRPC and HTTP, to real
// receivers, and compares what they receive.
func TestOTLPExporterSendsWhatOTelSends(t *testing.T) {
	clearOTelEnv(t)
	clearCompression(t)
	statements := recordedStatementSpans(t)
	sdk := sdkSpans(t)
	stubs := stubSpans()
	all := slices.Concat(statements, sdk, stubs)
	one := slices.Concat(statements[:3], statements[4:])
	for _, protocol := range []string{"grpc", "http"} {
		t.Run(protocol, func(t *testing.T) {
			stockSink, sink := startSink(t, protocol), startSink(t, protocol)
			stock := stockExporter(t, protocol, stockSink.addr)
			exp := ourExporter(t, otlpClient(protocol, sink.addr))
			for _, tc := range []struct {
				name  string
				batch []sdktrace.ReadOnlySpan
			}{
				{"statement spans", statements},
				{"one resource", one},
				{"sdk spans", sdk},
				{"stub spans", stubs},
				{"everything", all},
				{"one span", sdk[len(sdk)-1:]},
				{"empty", nil},
				{"nil span", []sdktrace.ReadOnlySpan{nil}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					exportAndCompare(t, protocol, stock, stockSink, exp, sink, tc.batch)
				})
			}
		})
	}
}

// TestOTLPExporterInvalidUTF8 checks that invalid UTF-8, which fails the
// OTel exporter's whole batch, reaches the collector as U+FFFD, and the
// rest of the batch with it: what pgtrace sends for a batch with a bad
// string is what the OTel exporter sends for the same batch with that
// string mended.
func TestOTLPExporterInvalidUTF8(t *testing.T) {
	clearOTelEnv(t)
	clearCompression(t)
	good := sdkSpans(t)
	kv := func(k, v string) []attribute.KeyValue { return []attribute.KeyValue{attribute.String(k, v)} }
	for _, tc := range []struct {
		name      string
		bad, mend tracetest.SpanStub
	}{
		{"name", tracetest.SpanStub{Name: "bad\xff"}, tracetest.SpanStub{Name: "bad\uFFFD"}},
		{"value", tracetest.SpanStub{Name: "value", Attributes: kv("k", "SELECT '\xe9t\xe9'")},
			tracetest.SpanStub{Name: "value", Attributes: kv("k", "SELECT '\uFFFDt\uFFFD'")}},
		{"key", tracetest.SpanStub{Name: "key", Attributes: []attribute.KeyValue{attribute.Int("k\xff", 1)}},
			tracetest.SpanStub{Name: "key", Attributes: []attribute.KeyValue{attribute.Int("k\uFFFD", 1)}}},
		{"slice", tracetest.SpanStub{Name: "slice", Attributes: []attribute.KeyValue{attribute.StringSlice("k", []string{"ok", "\xff"})}},
			tracetest.SpanStub{Name: "slice", Attributes: []attribute.KeyValue{attribute.StringSlice("k", []string{"ok", "\uFFFD"})}}},
		{"status", tracetest.SpanStub{Name: "status", Status: sdktrace.Status{Code: codes.Error, Description: "\xc3\x28"}},
			tracetest.SpanStub{Name: "status", Status: sdktrace.Status{Code: codes.Error, Description: "\uFFFD("}}},
		{"event", tracetest.SpanStub{Name: "event", Events: []sdktrace.Event{{Name: "\xfe"}}},
			tracetest.SpanStub{Name: "event", Events: []sdktrace.Event{{Name: "\uFFFD"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			stockSink, sink := startSink(t, "grpc"), startSink(t, "grpc")
			stock := stockExporter(t, "grpc", stockSink.addr)
			exp := ourExporter(t, otlpClient("grpc", sink.addr))
			if err := stock.ExportSpans(ctx, append(slices.Clone(good), tc.bad.Snapshot())); err == nil {
				t.Errorf("the OTel exporter sent invalid UTF-8: the test tests nothing")
			}
			stockSink.take()
			if err := stock.ExportSpans(ctx, append(slices.Clone(good), tc.mend.Snapshot())); err != nil {
				t.Fatalf("OTel exporter, mended batch: %v", err)
			}
			if err := exp.ExportSpans(ctx, append(slices.Clone(good), tc.bad.Snapshot())); err != nil {
				t.Fatalf("pgtrace's exporter: %v", err)
			}
			want, _ := stockSink.take()
			got, _ := sink.take()
			if len(got) != 1 || len(want) != 1 {
				t.Fatalf("requests: pgtrace's exporter sent %d, the OTel exporter %d; want 1 each", len(got), len(want))
			}
			if g, w := sortedRequest(t, got[0]), sortedRequest(t, want[0]); !proto.Equal(g, w) {
				t.Errorf("request differs from the OTel exporter's for the mended batch:\ngot:  %v\nwant: %v", g, w)
			}
		})
	}
}

// reuseClient is a real OTLP client that remembers the span messages of
// each upload, to see that the exporter reuses them.
type reuseClient struct {
	fastspan.Client
	mu    sync.Mutex
	spans map[*tracepb.Span]int // uploads each message was in
}

func (c *reuseClient) UploadTraces(ctx context.Context, rss []*tracepb.ResourceSpans) error {
	c.mu.Lock()
	for _, rs := range rss {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				c.spans[s]++
			}
		}
	}
	c.mu.Unlock()
	return c.Client.UploadTraces(ctx, rss)
}

// TestOTLPExporterReuseLeavesNothingBehind exports large batches, then
// smaller ones with fewer resources, scopes, attributes, events and links,
// from several goroutines (run it with -race): each request must be what
// the OTel exporter sends for the same batch, though the messages and
// buffer behind it held the previous, larger one.
func TestOTLPExporterReuseLeavesNothingBehind(t *testing.T) {
	clearOTelEnv(t)
	clearCompression(t)
	statements := recordedStatementSpans(t)
	sdk := sdkSpans(t)
	batches := [][]sdktrace.ReadOnlySpan{
		slices.Concat(sdk, statements, stubSpans()),
		statements[:2],
		sdk[len(sdk)-3:],
		stubSpans()[:1],
		statements,
		sdk[:1],
	}
	for _, protocol := range []string{"grpc", "http"} {
		t.Run(protocol, func(t *testing.T) {
			stockSink, sink := startSink(t, protocol), startSink(t, protocol)
			stock := stockExporter(t, protocol, stockSink.addr)
			client := &reuseClient{Client: otlpClient(protocol, sink.addr), spans: map[*tracepb.Span]int{}}
			exp := ourExporter(t, client)
			for _, b := range batches {
				exportAndCompare(t, protocol, stock, stockSink, exp, sink, b)
			}
			reused := 0
			for _, n := range client.spans {
				if n > 1 {
					reused++
				}
			}
			if reused == 0 {
				t.Fatal("no span message was reused: the test tests nothing")
			}

			// Concurrent exports take turns: every request is one of the
			// batches, whole.
			want := map[string]bool{}
			for _, b := range batches {
				if err := stock.ExportSpans(context.Background(), b); err != nil {
					t.Fatal(err)
				}
			}
			reqs, _ := stockSink.take()
			key := func(r *coltracepb.ExportTraceServiceRequest) string {
				b, err := proto.MarshalOptions{Deterministic: true}.Marshal(sortedRequest(t, r))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			for _, r := range reqs {
				want[key(r)] = true
			}
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := range 5 {
						if err := exp.ExportSpans(context.Background(), batches[(g+i)%len(batches)]); err != nil {
							t.Error(err)
						}
					}
				})
			}
			wg.Wait()
			reqs, _ = sink.take()
			if len(reqs) != 20 {
				t.Errorf("received %d requests, want 20", len(reqs))
			}
			for i, r := range reqs {
				if !want[key(r)] {
					t.Errorf("concurrent request %d is none of the batches: %v", i, r)
				}
			}
		})
	}
}

// TestOTLPExporterIsPgtraces checks that New exports through pgtrace's
// exporter for both OTLP protocols on the fast span path, and that
// statement spans are then recycled; on the SDK path, through the SDK.
func TestOTLPExporterIsPgtraces(t *testing.T) {
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		for _, path := range []string{"", SpanPathFast, SpanPathSDK} {
			t.Run(protocol+"/"+path, func(t *testing.T) {
				clearOTelEnv(t)
				t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
				t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
				e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), SpanPath: path})
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
					defer cancel()
					_ = e.Shutdown(ctx)
				}()
				if path == SpanPathSDK {
					if e.spans != nil || e.drops != nil || e.tp == nil {
						t.Errorf("SDK path: sink %v, batcher %v, provider %v", e.spans, e.drops, e.tp)
					}
					return
				}
				if e.drops == nil || e.spans == nil {
					t.Fatal("no fast span path")
				}
				if _, ok := e.drops.Exporter().(*fastspan.Exporter); !ok {
					t.Errorf("span exporter is %T, want *fastspan.Exporter", e.drops.Exporter())
				}
				if !e.spans.Recycles() {
					t.Error("statement spans not recycled")
				}
			})
		}
	}
	if _, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), SpanPath: "slow"}); err == nil {
		t.Error("span path \"slow\" accepted")
	}
}
