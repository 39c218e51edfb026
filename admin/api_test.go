package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// fakeData fills a detector with a few known statements, relative to now:
// users by id (30 calls, N+1 under one trace), a slow report (2 calls of
// 250 ms and 450 ms), and an insert that failed once.
func fakeData(now time.Time) *detector.Detector {
	d := detector.New(detector.Config{})
	ci := &wire.ConnInfo{ID: 1, ClientAddr: netip.MustParseAddrPort("10.1.2.3:51000"), User: "shop", Database: "shop", Application: "storefront", BackendPID: 4242}
	var parent fingerprint.TraceContext
	copy(parent.TraceID[:], []byte("0123456789abcdef"))
	copy(parent.SpanID[:], []byte("spanspan"))
	parent.Flags = 1
	add := func(q *fingerprint.Query, at time.Time, dur time.Duration, tc fingerprint.TraceContext, failed bool, tenant string) {
		st := &wire.Statement{Start: at, End: at.Add(dur), Outcome: wire.OutcomeComplete, Rows: 1, TxStatus: wire.TxIdle}
		if failed {
			st.Outcome, st.SQLState, st.Rows = wire.OutcomeError, "23505", 0
		}
		d.Observe(&detector.Statement{Stmt: st, Conn: ci, Query: q, Tags: &fingerprint.Tags{Tenant: tenant}, Parent: tc})
	}
	users := &fingerprint.Query{Fingerprint: "1111111111111111", Normalized: "SELECT id, name, email FROM users WHERE id = $1", Summary: "SELECT users", Operation: "SELECT"}
	report := &fingerprint.Query{Fingerprint: "2222222222222222", Normalized: "SELECT date_trunc($1, created_at), sum(total) FROM orders GROUP BY 1 ORDER BY 1", Summary: "SELECT orders", Operation: "SELECT"}
	insert := &fingerprint.Query{Fingerprint: "3333333333333333", Normalized: "INSERT INTO carts (user_id, sku) VALUES ($1, $2)", Summary: "INSERT carts", Operation: "INSERT"}
	start := now.Add(-10 * time.Minute)
	for i := 0; i < 30; i++ {
		add(users, start.Add(time.Duration(i)*time.Millisecond), time.Duration(300+i*20)*time.Microsecond, parent, false, "acme")
	}
	add(report, now.Add(-3*time.Minute), 250*time.Millisecond, fingerprint.TraceContext{}, false, "")
	add(report, now.Add(-1*time.Minute), 450*time.Millisecond, fingerprint.TraceContext{}, false, "")
	add(insert, now.Add(-30*time.Second), 2*time.Millisecond, fingerprint.TraceContext{}, false, "acme")
	add(insert, now.Add(-20*time.Second), 3*time.Millisecond, fingerprint.TraceContext{}, true, "globex")
	return d
}

func fakeConns(now time.Time) func() []wire.ConnState {
	return func() []wire.ConnState {
		return []wire.ConnState{
			{ConnInfo: wire.ConnInfo{ID: 7, ClientAddr: netip.MustParseAddrPort("10.1.2.3:51000"), User: "shop", Database: "shop", Application: "storefront", BackendPID: 4242, OpenedAt: now.Add(-time.Hour)}, State: "idle", Statements: 120},
			{ConnInfo: wire.ConnInfo{ID: 9, ClientAddr: netip.MustParseAddrPort("10.1.2.4:40000"), User: "etl", Database: "warehouse", Application: "nightly-export", BackendPID: 4250, OpenedAt: now.Add(-2 * time.Minute)}, State: "active", StatementStart: now.Add(-1500 * time.Millisecond), Statements: 3},
			{ConnInfo: wire.ConnInfo{ID: 8, User: "admin", Database: "shop", Application: "psql", BackendPID: 4300, OpenedAt: now.Add(-5 * time.Minute)}, State: "idle in transaction", Statements: 2},
		}
	}
}

func newTestAPI(t *testing.T) (*httptest.Server, *detector.Detector) {
	t.Helper()
	now := time.Now()
	d := fakeData(now)
	mux := http.NewServeMux()
	RegisterAPI(mux, d, fakeConns(now))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, d
}

// call does a request and decodes a JSON answer into a generic map.
func call(t *testing.T, method, url string) (int, http.Header, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if ct := resp.Header.Get("Content-Type"); ct == "application/json" && method != http.MethodHead {
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("%s %s: bad JSON %q: %v", method, url, body, err)
		}
	}
	return resp.StatusCode, resp.Header, m
}

