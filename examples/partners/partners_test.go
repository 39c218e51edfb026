package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/dotmac/pgtrace/observe"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// freshDatabase creates an empty database on the test server for one test
// and returns its DSN.
func freshDatabase(t *testing.T) string {
	t.Helper()
	srv := pgtest.Start(t)
	admin, err := sql.Open("pgx", srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	name := "partners_" + strings.ToLower(rand.Text()[:10])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.Exec("DROP DATABASE " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("drop database: %v", err)
		}
	})
	u, err := url.Parse(srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

type testService struct {
	handler http.Handler
	spans   *tracetest.SpanRecorder
	db      *sql.DB
}

func newTestService(t *testing.T) *testService {
	t.Helper()
	db, err := openDB(freshDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx := context.Background()
	for range 2 { // idempotent
		if err := migrate(ctx, db); err != nil {
			t.Fatal(err)
		}
	}
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	t.Cleanup(func() { _ = tp.Shutdown(ctx); _ = mp.Shutdown(ctx) })
	opts := []observe.Option{observe.WithTracerProvider(tp), observe.WithMeterProvider(mp)}
	s := newServer(db, slog.New(observe.NewLogHandler(slog.NewJSONHandler(io.Discard, nil))), observe.NewBusinessMetrics(opts...))
	return &testService{handler: s.handler(opts...), spans: spans, db: db}
}

func (s *testService) do(t *testing.T, method, path, tenant, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if tenant != "" {
		req.Header.Set("x-tenant-id", tenant)
	}
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	return rec
}

func decode[T any](t *testing.T, rec *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	return v
}

func TestReportsAgree(t *testing.T) {
	s := newTestService(t)
	one := s.do(t, "GET", "/partners/report", "acme", "")
	many := s.do(t, "GET", "/partners/report-n-plus-one", "acme", "")
	if one.Code != 200 || many.Code != 200 {
		t.Fatalf("status %d and %d: %s %s", one.Code, many.Code, one.Body, many.Body)
	}
	a, b := decode[[]PartnerSummary](t, one), decode[[]PartnerSummary](t, many)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("report and report-n-plus-one differ (-report +n+1):\n%s", diff)
	}
	if len(a) != SeedPartners {
		t.Fatalf("%d partners, want %d", len(a), SeedPartners)
	}
	for _, p := range a {
		if p.Customers < 2 || p.CommissionTotal == "0.00" {
			t.Errorf("partner %+v: want customers and commissions", p)
		}
	}
	// Spans are named by route.
	names := map[string]bool{}
	for _, sp := range s.spans.Ended() {
		names[sp.Name()] = true
	}
	for _, n := range []string{"GET /partners/report", "GET /partners/report-n-plus-one"} {
		if !names[n] {
			t.Errorf("no span %q in %v", n, names)
		}
	}
}

func TestTenantRequired(t *testing.T) {
	s := newTestService(t)
	for _, tc := range []struct{ tenant, wantErr string }{
		{"", "missing tenant header x-tenant-id"},
		{"no spaces please", "invalid tenant: want 1 to 64 letters, digits, '.', '_' or '-'"},
	} {
		for _, path := range []string{"/partners/report", "/partners/report-n-plus-one", "/partners/1", observe.DebugPath} {
			rec := s.do(t, "GET", path, tc.tenant, "")
			if rec.Code != http.StatusBadRequest {
				t.Errorf("GET %s tenant %q: status %d", path, tc.tenant, rec.Code)
				continue
			}
			if got := decode[map[string]string](t, rec)["error"]; got != tc.wantErr {
				t.Errorf("GET %s tenant %q: error %q, want %q", path, tc.tenant, got, tc.wantErr)
			}
		}
	}
}

func TestPartnerAndCommission(t *testing.T) {
	s := newTestService(t)
	rec := s.do(t, "GET", "/partners/3", "acme", "")
	if rec.Code != 200 {
		t.Fatalf("GET /partners/3: %d %s", rec.Code, rec.Body)
	}
	p := decode[Partner](t, rec)
	if p.ID != 3 || p.Name != "Partner 3" || len(p.Customers) == 0 {
		t.Errorf("partner %+v", p)
	}

	rec = s.do(t, "POST", "/partners/3/commissions", "acme",
		fmt.Sprintf(`{"customer_id":%d,"base":1000,"rate":0.125}`, p.Customers[0].ID))
	if rec.Code != http.StatusCreated {
		t.Fatalf("POST commission: %d %s", rec.Code, rec.Body)
	}
	c := decode[CommissionResponse](t, rec)
	if c.Amount != "125.00" || c.PartnerID != 3 {
		t.Errorf("commission %+v", c)
	}
	after := decode[Partner](t, s.do(t, "GET", "/partners/3", "acme", ""))
	if after.CommissionTotal == p.CommissionTotal {
		t.Errorf("commission total unchanged: %s", after.CommissionTotal)
	}
	// The reports still agree.
	a := decode[[]PartnerSummary](t, s.do(t, "GET", "/partners/report", "acme", ""))
	b := decode[[]PartnerSummary](t, s.do(t, "GET", "/partners/report-n-plus-one", "acme", ""))
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("reports differ after a commission:\n%s", diff)
	}

	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/partners/999", "", 404},
		{"GET", "/partners/x", "", 400},
		{"POST", "/partners/999/commissions", `{"base":10,"rate":0.1}`, 404},
		{"POST", "/partners/3/commissions", `{"customer_id":101,"base":10,"rate":0.1}`, 404},
		{"POST", "/partners/3/commissions", `{"base":-1,"rate":0.1}`, 400},
		{"POST", "/partners/3/commissions", `{"base":10,"rate":2}`, 400},
		{"POST", "/partners/3/commissions", `not json`, 400},
	} {
		if rec := s.do(t, tc.method, tc.path, "acme", tc.body); rec.Code != tc.want {
			t.Errorf("%s %s %s: %d %s, want %d", tc.method, tc.path, tc.body, rec.Code, rec.Body, tc.want)
		}
	}
}

