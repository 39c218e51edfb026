package pipeline_test

// Issue 5, "tests with real parts": every finding the detector can make,
// provoked by real clients (pgx, through the relay) against a real
// PostgreSQL, and read back from the detector, the admin API and the spans.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dotmac/pgtrace/admin"
	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/dotmac/pgtrace/internal/testproxy"
)

// detectWait bounds every wait for the asynchronous stages (the relay's
// event queue, the detector's ticker, span export). It is generous for a
// loaded machine; a passing run waits far less.
const detectWait = 15 * time.Second

// detectProxy is the relay with the whole pipeline behind it, the detector
// reachable and spans recorded in memory.
type detectProxy struct {
	*testproxy.Proxy
	pg    *pgtest.Server
	spans *tracetest.SpanRecorder
}

// startDetectProxy starts a relay in front of the test PostgreSQL with the
// detector configured by dc and the pipeline's ticker every tick. Spans go
// to an in-memory recorder only: OTLP is off.
func startDetectProxy(t *testing.T, dc detector.Config, tick time.Duration) *detectProxy {
	t.Helper()
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED"} {
		t.Setenv(k, "")
	}
	pg := pgtest.Start(t)
	spans := tracetest.NewSpanRecorder()
	p := testproxy.Start(t, testproxy.Options{Upstream: pg.Addr(), Detector: dc, TickInterval: tick,
		Export: export.Config{SlowThreshold: dc.SlowThreshold, KeepSlowSpans: true, SpanProcessor: spans}})
	return &detectProxy{Proxy: p, pg: pg, spans: spans}
}

// connect opens a pgx connection through the proxy with application_name
// app ("" for pgx's default, none).
func (p *detectProxy) connect(t *testing.T, app string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(pgtest.DSNAt(p.Addr, p.pg.User, p.pg.Password, p.pg.Database))
	if err != nil {
		t.Fatal(err)
	}
	if app != "" {
		cfg.RuntimeParams["application_name"] = app
	}
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// observed waits until the detector has seen at least n statements. The
// relay delivers events in order on one dispatcher goroutine, so once the
// last statement a test sent is counted, every earlier one has been judged:
// an assertion that a finding is absent is then meaningful.
func (p *detectProxy) observed(t *testing.T, n uint64) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("the detector to see %d statements", n), func() bool {
		return p.Detector.Stats().Statements >= n
	})
}

// findings waits until the detector holds findings of typ for which match
// holds, and returns them.
func (p *detectProxy) findings(t *testing.T, typ detector.FindingType, match func(detector.Finding) bool) []detector.Finding {
	t.Helper()
	var got []detector.Finding
	waitUntil(t, fmt.Sprintf("a matching %s finding", typ), func() bool {
		got = got[:0]
		for _, f := range p.Detector.Findings(typ, time.Time{}) {
			if match(f) {
				got = append(got, f)
			}
		}
		return len(got) > 0
	}, func() string { return fmt.Sprintf("findings: %+v", p.Detector.Findings("", time.Time{})) })
	return got
}

// endedSpans waits until at least n ended spans satisfy match, and returns
// them.
func (p *detectProxy) endedSpans(t *testing.T, n int, match func(sdktrace.ReadOnlySpan) bool) []sdktrace.ReadOnlySpan {
	t.Helper()
	var got []sdktrace.ReadOnlySpan
	waitUntil(t, fmt.Sprintf("%d matching spans", n), func() bool {
		got = got[:0]
		for _, s := range p.spans.Ended() {
			if match(s) {
				got = append(got, s)
			}
		}
		return len(got) >= n
	})
	return got
}

