package export

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
)

func setMap(s attribute.Set) map[string]any { return attrMap(s.ToSlice()) }

func TestStatementMetrics(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{KeepSlowSpans: true})
	s1 := stmt(qSelect, t0, 2*time.Millisecond, parentTC)
	s1.Tags = &fingerprint.Tags{Tenant: "acme"}
	h.e.Statement(s1, detector.Verdict{})
	s2 := stmt(qSelect, t0, 200*time.Millisecond, parentTC)
	s2.Tags = &fingerprint.Tags{Tenant: "acme"}
	h.e.Statement(s2, detector.Verdict{Slow: true, NPlusOne: true, NPlusOneDetected: true, NPlusOneCount: 5,
		Findings: []detector.Finding{{Type: detector.FindingSlowQuery}, {Type: detector.FindingNPlusOne}}})
	h.e.Statement(failed(stmt(qInsert, t0, time.Millisecond, fingerprint.TraceContext{}), "23505", "dup"), detector.Verdict{})

	m := h.metrics(t)
	hist := m["db.client.operation.duration"].Data.(metricdata.Histogram[float64])
	if unit := m["db.client.operation.duration"].Unit; unit != "s" {
		t.Errorf("unit = %q, want s", unit)
	}
	got := map[string]uint64{}
	for _, dp := range hist.DataPoints {
		a := setMap(dp.Attributes)
		got[fmt.Sprint(a["db.query.summary"], "/", a["error.type"])] = dp.Count
		if cmp.Diff(durationBuckets, dp.Bounds) != "" {
			t.Errorf("bounds = %v, want %v", dp.Bounds, durationBuckets)
		}
		if a["db.query.summary"] == "SELECT users" {
			want := map[string]any{"db.system.name": "postgresql", "db.namespace": "shop", "db.operation.name": "SELECT",
				"db.collection.name": "users", "db.query.summary": "SELECT users", "server.address": "db.internal",
				"server.port": int64(5432), "tenant.id": "acme", "pgtrace.application": "api"}
			if diff := cmp.Diff(want, a); diff != "" {
				t.Errorf("SELECT attributes (-want +got):\n%s", diff)
			}
			// Both statements had sampled spans: their ids are exemplars.
			if len(dp.Exemplars) == 0 {
				t.Errorf("no exemplars on a histogram point recorded with sampled spans")
			}
			for _, ex := range dp.Exemplars {
				if trace.TraceID(ex.TraceID) != trace.TraceID(parentTC.TraceID) {
					t.Errorf("exemplar trace id %x, want %x", ex.TraceID, parentTC.TraceID)
				}
			}
		}
		if a["db.query.summary"] == "INSERT orders" && (a["db.response.status_code"] != "23505" || a["error.type"] != "23505") {
			t.Errorf("failed INSERT attributes %v lack the SQLSTATE", a)
		}
	}
	if diff := cmp.Diff(map[string]uint64{"SELECT users/<nil>": 2, "INSERT orders/23505": 1}, got); diff != "" {
		t.Errorf("duration counts (-want +got):\n%s", diff)
	}

	rows := m["db.client.response.returned_rows"].Data.(metricdata.Histogram[int64])
	if len(rows.DataPoints) != 1 || rows.DataPoints[0].Count != 2 || rows.DataPoints[0].Sum != 6 {
		t.Errorf("returned_rows = %+v, want the two SELECTs' 3 rows each", rows.DataPoints)
	}
	for _, name := range []string{"pgtrace.slow_queries", "db.n_plus_one.detected"} {
		sum := m[name].Data.(metricdata.Sum[int64])
		if len(sum.DataPoints) != 1 || sum.DataPoints[0].Value != 1 || setMap(sum.DataPoints[0].Attributes)["db.query.summary"] != "SELECT users" {
			t.Errorf("%s = %+v, want 1 for SELECT users", name, sum.DataPoints)
		}
	}
}