func list(t *testing.T, m map[string]any, key string) []map[string]any {
	t.Helper()
	raw, ok := m[key].([]any)
	if !ok {
		t.Fatalf("no %q array in %v", key, m)
	}
	out := make([]map[string]any, len(raw))
	for i, e := range raw {
		out[i] = e.(map[string]any)
	}
	return out
}

func TestQueriesAPI(t *testing.T) {
	srv, _ := newTestAPI(t)
	tests := []struct {
		query      string
		wantStatus int
		wantOrder  []string // fingerprints' first digit
		wantErr    string
	}{
		{"", 200, []string{"2", "1", "3"}, ""},
		{"?sort=total", 200, []string{"2", "1", "3"}, ""},
		{"?sort=calls", 200, []string{"1", "2", "3"}, ""}, // a tie of 2 calls: more total time first
		{"?sort=mean&limit=2", 200, []string{"2", "3"}, ""},
		{"?sort=p99&limit=1", 200, []string{"2"}, ""},
		{"?sort=slowest", 400, nil, "sort"},
		{"?limit=0", 400, nil, "limit"},
		{"?limit=ten", 400, nil, "limit"},
		{"?limit=1000000", 400, nil, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			status, _, m := call(t, "GET", srv.URL+"/api/queries"+tt.query)
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d (%v)", status, tt.wantStatus, m)
			}
			if tt.wantErr != "" {
				if msg, _ := m["error"].(string); !strings.Contains(msg, tt.wantErr) {
					t.Errorf("error %q, want it to mention %q", msg, tt.wantErr)
				}
				return
			}
			qs := list(t, m, "queries")
			var order []string
			for _, q := range qs {
				order = append(order, q["fingerprint"].(string)[:1])
			}
			if strings.Join(order, ",") != strings.Join(tt.wantOrder, ",") {
				t.Errorf("order %v, want %v", order, tt.wantOrder)
			}
		})
	}

	_, _, m := call(t, "GET", srv.URL+"/api/queries")
	qs := list(t, m, "queries")
	for _, key := range []string{"fingerprint", "query", "summary", "calls", "errors", "rows", "total_ms", "mean_ms",
		"p50_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "first_seen", "last_seen", "slowest_trace_ids", "applications", "tenants"} {
		if _, ok := qs[0][key]; !ok {
			t.Errorf("entry lacks %q: %v", key, qs[0])
		}
	}
	report, users, insert := qs[0], qs[1], qs[2]
	if report["calls"].(float64) != 2 || report["total_ms"].(float64) != 700 || report["max_ms"].(float64) != 450 || report["mean_ms"].(float64) != 350 {
		t.Errorf("report stats %v", report)
	}
	if insert["errors"].(float64) != 1 || insert["rows"].(float64) != 1 {
		t.Errorf("insert stats %v", insert)
	}
	if ts := insert["tenants"].([]any); len(ts) != 2 {
		t.Errorf("insert tenants %v", ts)
	}
	if ids := users["slowest_trace_ids"].([]any); len(ids) != 1 || ids[0] != "30313233343536373839616263646566" {
		t.Errorf("slowest trace ids %v", ids)
	}
}

