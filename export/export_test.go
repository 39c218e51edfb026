package export

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// clearOTelEnv makes the test independent of the caller's OTEL_* settings.
func clearOTelEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
		"OTEL_TRACES_SAMPLING_RATIO", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
	} {
		t.Setenv(k, "")
	}
}

type harness struct {
	e      *Exporter
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	cfg.SpanProcessor = h.spans
	cfg.MetricReader = h.reader
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UpstreamAddr == "" {
		cfg.UpstreamAddr = "db.internal:5432"
	}
	e, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	h.e = e
	return h
}

// metrics collects and returns the metrics by name.
func (h *harness) metrics(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	m := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, x := range sm.Metrics {
			m[x.Name] = x
		}
	}
	return m
}

var (
	t0         = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clientAddr = netip.MustParseAddrPort("10.1.2.3:51000")
	testConn   = wire.ConnInfo{ID: 7, ClientAddr: clientAddr, ServerAddr: "db.internal:5432", User: "app",
		Database: "shop", Application: "api", BackendPID: 4242, TxStatus: wire.TxIdle, OpenedAt: t0}
	parentTC = fingerprint.TraceContext{
		TraceID: [16]byte{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  [8]byte{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		Flags:   1,
	}
)

func query(op, coll, summary, fp string) *fingerprint.Query {
	return &fingerprint.Query{Fingerprint: fp, Normalized: summary + " WHERE id = $1", Summary: summary, Operation: op, Collection: coll}
}

var (
	qSelect = query("SELECT", "users", "SELECT users", "00000000000000a1")
	qInsert = query("INSERT", "orders", "INSERT orders", "00000000000000a2")
	qBegin  = &fingerprint.Query{Fingerprint: "00000000000000b1", Normalized: "BEGIN", Summary: "BEGIN", Operation: "BEGIN", TxControl: fingerprint.TxBegin}
	qCommit = &fingerprint.Query{Fingerprint: "00000000000000b2", Normalized: "COMMIT", Summary: "COMMIT", Operation: "COMMIT", TxControl: fingerprint.TxCommit}
)

// stmt builds a statement that started at start and took d.
func stmt(q *fingerprint.Query, start time.Time, d time.Duration, parent fingerprint.TraceContext) *detector.Statement {
	conn := testConn
	st := &wire.Statement{Text: q.Normalized, Protocol: wire.ProtocolExtended, Start: start, End: start.Add(d),
		Outcome: wire.OutcomeComplete, TxStatus: wire.TxIdle}
	switch q.Operation {
	case "SELECT":
		st.CommandTag, st.Rows = "SELECT 3", 3
	case "INSERT":
		st.CommandTag, st.Rows = "INSERT 0 1", 1
	default:
		st.CommandTag = q.Operation
	}
	return &detector.Statement{Stmt: st, Conn: &conn, Query: q, Tags: &fingerprint.Tags{}, Parent: parent}
}

// slowVerdict is the detector's verdict on a slow statement.
var slowVerdict = detector.Verdict{Slow: true, Findings: []detector.Finding{{Type: detector.FindingSlowQuery}}}

func failed(s *detector.Statement, code, msg string) *detector.Statement {
	s.Stmt.Outcome, s.Stmt.CommandTag, s.Stmt.Rows = wire.OutcomeError, "", 0
	s.Stmt.SQLState, s.Stmt.ErrorMessage, s.Stmt.Severity = code, msg, "ERROR"
	return s
}

func attrMap(kvs []attribute.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

// baseAttrs are the attributes every span of qSelect on testConn carries.
func baseAttrs(q *fingerprint.Query) map[string]any {
	m := map[string]any{
		"db.system.name": "postgresql", "db.system": "postgresql",
		"db.namespace": "shop", "db.name": "shop",
		"db.query.text": q.Normalized, "db.statement": q.Normalized,
		"db.query.summary": q.Summary, "db.operation.name": q.Operation, "db.operation": q.Operation,
		"pgtrace.fingerprint": q.Fingerprint,
		"server.address":      "db.internal", "server.port": int64(5432),
		"client.address": "10.1.2.3", "client.port": int64(51000),
		"pgtrace.connection.id": int64(7), "pgtrace.application": "api",
	}
	if q.Collection != "" {
		m["db.collection.name"] = q.Collection
	}
	return m
}

func TestStatementSpan(t *testing.T) {
	clearOTelEnv(t)
	tests := []struct {
		name       string
		stmt       *detector.Statement
		verdict    detector.Verdict
		wantParent trace.SpanID // zero: root
		wantAttrs  func(m map[string]any)
		wantStatus sdktrace.Status
		wantEvents []string
	}{
		{
			name: "root select",
			stmt: stmt(qSelect, t0, 2*time.Millisecond, fingerprint.TraceContext{}),
			wantAttrs: func(m map[string]any) {
				m["db.response.returned_rows"] = int64(3)
			},
		},
		{
			name:       "child of traceparent",
			stmt:       stmt(qSelect, t0, 2*time.Millisecond, parentTC),
			wantParent: parentTC.SpanID,
			wantAttrs:  func(m map[string]any) { m["db.response.returned_rows"] = int64(3) },
		},
		{
			name: "failed with sqlstate",
			stmt: failed(stmt(qSelect, t0, time.Millisecond, parentTC), "42P01", `relation "users" does not exist`),
			wantAttrs: func(m map[string]any) {
				m["db.response.status_code"] = "42P01"
				m["error.type"] = "42P01"
				m["pgtrace.keep"] = "error"
			},
			wantParent: parentTC.SpanID,
			wantStatus: sdktrace.Status{Code: codes.Error, Description: `relation "users" does not exist`},
		},
		{
			name:    "slow",
			stmt:    stmt(qInsert, t0, 300*time.Millisecond, fingerprint.TraceContext{}),
			verdict: detector.Verdict{Slow: true},
			wantAttrs: func(m map[string]any) {
				m["pgtrace.slow"] = true
				m["pgtrace.keep"] = "slow"
			},
			wantEvents: []string{"pgtrace.slow_query"},
		},
		{
			name: "n+1 crossing with tags",
			stmt: func() *detector.Statement {
				s := stmt(qSelect, t0, time.Millisecond, parentTC)
				s.Tags = &fingerprint.Tags{Application: "billing", Route: "/partners/{id}", Controller: "partners",
					Action: "show", Framework: "chi", Tenant: "acme"}
				return s
			}(),
			verdict:    detector.Verdict{NPlusOne: true, NPlusOneDetected: true, NPlusOneCount: 5},
			wantParent: parentTC.SpanID,
			wantAttrs: func(m map[string]any) {
				m["db.response.returned_rows"] = int64(3)
				m["pgtrace.n_plus_one"] = true
				m["pgtrace.n_plus_one.count"] = int64(5)
				m["pgtrace.keep"] = "n_plus_one"
				m["pgtrace.application"] = "billing"
				m["pgtrace.route"] = "/partners/{id}"
				m["pgtrace.controller"] = "partners"
				m["pgtrace.action"] = "show"
				m["pgtrace.framework"] = "chi"
				m["tenant.id"] = "acme"
			},
			wantEvents: []string{"pgtrace.n_plus_one"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{KeepSlowSpans: true, SlowThreshold: 100 * time.Millisecond})
			traceID, spanID := h.e.Statement(tt.stmt, tt.verdict)
			ended := h.spans.Ended()
			if len(ended) != 1 {
				t.Fatalf("got %d spans, want 1", len(ended))
			}
			sp := ended[0]
			if sp.Name() != tt.stmt.Query.Summary {
				t.Errorf("name = %q, want %q", sp.Name(), tt.stmt.Query.Summary)
			}
			if sp.SpanKind() != trace.SpanKindClient {
				t.Errorf("kind = %v, want client", sp.SpanKind())
			}
			if !sp.StartTime().Equal(tt.stmt.Stmt.Start) || !sp.EndTime().Equal(tt.stmt.Stmt.End) {
				t.Errorf("times = %v…%v, want the wire's %v…%v", sp.StartTime(), sp.EndTime(), tt.stmt.Stmt.Start, tt.stmt.Stmt.End)
			}
			if got := sp.Parent().SpanID(); got != tt.wantParent {
				t.Errorf("parent span = %v, want %v", got, tt.wantParent)
			}
			if tt.wantParent.IsValid() && sp.SpanContext().TraceID() != trace.TraceID(parentTC.TraceID) {
				t.Errorf("trace id = %v, want the traceparent's", sp.SpanContext().TraceID())
			}
			if traceID != sp.SpanContext().TraceID().String() || spanID != sp.SpanContext().SpanID().String() {
				t.Errorf("returned ids %s/%s, span has %s", traceID, spanID, sp.SpanContext().SpanID())
			}
			want := baseAttrs(tt.stmt.Query)
			if tt.wantAttrs != nil {
				tt.wantAttrs(want)
			}
			if diff := cmp.Diff(want, attrMap(sp.Attributes())); diff != "" {
				t.Errorf("attributes (-want +got):\n%s", diff)
			}
			if sp.Status() != tt.wantStatus {
				t.Errorf("status = %+v, want %+v", sp.Status(), tt.wantStatus)
			}
			var events []string
			for _, ev := range sp.Events() {
				events = append(events, ev.Name)
			}
			if diff := cmp.Diff(tt.wantEvents, events); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSampling(t *testing.T) {
	unsampledParent := parentTC
	unsampledParent.Flags = 0
	tests := []struct {
		name    string
		env     map[string]string
		keep    bool
		stmt    *detector.Statement
		verdict detector.Verdict
		want    bool // exported
	}{
		{"parent sampled wins over always_off roots", map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, true,
			stmt(qSelect, t0, time.Millisecond, parentTC), detector.Verdict{}, true},
		{"parent unsampled", nil, true, stmt(qSelect, t0, time.Millisecond, unsampledParent), detector.Verdict{}, false},
		{"parent unsampled but slow", nil, true, stmt(qSelect, t0, time.Second, unsampledParent), detector.Verdict{Slow: true}, true},
		{"parent unsampled, slow, keep off", nil, false, stmt(qSelect, t0, time.Second, unsampledParent), detector.Verdict{Slow: true}, false},
		{"parent unsampled but failed", nil, true, failed(stmt(qSelect, t0, time.Millisecond, unsampledParent), "23505", "dup"), detector.Verdict{}, true},
		{"root with ratio alias 0", map[string]string{"OTEL_TRACES_SAMPLING_RATIO": "0"}, true,
			stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{}, false},
		{"root with ratio alias 1", map[string]string{"OTEL_TRACES_SAMPLING_RATIO": "1"}, true,
			stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{}, true},
		{"root, always_off, n+1 crossing", map[string]string{"OTEL_TRACES_SAMPLER": "always_off"}, true,
			stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{NPlusOne: true, NPlusOneDetected: true, NPlusOneCount: 5}, true},
		{"root, always_off, n+1 after crossing", map[string]string{"OTEL_TRACES_SAMPLER": "always_off"}, true,
			stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{NPlusOne: true, NPlusOneCount: 6}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearOTelEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			h := newHarness(t, Config{KeepSlowSpans: tt.keep})
			traceID, _ := h.e.Statement(tt.stmt, tt.verdict)
			var exported int
			for _, s := range h.spans.Ended() {
				if s.SpanContext().IsSampled() {
					exported++
				}
			}
			if got := exported == 1; got != tt.want {
				t.Errorf("exported = %v, want %v", got, tt.want)
			}
			if (traceID != "") != tt.want {
				t.Errorf("returned trace id %q; want one only for an exported span", traceID)
			}
			// Metrics count every statement whatever the sampling.
			m := h.metrics(t)
			hist := m["db.client.operation.duration"].Data.(metricdata.Histogram[float64])
			if len(hist.DataPoints) != 1 || hist.DataPoints[0].Count != 1 {
				t.Errorf("duration histogram = %+v, want one point with count 1", hist.DataPoints)
			}
		})
	}
}

func TestNoSpanOutputMeansNoIDs(t *testing.T) {
	clearOTelEnv(t)
	e, err := New(context.Background(), Config{Logger: slog.New(slog.DiscardHandler), MetricReader: sdkmetric.NewManualReader()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	if traceID, spanID := e.Statement(stmt(qSelect, t0, time.Millisecond, parentTC), detector.Verdict{Slow: true}); traceID != "" || spanID != "" {
		t.Errorf("ids %q/%q without any span output; want none (not the parent's)", traceID, spanID)
	}
}