func TestObservableMetrics(t *testing.T) {
	clearOTelEnv(t)
	var dropped uint64 = 17
	h := newHarness(t, Config{
		DroppedEvents:       func() uint64 { return dropped },
		ForgottenStatements: func() uint64 { return 4 },
		AnalyzerStats:       func() fingerprint.Stats { return fingerprint.Stats{Hits: 90, Misses: 10, InvalidTraceparents: 3} },
		Connections: func() []wire.ConnState {
			return []wire.ConnState{{State: "idle"}, {State: "active"}, {State: "idle in transaction"}, {State: "idle"}, {State: "idle"}}
		},
	})
	m := h.metrics(t)
	sum := func(name string) int64 {
		t.Helper()
		d, ok := m[name].Data.(metricdata.Sum[int64])
		if !ok || len(d.DataPoints) != 1 {
			t.Fatalf("%s = %+v, want one point", name, m[name].Data)
		}
		return d.DataPoints[0].Value
	}
	got := map[string]int64{}
	for _, n := range []string{"pgtrace.events.dropped", "pgtrace.fingerprint.cache.hits", "pgtrace.fingerprint.cache.misses",
		"pgtrace.traceparent.invalid", "pgtrace.spans.dropped", "pgtrace.prepared_statements.forgotten"} {
		got[n] = sum(n)
	}
	want := map[string]int64{"pgtrace.events.dropped": 17, "pgtrace.prepared_statements.forgotten": 4, "pgtrace.fingerprint.cache.hits": 90,
		"pgtrace.fingerprint.cache.misses": 10, "pgtrace.traceparent.invalid": 3, "pgtrace.spans.dropped": 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	states := map[string]int64{}
	for _, dp := range m["db.client.connection.count"].Data.(metricdata.Sum[int64]).DataPoints {
		states[setMap(dp.Attributes)["db.client.connection.state"].(string)] = dp.Value
	}
	if diff := cmp.Diff(map[string]int64{"idle": 3, "used": 2}, states); diff != "" {
		t.Errorf("connection count (-want +got):\n%s", diff)
	}
}

func TestCardinalityLimit(t *testing.T) {
	clearOTelEnv(t)
	const limit = 5
	h := newHarness(t, Config{CardinalityLimit: limit})
	for i := range 50 {
		q := query("SELECT", fmt.Sprintf("t%d", i), fmt.Sprintf("SELECT t%d", i), fmt.Sprintf("%016x", i))
		h.e.Statement(stmt(q, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
	}
	hist := h.metrics(t)["db.client.operation.duration"].Data.(metricdata.Histogram[float64])
	if len(hist.DataPoints) > limit {
		t.Errorf("%d attribute sets, want at most %d", len(hist.DataPoints), limit)
	}
	var total uint64
	var overflow bool
	for _, dp := range hist.DataPoints {
		total += dp.Count
		if v, ok := dp.Attributes.Value("otel.metric.overflow"); ok && v.AsBool() {
			overflow = true
		}
	}
	if !overflow || total != 50 {
		t.Errorf("overflow set present = %v, total count %d; want an overflow set and all 50 counted", overflow, total)
	}
}

type sqlStateErr string

func (e sqlStateErr) Error() string {
	return "FATAL: password authentication failed (SQLSTATE " + string(e) + ")"
}
func (e sqlStateErr) SQLState() string { return string(e) }

func TestConnectionSpansAndMetrics(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{KeepSlowSpans: true})
	at := t0.Add(time.Second)
	h.e.Conn(wire.Event{Kind: wire.ConnOpened, Time: t0, Conn: testConn})
	h.e.Conn(wire.Event{Kind: wire.ConnAuthenticated, Time: at, Conn: testConn, ConnectDuration: 3 * time.Millisecond})
	bad := testConn
	bad.ID, bad.BackendPID, bad.Application = 8, 0, "psql"
	h.e.Conn(wire.Event{Kind: wire.ConnAuthFailed, Time: at, Conn: bad, ConnectDuration: time.Millisecond,
		Err: fmt.Errorf("upstream login: %w", sqlStateErr("28P01"))})

	spans := h.spans.Ended()
	if len(spans) != 2 {
		t.Fatalf("got %d spans, want 2 connect spans", len(spans))
	}
	ok, fail := spans[0], spans[1]
	if ok.Name() != "connect" || ok.SpanKind() != trace.SpanKindClient || ok.Parent().IsValid() {
		t.Errorf("connect span %s kind %v parent %v, want a root CLIENT span called connect", ok.Name(), ok.SpanKind(), ok.Parent())
	}
	if !ok.StartTime().Equal(at.Add(-3*time.Millisecond)) || !ok.EndTime().Equal(at) {
		t.Errorf("connect span %v…%v, want the connect duration ending at %v", ok.StartTime(), ok.EndTime(), at)
	}
	wantOK := map[string]any{"db.system.name": "postgresql", "db.system": "postgresql", "db.namespace": "shop", "db.name": "shop",
		"pgtrace.connection.id": int64(7), "pgtrace.auth.outcome": "success", "server.address": "db.internal", "server.port": int64(5432),
		"client.address": "10.1.2.3", "client.port": int64(51000), "pgtrace.application": "api",
		"pgtrace.backend.pid": int64(4242), "db.user": "app"}
	if diff := cmp.Diff(wantOK, attrMap(ok.Attributes())); diff != "" {
		t.Errorf("connect attributes (-want +got):\n%s", diff)
	}
	fa := attrMap(fail.Attributes())
	if fa["error.type"] != "28P01" || fa["pgtrace.auth.outcome"] != "failure" || fail.Status().Code.String() != "Error" ||
		!strings.Contains(fail.Status().Description, "password authentication failed") {
		t.Errorf("failed connect: attrs %v status %+v", fa, fail.Status())
	}

	m := h.metrics(t)
	ct := m["db.client.connection.create_time"].Data.(metricdata.Histogram[float64])
	if len(ct.DataPoints) != 1 || ct.DataPoints[0].Count != 1 || ct.DataPoints[0].Sum != 0.003 {
		t.Errorf("create_time = %+v, want one 3ms connect", ct.DataPoints)
	}
	opened := map[string]int64{}
	for _, dp := range m["pgtrace.connections.opened"].Data.(metricdata.Sum[int64]).DataPoints {
		a := setMap(dp.Attributes)
		opened[fmt.Sprint(a["pgtrace.application"], "/", a["pgtrace.auth.outcome"])] = dp.Value
	}
	if diff := cmp.Diff(map[string]int64{"api/success": 1, "psql/failure": 1}, opened); diff != "" {
		t.Errorf("connections opened (-want +got):\n%s", diff)
	}
	if !errors.As(fmt.Errorf("x: %w", sqlStateErr("1")), new(interface{ SQLState() string })) {
		t.Fatal("test error type lost its SQLState")
	}
}

// TestFindingCounters: a finding made outside a statement is counted by
// application in its type's counter (detector.FindingTypes); a type
// without a counter of its own in pgtrace.findings, with its type, from a
// statement's verdict with the statement's attributes.
func TestFindingCounters(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{})
	const newType = detector.FindingSessionState
	if fi, ok := detector.LookupFindingType(newType); !ok || fi.Counter.Name != "" {
		t.Fatalf("%s: %+v, %v: the test needs a type without a counter of its own", newType, fi, ok)
	}
	h.e.Finding(detector.Finding{Type: detector.FindingIdleInTransaction, Application: "api"})
	h.e.Finding(detector.Finding{Type: detector.FindingIdleInTransaction, Application: "api"})
	h.e.Finding(detector.Finding{Type: detector.FindingConnectionChurn, Application: "cron"})
	h.e.Finding(detector.Finding{Type: newType, Application: "api"})
	h.e.Statement(stmt(qSelect, t0, time.Millisecond, fingerprint.TraceContext{}),
		detector.Verdict{Findings: []detector.Finding{{Type: newType}}})
	m := h.metrics(t)
	if _, ok := m["pgtrace.slow_queries"]; ok {
		t.Errorf("a slow query was counted; none was found")
	}
	for name, want := range map[string]int64{"pgtrace.idle_in_transaction": 2, "pgtrace.connection_churn": 1} {
		dps := m[name].Data.(metricdata.Sum[int64]).DataPoints
		if len(dps) != 1 || dps[0].Value != want {
			t.Errorf("%s = %+v, want %d", name, dps, want)
		}
	}
	got := map[string]int64{}
	for _, dp := range m["pgtrace.findings"].Data.(metricdata.Sum[int64]).DataPoints {
		a := setMap(dp.Attributes)
		got[fmt.Sprint(a["pgtrace.finding.type"], "/", a["pgtrace.application"], "/", a["db.query.summary"])] = dp.Value
	}
	want := map[string]int64{string(newType) + "/api/<nil>": 1, string(newType) + "/api/SELECT users": 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pgtrace.findings (-want +got):\n%s", diff)
	}
}

func TestMetricsHandler(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{Version: "1.2.3"})
	h.e.Statement(stmt(qSelect, t0, 2*time.Millisecond, fingerprint.TraceContext{}), slowVerdict)
	body := scrape(t, h.e)
	for _, want := range []string{
		`db_client_operation_duration_seconds_bucket{`,
		`db_query_summary="SELECT users"`,
		`le="0.00025"`,
		`pgtrace_slow_queries_total{`,
		`service_name="pgtrace"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// scrape GETs /metrics from e's handler and fails unless it answers 200.
func scrape(t *testing.T, e *Exporter) string {
	t.Helper()
	rec := httptest.NewRecorder()
	e.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 {
		t.Fatalf("GET /metrics: status %d: %s", rec.Code, body)
	}
	return string(body)
}

// TestMetricsInvalidUTF8 records statements whose summary, collection,
// database, tenant and application carry bytes that are not UTF-8 (a
// SQL_ASCII database, or a query PostgreSQL then rejects): /metrics must
// still serve every series, with U+FFFD for the bad bytes.
func TestMetricsInvalidUTF8(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{Version: "1.2.3"})
	h.e.Statement(stmt(qSelect, t0, 2*time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
	bad := stmt(query("SELECT", "caf\xe9", "SELECT caf\xe9", "00000000000000aa"), t0, time.Millisecond, fingerprint.TraceContext{})
	conn := *bad.Conn
	conn.Database, conn.Application = "d\xffb", "app\xfe"
	bad.Conn = &conn
	bad.Tags = &fingerprint.Tags{Tenant: "t\xff"}
	h.e.Statement(bad, slowVerdict)
	h.e.Statement(failed(stmt(query("SELECT", "caf\xe9", "SELECT caf\xe9", "00000000000000aa"), t0, time.Millisecond, fingerprint.TraceContext{}), "22021", "invalid byte sequence"), detector.Verdict{})
	h.e.Conn(wire.Event{Kind: wire.ConnAuthenticated, Time: t0, Conn: conn, ConnectDuration: time.Millisecond})

	body := scrape(t, h.e)
	for _, want := range []string{
		`db_query_summary="SELECT users"`,
		`db_query_summary="SELECT caf` + "\uFFFD" + `"`,
		`db_collection_name="caf` + "\uFFFD" + `"`,
		`db_namespace="d` + "\uFFFD" + `b"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !utf8.ValidString(body) {
		t.Errorf("/metrics carries invalid UTF-8")
	}
}
