package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/admin"
	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/pipeline"
	"github.com/dotmac/pgtrace/wire"
	"github.com/google/go-cmp/cmp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records returns the JSON log records written so far.
func (l *logBuf) records(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

type unit struct {
	pl     *pipeline.Pipeline
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	logs   *logBuf
	det    *detector.Detector
}

func newUnit(t *testing.T) *unit {
	t.Helper()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
	u := &unit{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader(), logs: &logBuf{}}
	log := slog.New(slog.NewJSONHandler(u.logs, nil))
	exp, err := export.New(context.Background(), export.Config{
		UpstreamAddr: "db:5432", SlowThreshold: 50 * time.Millisecond, KeepSlowSpans: true,
		Logger: log, SpanProcessor: u.spans, MetricReader: u.reader,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exp.Shutdown(context.Background()) })
	u.det = detector.New(detector.Config{SlowThreshold: 50 * time.Millisecond, IdleInTxThreshold: time.Second})
	u.pl = pipeline.New(pipeline.Config{
		Analyzer: fingerprint.New(fingerprint.Config{}), Detector: u.det, Exporter: exp, Logger: log,
		TickInterval: 10 * time.Millisecond,
	})
	return u
}

var (
	t0   = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	conn = wire.ConnInfo{ID: 3, ClientAddr: netip.MustParseAddrPort("10.0.0.9:40000"), ServerAddr: "db:5432",
		User: "app", Database: "shop", Application: "api", BackendPID: 99, TxStatus: wire.TxIdle, OpenedAt: t0}
)

const (
	traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	spanID  = "00f067aa0ba902b7"
	tp      = "/*traceparent='00-" + traceID + "-" + spanID + "-01'*/"
)

func stmtEvent(text string, d time.Duration, mod func(*wire.Statement)) wire.Event {
	st := &wire.Statement{Text: text, Protocol: wire.ProtocolExtended, Start: t0, End: t0.Add(d),
		Outcome: wire.OutcomeComplete, CommandTag: "SELECT 1", Rows: 1, TxStatus: wire.TxIdle}
	if mod != nil {
		mod(st)
	}
	return wire.Event{Kind: wire.StatementDone, Time: st.End, Conn: conn, Stmt: st}
}

// TestParentRule follows DESIGN.md decision 5: a statement's parent is its
// own comment's trace context, else that of the text its named statement
// was prepared with, else its transaction's, else none; spans and findings
// agree on it. Every statement here is slow, so that each has a finding
// naming the trace it was put in: a statement without a parent, its own
// root span's ("root" below), as its slow-query line does.
func TestParentRule(t *testing.T) {
	const (
		traceID2 = "0af7651916cd43dd8448eb211c80319c"
		spanID2  = "b7ad6b7169203331"
		tp2      = "/*traceparent='00-" + traceID2 + "-" + spanID2 + "-01'*/"
	)
	slow := 60 * time.Millisecond
	named := func(name string) func(*wire.Statement) {
		return func(s *wire.Statement) { s.StatementName = name }
	}
	inTx := func(s *wire.Statement) { s.TxStatus = wire.TxInBlock }
	simple := func(mods ...func(*wire.Statement)) func(*wire.Statement) {
		return func(s *wire.Statement) {
			s.Protocol = wire.ProtocolSimple
			for _, m := range mods {
				m(s)
			}
		}
	}
	execute := func(prepared string, sql bool) func(*wire.Statement) {
		return func(s *wire.Statement) { s.PreparedText, s.PreparedSQL, s.StatementName = prepared, sql, "q1" }
	}
	const prepare = "PREPARE q1 (int) AS SELECT * FROM users WHERE id = $1 " + tp
	tests := []struct {
		name   string
		events []wire.Event
		// want is, per statement span in order, its name and the trace
		// and parent span ids its finding names ("" for none, "root" for
		// the trace of the statement's own root span).
		want []struct{ span, trace, parent string }
	}{{
		name: "every execution of a named statement",
		events: []wire.Event{
			stmtEvent("SELECT * FROM users WHERE id = $1 "+tp, slow, named("s1")),
			stmtEvent("SELECT * FROM users WHERE id = $1 "+tp, slow, named("s1")),
			stmtEvent("SELECT * FROM users WHERE id = $1 "+tp, slow, named("s1")),
		},
		want: []struct{ span, trace, parent string }{
			{"SELECT users", traceID, spanID}, {"SELECT users", traceID, spanID}, {"SELECT users", traceID, spanID},
		},
	}, {
		name: "EXECUTE runs the PREPARE's statement, with its comment unless it has its own",
		events: []wire.Event{
			stmtEvent("EXECUTE q1(1)", slow, simple(execute(prepare, true))),
			stmtEvent("EXECUTE q1(2) "+tp2, slow, simple(execute(prepare, true))),
			stmtEvent("EXECUTE q1(3)", slow, simple(execute("SELECT * FROM orders WHERE id = $1", false))),
		},
		want: []struct{ span, trace, parent string }{
			{"SELECT users", traceID, spanID}, {"SELECT users", traceID2, spanID2}, {"SELECT orders", "root", ""},
		},
	}, {
		name: "in a transaction, the transaction's context; after it, none",
		events: []wire.Event{
			stmtEvent("BEGIN", slow, simple(inTx)),
			stmtEvent("SELECT * FROM users WHERE id = $1", slow, inTx),
			stmtEvent("SELECT * FROM orders WHERE id = $1 "+tp, slow, inTx),
			stmtEvent("SELECT * FROM items WHERE id = $1", slow, inTx),
			stmtEvent("SELECT * FROM carts WHERE id = $1 "+tp2, slow, named("s2")),
			stmtEvent("COMMIT", slow, simple()),
			stmtEvent("SELECT * FROM items WHERE id = $1", slow, nil),
		},
		want: []struct{ span, trace, parent string }{
			// Before the transaction's context comes, the pipeline does not
			// know it: the findings have none, and the exporter holds the
			// spans until it can put them under the transaction span.
			{"BEGIN", "", ""},
			{"SELECT users", "", ""},
			{"SELECT orders", traceID, spanID},
			{"SELECT items", traceID, spanID},
			{"SELECT carts", traceID2, spanID2}, // its statement's own text wins
			{"COMMIT", traceID, spanID},
			{"SELECT items", "root", ""},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUnit(t)
			for i, ev := range tt.events {
				// One after the other, in wire order.
				d := ev.Stmt.Duration()
				ev.Stmt.Start = t0.Add(time.Duration(i) * time.Second)
				ev.Stmt.End = ev.Stmt.Start.Add(d)
				ev.Time = ev.Stmt.End
				u.pl.Observe(ev)
			}
			// The statement spans, in wire order, with their trace ids.
			var spans []sdktrace.ReadOnlySpan
			for _, s := range u.spans.Ended() {
				if s.Name() != "transaction" {
					spans = append(spans, s)
				}
			}
			slices.SortFunc(spans, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
			findings := u.det.Findings(detector.FindingSlowQuery, time.Time{})
			slices.SortFunc(findings, func(a, b detector.Finding) int { return a.FirstSeen.Compare(b.FirstSeen) })
			if len(spans) != len(tt.want) || len(findings) != len(tt.want) {
				t.Fatalf("%d spans and %d findings, want %d", len(spans), len(findings), len(tt.want))
			}
			for i, w := range tt.want {
				f := findings[i]
				if w.trace == "root" {
					w.trace = spans[i].SpanContext().TraceID().String()
					if spans[i].Parent().IsValid() {
						t.Errorf("statement %d: span has parent %v, want a root", i, spans[i].Parent())
					}
				}
				if spans[i].Name() != w.span || f.TraceID != w.trace || f.ParentSpanID != w.parent {
					t.Errorf("statement %d: span %q, finding trace %q parent %q; want %q, %q, %q",
						i, spans[i].Name(), f.TraceID, f.ParentSpanID, w.span, w.trace, w.parent)
				}
				// The span is in the trace the finding names, as a child of
				// the parent (directly, or through the transaction span).
				if w.trace != "" && spans[i].SpanContext().TraceID().String() != w.trace {
					t.Errorf("statement %d: span in trace %s, want %s", i, spans[i].SpanContext().TraceID(), w.trace)
				}
			}
		})
	}
}

func TestSlowQueryLogLine(t *testing.T) {
	u := newUnit(t)
	u.pl.Observe(stmtEvent("SELECT * FROM orders WHERE total > 1000 "+tp, 120*time.Millisecond, nil))
	ended := u.spans.Ended()
	if len(ended) != 1 {
		t.Fatalf("got %d spans, want 1", len(ended))
	}
	var slow map[string]any
	for _, r := range u.logs.records(t) {
		if r["msg"] == "slow query" {
			slow = r
		}
	}
	if slow == nil {
		t.Fatalf("no slow query line in %v", u.logs.records(t))
	}
	sc := ended[0].SpanContext()
	want := map[string]any{
		"level": "WARN", "trace_id": traceID, "span_id": sc.SpanID().String(),
		"application": "api", "client_addr": "10.0.0.9:40000", "database": "shop",
		"duration": float64(120 * time.Millisecond),
	}
	for k, v := range want {
		if slow[k] != v {
			t.Errorf("%s = %v, want %v", k, slow[k], v)
		}
	}
	q, _ := slow["query"].(string)
	if q == "" || strings.Contains(q, "1000") || strings.Contains(q, "traceparent") {
		t.Errorf("query = %q, want normalized text without literals or comment", q)
	}
	if fp, _ := slow["fingerprint"].(string); len(fp) != 16 {
		t.Errorf("fingerprint = %q", fp)
	}
}

func TestPlaceholdersAndConnectionCleanup(t *testing.T) {
	u := newUnit(t)
	// A FunctionCall and an Execute of a statement the proxy never saw
	// parsed: both still get a span and a detector verdict.
	u.pl.Observe(stmtEvent("", time.Millisecond, func(s *wire.Statement) { s.Protocol, s.FunctionOID = wire.ProtocolFunctionCall, 1598 }))
	u.pl.Observe(stmtEvent("", time.Millisecond, nil))
	// A text with no statement in it: pgx's "-- ping".
	u.pl.Observe(stmtEvent("-- ping", time.Millisecond, func(s *wire.Statement) {
		s.Protocol, s.Outcome, s.CommandTag, s.Rows = wire.ProtocolSimple, wire.OutcomeEmpty, "", 0
	}))
	// A transaction left open when the connection closes.
	u.pl.Observe(stmtEvent("BEGIN", time.Millisecond, func(s *wire.Statement) { s.TxStatus, s.CommandTag = wire.TxInBlock, "BEGIN" }))
	u.pl.Observe(stmtEvent("SELECT 1 "+tp, time.Millisecond, func(s *wire.Statement) { s.TxStatus = wire.TxInBlock }))
	u.pl.Observe(wire.Event{Kind: wire.ConnClosed, Time: t0.Add(time.Second), Conn: conn, Side: wire.SideClient, Err: errors.New("EOF")})

	names := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range u.spans.Ended() {
		names[s.Name()] = s
	}
	for _, n := range []string{"FUNCTION CALL", "UNKNOWN", "EMPTY", "transaction"} {
		if names[n] == nil {
			t.Errorf("no %q span among %v", n, keys(names))
		}
	}
	if tx := names["transaction"]; tx != nil {
		if !tx.EndTime().Equal(t0.Add(time.Second)) || tx.Parent().SpanID().String() != spanID {
			t.Errorf("transaction span ends %v with parent %v; want the close time and the comment's span", tx.EndTime(), tx.Parent().SpanID())
		}
	}
	// A new transaction on a reused connection id starts clean.
	u.spans.Reset()
	u.pl.Observe(stmtEvent("SELECT 2", time.Millisecond, nil))
	if ended := u.spans.Ended(); len(ended) != 1 || ended[0].Parent().IsValid() {
		t.Errorf("after ConnClosed a statement got %d spans / a parent: stale transaction state", len(ended))
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestFindingsOneRoute: every finding reaches the exporter and the log
// through the pipeline: a statement's from its verdict, a connection's from
// ObserveConn, a transaction left idle from the ticker's Tick; a slow
// statement without trace context names, in its log line, its finding and
// on the admin API alike, the trace of the root span exported for it.
func TestFindingsOneRoute(t *testing.T) {
	u := newUnit(t)
	u.pl.Observe(stmtEvent("SELECT * FROM orders WHERE id = 1", 120*time.Millisecond, nil))
	ended := u.spans.Ended()
	if len(ended) != 1 || ended[0].Parent().IsValid() {
		t.Fatalf("spans %v, want one root", ended)
	}
	root := ended[0].SpanContext().TraceID().String()
	var slow []map[string]any
	for _, r := range u.logs.records(t) {
		if r["msg"] == "slow query" {
			slow = append(slow, r)
		}
	}
	fs := u.det.Findings(detector.FindingSlowQuery, time.Time{})
	if len(slow) != 1 || slow[0]["trace_id"] != root || len(fs) != 1 || fs[0].TraceID != root {
		t.Errorf("slow-query line %v and finding %+v, want both in the root span's trace %s", slow, fs, root)
	}
	api := httptest.NewRecorder()
	mux := http.NewServeMux()
	admin.RegisterAPI(mux, u.det, nil)
	mux.ServeHTTP(api, httptest.NewRequest(http.MethodGet, "/api/findings?type=slow_query", nil))
	if !strings.Contains(api.Body.String(), `"trace_id": "`+root+`"`) {
		t.Errorf("/api/findings does not name trace %s:\n%s", root, api.Body.String())
	}

	// Ten short connections of one application make churn (ObserveConn).
	for i := range 10 {
		c := conn
		c.ID, c.Application = uint64(100+i), "cron"
		u.pl.Observe(wire.Event{Kind: wire.ConnOpened, Time: t0, Conn: c})
		u.pl.Observe(wire.Event{Kind: wire.ConnClosed, Time: t0.Add(time.Duration(i) * time.Millisecond), Conn: c, Side: wire.SideClient})
	}
	// A transaction left open is found idle by the ticker (Tick).
	u.pl.Observe(stmtEvent("BEGIN", time.Millisecond, func(s *wire.Statement) { s.TxStatus, s.CommandTag = wire.TxInBlock, "BEGIN" }))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); _ = u.pl.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(u.det.Findings(detector.FindingIdleInTransaction, time.Time{})) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-ran

	levels := map[string]string{}
	for _, r := range u.logs.records(t) {
		if r["msg"] == "finding" {
			levels[r["type"].(string)] = r["level"].(string)
		}
	}
	if diff := cmp.Diff(map[string]string{"connection_churn": "INFO", "idle_in_transaction": "WARN"}, levels); diff != "" {
		t.Errorf("finding lines by type (-want +got):\n%s", diff)
	}
	counted := map[string]int64{}
	var rm metricdata.ResourceMetrics
	if err := u.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range sum.DataPoints {
					counted[m.Name] += dp.Value
				}
			}
		}
	}
	for _, name := range []string{"pgtrace.slow_queries", "pgtrace.connection_churn", "pgtrace.idle_in_transaction"} {
		if counted[name] != 1 {
			t.Errorf("%s = %d, want 1 (all counted: %v)", name, counted[name], counted)
		}
	}
}