// startRun starts the service as main does, with env as its PARTNERS_*
// configuration (the OTEL_* variables come from the process environment,
// as in main), and returns its base URL. The service stops, and run's
// error is checked, when the test ends.
func startRun(t *testing.T, env map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, func(k string) string { return env[k] }, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("run did not return after cancel")
		}
	})

	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				addr <- line.Addr
			}
		}
		close(addr)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("service ended before listening: %v", <-done)
		}
		return "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatal("no listening line after 30s")
	}
	return ""
}

// debugInfo asks the service's debug endpoint, as tenant acme.
func debugInfo(t *testing.T, base string) observe.DebugInfo {
	t.Helper()
	req, _ := http.NewRequest("GET", base+observe.DebugPath, nil)
	req.Header.Set("x-tenant-id", "acme")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info observe.DebugInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || resp.StatusCode != 200 {
		t.Fatalf("debug: %d %v", resp.StatusCode, err)
	}
	return info
}

// clearOTelEnv keeps the process's OTEL_* settings out of a test.
func clearOTelEnv(t *testing.T) {
	for _, k := range []string{"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "SERVICE_VERSION",
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_EXPORTER",
		"OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLING_RATIO"} {
		t.Setenv(k, "")
	}
}

// TestRun starts the service as main does and talks to it over HTTP.
func TestRun(t *testing.T) {
	clearOTelEnv(t)
	base := startRun(t, map[string]string{"PARTNERS_DSN": freshDatabase(t), "PARTNERS_ADDR": "127.0.0.1:0"})

	info := debugInfo(t, base)
	if info.TraceID == "" || info.Tenant != "acme" || info.Service != "partners" {
		t.Errorf("debug: %+v", info)
	}

	resp, err := http.Get(base + "/partners/report")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("report without tenant: %d", resp.StatusCode)
	}
}

// TestRunServiceFromEnv: the deployment names the service and its version
// (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, SERVICE_VERSION); "partners"
// is only the default. The exported spans' resource and the name the
// service reports (the sqlcommenter application tag) agree.
func TestRunServiceFromEnv(t *testing.T) {
	dsn := freshDatabase(t)
	for _, tc := range []struct {
		name         string
		env          map[string]string
		svc, version string
	}{
		{name: "default", svc: "partners"},
		{name: "OTEL_SERVICE_NAME and SERVICE_VERSION", env: map[string]string{"OTEL_SERVICE_NAME": "billing", "SERVICE_VERSION": "9.9"},
			svc: "billing", version: "9.9"},
		{name: "OTEL_RESOURCE_ATTRIBUTES first", env: map[string]string{
			"OTEL_RESOURCE_ATTRIBUTES": "service.name=billing-eu,service.version=2.0", "SERVICE_VERSION": "9.9"},
			svc: "billing-eu", version: "2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearOTelEnv(t)
			rcv := otlptest.Start(t)
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.Endpoint())
			t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
			t.Setenv("OTEL_LOGS_EXPORTER", "none") // otlptest has no logs service
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			base := startRun(t, map[string]string{"PARTNERS_DSN": dsn, "PARTNERS_ADDR": "127.0.0.1:0"})
			info := debugInfo(t, base)
			if info.Service != tc.svc {
				t.Errorf("service %q, want %q", info.Service, tc.svc)
			}
			s := rcv.WaitSpans(t, 15*time.Second, 1, func(s otlptest.Span) bool { return s.TraceID() == info.TraceID })[0]
			res := otlptest.Attrs(s.Resource.GetAttributes())
			if res["service.name"] != tc.svc {
				t.Errorf("span resource service.name = %v, want %q", res["service.name"], tc.svc)
			}
			if v, _ := res["service.version"].(string); v != tc.version {
				t.Errorf("span resource service.version = %v, want %q", res["service.version"], tc.version)
			}
		})
	}
}

func TestRunNeedsDSN(t *testing.T) {
	err := run(context.Background(), func(string) string { return "" }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PARTNERS_DSN") {
		t.Errorf("err = %v", err)
	}
}