func TestFindingsAPI(t *testing.T) {
	srv, _ := newTestAPI(t)
	tests := []struct {
		query      string
		wantStatus int
		wantTypes  string
	}{
		{"", 200, "slow_query,slow_query,n_plus_one"},
		{"?type=n_plus_one", 200, "n_plus_one"},
		{"?type=slow_query&since=2m", 200, "slow_query"},
		{"?since=" + time.Now().Add(-5*time.Minute).UTC().Format(time.RFC3339), 200, "slow_query,slow_query"},
		{"?type=connection_churn", 200, ""},
		{"?type=bogus", 400, ""},
		{"?since=yesterday", 400, ""},
		{"?since=-5m", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			status, _, m := call(t, "GET", srv.URL+"/api/findings"+tt.query)
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d (%v)", status, tt.wantStatus, m)
			}
			if status != 200 {
				if m["error"] == nil {
					t.Errorf("no JSON error: %v", m)
				}
				return
			}
			var types []string
			for _, f := range list(t, m, "findings") {
				types = append(types, f["type"].(string))
			}
			if strings.Join(types, ",") != tt.wantTypes {
				t.Errorf("types %v, want %s", types, tt.wantTypes)
			}
		})
	}
	// Every listed type is accepted, with its title on /api/finding-types;
	// the error for another names them.
	_, _, ft := call(t, "GET", srv.URL+"/api/finding-types")
	types := list(t, ft, "finding_types")
	if len(types) != len(detector.FindingTypes()) {
		t.Fatalf("/api/finding-types lists %d types, want %d", len(types), len(detector.FindingTypes()))
	}
	for i, fi := range detector.FindingTypes() {
		if types[i]["type"] != string(fi.Type) || types[i]["title"] != fi.Title || len(types[i]) != 2 {
			t.Errorf("type %d = %v, want %s titled %q", i, types[i], fi.Type, fi.Title)
		}
		if status, _, _ := call(t, "GET", srv.URL+"/api/findings?type="+string(fi.Type)); status != 200 {
			t.Errorf("?type=%s: status %d", fi.Type, status)
		}
	}
	if _, _, m := call(t, "GET", srv.URL+"/api/findings?type=bogus"); !strings.Contains(fmt.Sprint(m["error"]), "idle_in_transaction, connection_churn") {
		t.Errorf("error %v does not name the types", m["error"])
	}

	// The N+1 finding: exactly the contract's keys, count 30, the trace id.
	_, _, m := call(t, "GET", srv.URL+"/api/findings?type=n_plus_one")
	f := list(t, m, "findings")[0]
	want := []string{"type", "trace_id", "parent_span_id", "fingerprint", "query", "count", "total_duration_ms", "first_seen", "last_seen", "application", "detail"}
	if len(f) != len(want) {
		t.Errorf("finding has keys %v, want exactly %v", keys(f), want)
	}
	for _, k := range want {
		if _, ok := f[k]; !ok {
			t.Errorf("finding lacks %q", k)
		}
	}
	if f["count"].(float64) != 30 || f["trace_id"] != "30313233343536373839616263646566" || f["application"] != "storefront" {
		t.Errorf("N+1 finding %v", f)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestConnectionsAPI(t *testing.T) {
	srv, _ := newTestAPI(t)
	status, _, m := call(t, "GET", srv.URL+"/api/connections")
	if status != 200 {
		t.Fatalf("status %d", status)
	}
	cs := list(t, m, "connections")
	if len(cs) != 3 {
		t.Fatalf("%d connections, want 3", len(cs))
	}
	// The running statement first, then by id.
	if cs[0]["application"] != "nightly-export" || cs[1]["backend_pid"].(float64) != 4242 || cs[2]["client_addr"] != "" {
		t.Errorf("connections %v", cs)
	}
	if age := cs[0]["statement_age_ms"].(float64); age < 1500 || age > 60_000 {
		t.Errorf("statement age %v ms, want ≥ 1500", age)
	}
	for _, k := range []string{"client_addr", "application", "user", "database", "state", "statement_age_ms", "backend_pid"} {
		if _, ok := cs[0][k]; !ok {
			t.Errorf("connection lacks %q", k)
		}
	}

	// Without a source: an empty list, not null.
	mux := http.NewServeMux()
	RegisterAPI(mux, detector.New(detector.Config{}), nil)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/api/connections", nil))
	if !strings.Contains(rec.Body.String(), `"connections": []`) {
		t.Errorf("body %s", rec.Body)
	}
}

func TestResetAPI(t *testing.T) {
	srv, d := newTestAPI(t)
	status, hdr, m := call(t, "GET", srv.URL+"/api/reset")
	if status != http.StatusMethodNotAllowed || hdr.Get("Allow") != "POST" || m["error"] == nil {
		t.Fatalf("GET /api/reset: %d %v %v", status, hdr, m)
	}
	if len(d.Queries("total", 0)) == 0 {
		t.Fatal("GET must not reset")
	}
	status, _, _ = call(t, "POST", srv.URL+"/api/reset")
	if status != 200 {
		t.Fatalf("POST /api/reset: %d", status)
	}
	_, _, m = call(t, "GET", srv.URL+"/api/queries")
	if qs := list(t, m, "queries"); len(qs) != 0 {
		t.Errorf("%d queries after reset", len(qs))
	}
	_, _, m = call(t, "GET", srv.URL+"/api/findings")
	if fs := list(t, m, "findings"); len(fs) != 0 {
		t.Errorf("%d findings after reset", len(fs))
	}
}

func TestAPIMethods(t *testing.T) {
	srv, _ := newTestAPI(t)
	for _, path := range []string{"/api/queries", "/api/findings", "/api/connections", "/api/stats", "/"} {
		status, hdr, _ := call(t, "POST", srv.URL+path)
		if status != http.StatusMethodNotAllowed || !strings.Contains(hdr.Get("Allow"), "GET") {
			t.Errorf("POST %s: %d, Allow %q", path, status, hdr.Get("Allow"))
		}
		if status, _, _ := call(t, "HEAD", srv.URL+path); status != 200 {
			t.Errorf("HEAD %s: %d", path, status)
		}
	}
	if status, _, _ := call(t, "GET", srv.URL+"/nothing-here"); status != http.StatusNotFound {
		t.Errorf("GET /nothing-here: %d", status)
	}
}

func TestStatsAPI(t *testing.T) {
	srv, _ := newTestAPI(t)
	_, _, m := call(t, "GET", srv.URL+"/api/stats")
	if m["statements"].(float64) != 34 || m["fingerprints"].(float64) != 3 || m["n_plus_one_detected"].(float64) != 1 {
		t.Errorf("stats %v", m)
	}
}

// TestRegisterOnServer checks the routes work on the admin Server itself,
// next to its own /healthz.
func TestRegisterOnServer(t *testing.T) {
	s := &Server{}
	RegisterAPI(s, fakeData(time.Now()), nil)
	for path, want := range map[string]int{"/api/queries": 200, "/": 200, "/healthz": 200} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != want {
			t.Errorf("GET %s: %d, want %d", path, rec.Code, want)
		}
	}
}