// waitUntil polls cond until it holds or detectWait passes; then it fails
// the test, with the output of the optional describe functions.
func waitUntil(t *testing.T, what string, cond func() bool, describe ...func() string) {
	t.Helper()
	deadline := time.Now().Add(detectWait)
	for !cond() {
		if time.Now().After(deadline) {
			var more []string
			for _, d := range describe {
				more = append(more, d())
			}
			t.Fatalf("waited %v for %s, in vain. %s", detectWait, what, strings.Join(more, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lookupSQL is the loop body of an N+1: one row by id. Every execution has
// the same fingerprint whatever the id.
const lookupSQL = "SELECT relname FROM pg_class WHERE oid = $1"

// lookups runs lookupSQL once per traceparent in tps (a trailing
// sqlcommenter comment; "" for none), each with a different id, in mode
// (QueryExecModeExec sends the comment in the same batch as the execution;
// the simple protocol sends the id as a literal).
func lookups(t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode, tps ...string) {
	t.Helper()
	for i, tp := range tps {
		sql := lookupSQL
		if tp != "" {
			sql += " /*traceparent='" + tp + "'*/"
		}
		if _, err := c.Exec(context.Background(), sql, mode, 1247+i); err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
	}
}

// lookupQuery is the analysis of lookupSQL, what the findings report.
func lookupQuery() *fingerprint.Query {
	res := fingerprint.New(fingerprint.Config{}).Analyze(lookupSQL)
	return res.Query(0)
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func spanAttr(s sdktrace.ReadOnlySpan, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func eventNamed(s sdktrace.ReadOnlySpan, name string) (sdktrace.Event, bool) {
	for _, e := range s.Events() {
		if e.Name == name {
			return e, true
		}
	}
	return sdktrace.Event{}, false
}

func TestDetectNPlusOneUnderOneParentSpan(t *testing.T) {
	p := startDetectProxy(t, detector.Config{NPlusOneThreshold: 5, SlowThreshold: 10 * time.Second}, 0)
	c := p.connect(t, "shop")
	header, trace, parent := newTraceparent()
	lookups(t, c, pgx.QueryExecModeExec, repeat(header, 10)...)
	p.observed(t, 10)

	want := lookupQuery()
	found := p.findings(t, detector.FindingNPlusOne, func(f detector.Finding) bool { return f.Count == 10 })
	all := p.Detector.Findings(detector.FindingNPlusOne, time.Time{})
	if len(all) != 1 {
		t.Fatalf("%d n_plus_one findings, want exactly 1: %+v", len(all), all)
	}
	f := found[0]
	if f.TraceID != trace || f.ParentSpanID != parent || f.Fingerprint != want.Fingerprint ||
		f.Query != want.Normalized || f.Application != "shop" {
		t.Errorf("finding = %+v\nwant trace %s, parent %s, fingerprint %s, query %q, application shop",
			f, trace, parent, want.Fingerprint, want.Normalized)
	}
	if f.TotalDurationMs <= 0 || f.FirstSeen.IsZero() || f.LastSeen.Before(f.FirstSeen) || !strings.Contains(f.Detail, parent) {
		t.Errorf("finding times/detail = %v ms, %v → %v, %q", f.TotalDurationMs, f.FirstSeen, f.LastSeen, f.Detail)
	}
	if strings.Contains(fmt.Sprint(f), "1250") {
		t.Errorf("a bind value leaked into the finding: %+v", f)
	}

	// Spans: the fifth execution crosses the threshold and says so with an
	// event; the ones before it are not marked, the ones after it are.
	spans := p.endedSpans(t, 10, func(s sdktrace.ReadOnlySpan) bool {
		return s.SpanContext().TraceID().String() == trace && s.Name() == want.Summary
	})
	slices.SortFunc(spans, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	for i, s := range spans {
		if s.Parent().SpanID().String() != parent {
			t.Errorf("span %d parent = %s, want %s", i, s.Parent().SpanID(), parent)
		}
		marked, _ := spanAttr(s, "pgtrace.n_plus_one")
		ev, hasEvent := eventNamed(s, "pgtrace.n_plus_one")
		switch {
		case i < 4:
			if marked.AsBool() || hasEvent {
				t.Errorf("span %d (below the threshold) is marked n_plus_one", i)
			}
		case i == 4:
			if !marked.AsBool() || !hasEvent {
				t.Errorf("crossing span: pgtrace.n_plus_one = %v, event %v; want true and an event", marked.Emit(), hasEvent)
			}
			for _, kv := range ev.Attributes {
				if kv.Key == "pgtrace.n_plus_one.count" && kv.Value.AsInt64() != 5 {
					t.Errorf("event count = %d, want 5", kv.Value.AsInt64())
				}
			}
		default:
			if !marked.AsBool() || hasEvent {
				t.Errorf("span %d after detection: pgtrace.n_plus_one = %v, event %v; want true and no second event", i, marked.Emit(), hasEvent)
			}
		}
	}

	// The admin API serves the same finding with exactly the documented keys.
	mux := http.NewServeMux()
	admin.RegisterAPI(mux, p.Detector, p.Server.Connections)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/api/findings?type=n_plus_one")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Findings []map[string]any `json:"findings"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/findings: %d, %v", resp.StatusCode, err)
	}
	if len(body.Findings) != 1 {
		t.Fatalf("/api/findings has %d n_plus_one findings, want 1: %v", len(body.Findings), body.Findings)
	}
	api := body.Findings[0]
	var gotKeys []string
	for k := range api {
		gotKeys = append(gotKeys, k)
	}
	slices.Sort(gotKeys)
	wantKeys := []string{"application", "count", "detail", "fingerprint", "first_seen", "last_seen",
		"parent_span_id", "query", "total_duration_ms", "trace_id", "type"}
	if d := cmp.Diff(wantKeys, gotKeys); d != "" {
		t.Errorf("/api/findings keys (-want +got):\n%s", d)
	}
	if api["type"] != "n_plus_one" || api["trace_id"] != trace || api["parent_span_id"] != parent || api["count"] != float64(10) {
		t.Errorf("/api/findings entry = %v", api)
	}
}

func TestDetectNoNPlusOne(t *testing.T) {
	for _, tc := range []struct {
		name string
		tps  func() []string
	}{
		{"different trace ids", func() []string {
			var tps []string
			for range 10 {
				h, _, _ := newTraceparent()
				tps = append(tps, h)
			}
			return tps
		}},
		{"under the threshold", func() []string {
			h, _, _ := newTraceparent()
			return repeat(h, 4)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startDetectProxy(t, detector.Config{NPlusOneThreshold: 5, SlowThreshold: 10 * time.Second}, 0)
			c := p.connect(t, "")
			tps := tc.tps()
			lookups(t, c, pgx.QueryExecModeExec, tps...)
			p.observed(t, uint64(len(tps)))
			if f := p.Detector.Findings(detector.FindingNPlusOne, time.Time{}); len(f) != 0 {
				t.Errorf("n_plus_one findings: %+v, want none", f)
			}
			// The statements were judged, and not as N+1s.
			q := p.Detector.Queries(detector.SortCalls, 1)
			if len(q) != 1 || q[0].Calls != int64(len(tps)) {
				t.Errorf("queries = %+v, want one fingerprint with %d calls", q, len(tps))
			}
			for _, s := range p.spans.Ended() {
				if v, _ := spanAttr(s, "pgtrace.n_plus_one"); v.AsBool() {
					t.Errorf("span %s marked n_plus_one", s.Name())
				}
			}
		})
	}
}

// TestDetectNPlusOneAcrossParentSpans: a driver that makes a span per query
// gives every execution its own parent; the trace still holds one N+1. The
// simple protocol sends each id as a literal, which the fingerprint hides.
func TestDetectNPlusOneAcrossParentSpans(t *testing.T) {
	p := startDetectProxy(t, detector.Config{NPlusOneThreshold: 5, SlowThreshold: 10 * time.Second}, 0)
	c := p.connect(t, "")
	_, trace, _ := newTraceparent()
	var tps, parents []string
	for range 7 {
		_, _, span := newTraceparent()
		tps = append(tps, fmt.Sprintf("00-%s-%s-01", trace, span))
		parents = append(parents, span)
	}
	lookups(t, c, pgx.QueryExecModeSimpleProtocol, tps...)
	p.observed(t, 7)
	p.findings(t, detector.FindingNPlusOne, func(f detector.Finding) bool { return f.Count == 7 })
	all := p.Detector.Findings(detector.FindingNPlusOne, time.Time{})
	if len(all) != 1 {
		t.Fatalf("%d n_plus_one findings, want 1: %+v", len(all), all)
	}
	f := all[0]
	if f.TraceID != trace || f.ParentSpanID != parents[0] {
		t.Errorf("finding trace %s parent %s, want %s and the first parent %s", f.TraceID, f.ParentSpanID, trace, parents[0])
	}
	for _, id := range parents {
		if !strings.Contains(f.Detail, id) {
			t.Errorf("detail %q does not name parent %s", f.Detail, id)
		}
	}
}

// TestDetectNPlusOneConnectionFallback: without trace context, a loop inside
// one transaction is found on its connection.
func TestDetectNPlusOneConnectionFallback(t *testing.T) {
	p := startDetectProxy(t, detector.Config{NPlusOneThreshold: 5, SlowThreshold: 10 * time.Second, NPlusOneWindow: time.Minute}, 0)
	c := p.connect(t, "batch-job")
	ctx := context.Background()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if _, err := tx.Exec(ctx, lookupSQL, pgx.QueryExecModeExec, 1247+i); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	p.observed(t, 8) // BEGIN, six lookups, COMMIT
	f := p.findings(t, detector.FindingNPlusOne, func(f detector.Finding) bool { return f.Count == 6 })[0]
	if f.TraceID != "" || f.ParentSpanID != "" || f.Application != "batch-job" ||
		!strings.Contains(f.Detail, "within one transaction") {
		t.Errorf("fallback finding = %+v, want no trace, application batch-job, \"within one transaction\"", f)
	}
	if n := len(p.Detector.Findings(detector.FindingNPlusOne, time.Time{})); n != 1 {
		t.Errorf("%d n_plus_one findings, want 1", n)
	}
}

func TestDetectSlowQuery(t *testing.T) {
	p := startDetectProxy(t, detector.Config{SlowThreshold: 150 * time.Millisecond}, 0)
	c := p.connect(t, "reports")
	header, trace, parent := newTraceparent()
	ctx := context.Background()
	if _, err := c.Exec(ctx, "SELECT pg_sleep(0.01) /*traceparent='"+header+"'*/", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT pg_sleep(0.2) /*traceparent='"+header+"'*/", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	p.observed(t, 2)
	found := p.findings(t, detector.FindingSlowQuery, func(detector.Finding) bool { return true })
	if len(found) != 1 {
		t.Fatalf("%d slow_query findings, want 1 (pg_sleep(0.01) is fast): %+v", len(found), found)
	}
	f := found[0]
	if f.TraceID != trace || f.ParentSpanID != parent || f.Application != "reports" || f.Count != 1 ||
		f.TotalDurationMs < 200 || !strings.Contains(f.Query, "pg_sleep") || strings.Contains(f.Query, "0.2") {
		t.Errorf("slow finding = %+v, want trace %s, parent %s, ≥ 200 ms, normalized text", f, trace, parent)
	}

	spans := p.endedSpans(t, 2, func(s sdktrace.ReadOnlySpan) bool { return s.SpanContext().TraceID().String() == trace })
	slow := 0
	for _, s := range spans {
		marked, _ := spanAttr(s, "pgtrace.slow")
		_, ev := eventNamed(s, "pgtrace.slow_query")
		long := s.EndTime().Sub(s.StartTime()) >= 150*time.Millisecond
		if marked.AsBool() != long || ev != long {
			t.Errorf("span of %v: pgtrace.slow = %v, event %v", s.EndTime().Sub(s.StartTime()), marked.Emit(), ev)
		}
		if long {
			slow++
		}
	}
	if slow != 1 {
		t.Errorf("%d slow spans, want 1", slow)
	}
}

func TestDetectIdleInTransaction(t *testing.T) {
	p := startDetectProxy(t, detector.Config{IdleInTxThreshold: 300 * time.Millisecond}, 50*time.Millisecond)
	c := p.connect(t, "idler")
	ctx := context.Background()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, lookupSQL, pgx.QueryExecModeExec, 1259); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	f := p.findings(t, detector.FindingIdleInTransaction, func(f detector.Finding) bool { return f.Application == "idler" })[0]
	if waited := time.Since(began); waited < 300*time.Millisecond {
		t.Errorf("idle_in_transaction reported after %v, before the 300ms threshold", waited)
	}
	if f.TotalDurationMs < 300 || f.Query != lookupQuery().Normalized {
		t.Errorf("idle finding = %+v, want ≥ 300 ms idle after the lookup", f)
	}
}

func TestDetectConnectionChurn(t *testing.T) {
	const n = 6
	p := startDetectProxy(t, detector.Config{ChurnThreshold: n, ChurnWindow: time.Minute}, 50*time.Millisecond)
	ctx := context.Background()
	// A long-lived connection of another application, open throughout, is
	// not churn.
	steady := p.connect(t, "steady")
	for range n {
		c := p.connect(t, "churny")
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := steady.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatal(err)
	}
	f := p.findings(t, detector.FindingConnectionChurn, func(f detector.Finding) bool { return f.Application == "churny" })[0]
	if f.Count < n {
		t.Errorf("churn finding count = %d, want ≥ %d: %+v", f.Count, n, f)
	}
	for _, f := range p.Detector.Findings(detector.FindingConnectionChurn, time.Time{}) {
		if f.Application != "churny" {
			t.Errorf("churn finding for %q: %+v", f.Application, f)
		}
	}
}