func TestRunStopsWithContext(t *testing.T) {
	u := newUnit(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.pl.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// BenchmarkObserveStatement is the per-statement cost of the whole
// observation path after the relay: cache-hit fingerprint, detector
// verdict, span (built and queued for a no-op span exporter) and metric
// records. cpu-ns/op is process CPU time per statement (including the
// batch processor's and GC's goroutines), the honest figure on a shared
// machine. Exporting a sampled span to a collector is not counted: see
// export's BenchmarkExportSpans.
func BenchmarkObserveStatement(b *testing.B) {
	for _, bc := range []struct{ name, sampler, text string }{
		{"sampled_child", "parentbased_always_on", "SELECT id, name FROM partners WHERE id = $1 " + tp},
		{"unsampled_root", "parentbased_always_off", "SELECT id, name FROM partners WHERE id = $1"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
			b.Setenv("OTEL_TRACES_SAMPLER", bc.sampler)
			log := slog.New(slog.DiscardHandler)
			exp, err := export.New(context.Background(), export.Config{UpstreamAddr: "db:5432", Logger: log,
				SpanExporter: discardSpans{}, KeepSlowSpans: true, SlowThreshold: time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer exp.Shutdown(context.Background())
			pl := pipeline.New(pipeline.Config{Analyzer: fingerprint.New(fingerprint.Config{}),
				Detector: detector.New(detector.Config{SlowThreshold: time.Second}), Exporter: exp, Logger: log})
			evs := make([]wire.Event, 64)
			for i := range evs {
				evs[i] = stmtEvent(bc.text, time.Millisecond, nil)
				evs[i].Conn.ID = uint64(i % 8)
			}
			pl.Observe(evs[0]) // fill the fingerprint cache
			b.ReportAllocs()
			cpu := processCPU()
			i := 0
			for b.Loop() {
				pl.Observe(evs[i%len(evs)])
				i++
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// discardSpans is a span exporter that reads nothing and keeps nothing
// (export.TransientExporter: statement spans are recycled, as with the
// OTLP exporter).
type discardSpans struct{}

func (discardSpans) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardSpans) Shutdown(context.Context) error                             { return nil }
func (discardSpans) KeepsNoSpans()                                              {}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