// TestResetRefusesCrossSite sends POST /api/reset as a form on another web
// site makes the operator's browser send it: it must not reset anything.
// The page's own request (same origin) and one from curl (no browser
// headers) are served.
func TestResetRefusesCrossSite(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers map[string]string
		want    int
	}{
		{"cross-site form", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site",
			"Content-Type": "application/x-www-form-urlencoded"}, http.StatusForbidden},
		{"cross-origin, older browser", map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
		{"the admin page", map[string]string{"Origin": "http://127.0.0.1:9187", "Sec-Fetch-Site": "same-origin"}, http.StatusOK},
		{"curl", nil, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := fakeData(time.Now())
			srv := &Server{}
			RegisterAPI(srv, d, nil)
			req := httptest.NewRequest("POST", "http://127.0.0.1:9187/api/reset", nil)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("POST /api/reset: %d %s, want %d", rec.Code, strings.TrimSpace(rec.Body.String()), tc.want)
			}
			if reset := d.Stats().Fingerprints == 0; reset != (tc.want == http.StatusOK) {
				t.Errorf("statistics reset: %v", reset)
			}
		})
	}
}

// TestQueriesAPILeavesOutEmptyStatements: statements with nothing to run
// (pgx's "-- ping") are left out of the top queries unless asked for, and
// then labelled; the limit still holds.
func TestQueriesAPILeavesOutEmptyStatements(t *testing.T) {
	now := time.Now()
	d := fakeData(now)
	ci := &wire.ConnInfo{ID: 2, User: "shop", Database: "shop", Application: "storefront"}
	// As the pipeline records them: summary and operation EMPTY, no text.
	empty := &fingerprint.Query{Fingerprint: "0000000000000002", Summary: "EMPTY", Operation: "EMPTY"}
	for i := range 100 {
		at := now.Add(-time.Minute + time.Duration(i)*time.Millisecond)
		d.Observe(&detector.Statement{Stmt: &wire.Statement{Start: at, End: at.Add(time.Second), Outcome: wire.OutcomeComplete}, Conn: ci, Query: empty, Tags: &fingerprint.Tags{}})
	}
	mux := http.NewServeMux()
	RegisterAPI(mux, d, nil)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	fingerprints := func(query string) ([]string, []map[string]any) {
		t.Helper()
		status, _, m := call(t, "GET", srv.URL+"/api/queries"+query)
		if status != 200 {
			t.Fatalf("GET /api/queries%s: %d %v", query, status, m)
		}
		qs := list(t, m, "queries")
		var fps []string
		for _, q := range qs {
			fps = append(fps, q["fingerprint"].(string))
		}
		return fps, qs
	}
	for _, tt := range []struct {
		query string
		want  string
	}{
		{"", "2222222222222222,1111111111111111,3333333333333333"},
		{"?sort=calls&limit=2", "1111111111111111,2222222222222222"},
		{"?limit=1", "2222222222222222"},
		{"?empty=false", "2222222222222222,1111111111111111,3333333333333333"},
		{"?empty=true&limit=2", "0000000000000002,2222222222222222"},
	} {
		if fps, _ := fingerprints(tt.query); strings.Join(fps, ",") != tt.want {
			t.Errorf("/api/queries%s = %v, want %s", tt.query, fps, tt.want)
		}
	}
	_, qs := fingerprints("?empty=true&limit=1")
	if qs[0]["query"] != EmptyStatementLabel || qs[0]["summary"] != "EMPTY" || qs[0]["calls"] != float64(100) {
		t.Errorf("empty statements entry = %v, want the label %q", qs[0], EmptyStatementLabel)
	}
	if status, _, m := call(t, "GET", srv.URL+"/api/queries?empty=yes-please"); status != 400 {
		t.Errorf("?empty=yes-please: %d %v, want 400", status, m)
	}
}
