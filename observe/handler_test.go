package observe_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"

	"github.com/dotmac/pgtrace/observe"
)

// seen is what a test handler observed in its request context.
type seen struct {
	Tenant, RequestID, Route string
	BaggageTenant            string
	Baggage                  string
	Comment                  string
	SpanValid                bool
}

// sortedBaggage is the baggage of ctx as key=value members, sorted and
// comma-joined (Baggage.String's order is not fixed).
func sortedBaggage(ctx context.Context) string {
	var ms []string
	for _, m := range baggage.FromContext(ctx).Members() {
		ms = append(ms, m.Key()+"="+m.Value())
	}
	slices.Sort(ms)
	return strings.Join(ms, ",")
}

func newTestMux(got *seen) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		*got = seen{
			Tenant:        observe.Tenant(ctx),
			RequestID:     observe.RequestID(ctx),
			Route:         observe.Route(ctx),
			BaggageTenant: baggage.FromContext(ctx).Member("tenant.id").Value(),
			Baggage:       sortedBaggage(ctx),
			Comment:       observe.Comment(ctx, "SELECT 1"),
			SpanValid:     trace.SpanContextFromContext(ctx).IsValid(),
		}
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /boom", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	return mux
}

func TestHandlerSpanContextAndMetrics(t *testing.T) {
	tel := newTelemetry(t)
	var got seen
	h := observe.NewHandler(newTestMux(&got), tel.options()...)

	req := httptest.NewRequest("GET", "/items/42", nil)
	req.Header.Set("x-tenant-id", "acme")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)

	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	reqID := rec.Header().Get("x-request-id")
	if reqID == "" {
		t.Fatal("no generated x-request-id in the response")
	}
	want := seen{Tenant: "acme", RequestID: reqID, Route: "/items/{id}", BaggageTenant: "acme", SpanValid: true,
		Baggage: "request.id=" + reqID + ",tenant.id=acme", Comment: got.Comment}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("handler context (-want +got):\n%s", diff)
	}

	spans := tel.spans.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1", len(spans))
	}
	s := spans[0]
	if s.Name() != "GET /items/{id}" || s.SpanKind() != trace.SpanKindServer {
		t.Errorf("span %q kind %v, want %q server", s.Name(), s.SpanKind(), "GET /items/{id}")
	}
	for key, want := range map[attribute.Key]string{"tenant.id": "acme", "request.id": reqID, "http.route": "/items/{id}"} {
		if v, ok := spanAttr(s, key); !ok || v.AsString() != want {
			t.Errorf("span attribute %s = %q, want %q", key, v.AsString(), want)
		}
	}

	rm := tel.collect(t)
	dur := findMetric(t, rm, "http.server.request.duration")
	hist := dur.Data.(metricdata.Histogram[float64])
	if len(hist.DataPoints) != 1 {
		t.Fatalf("%d duration points", len(hist.DataPoints))
	}
	if v, ok := hist.DataPoints[0].Attributes.Value("tenant.id"); !ok || v.AsString() != "acme" {
		t.Errorf("http.server.request.duration has tenant.id %q, want acme", v.AsString())
	}
	if _, ok := hist.DataPoints[0].Attributes.Value("request.id"); ok {
		t.Error("http.server.request.duration has request.id: unbounded")
	}
	wantReq := map[string]int64{"http.route=/items/{id},tenant.id=acme": 1}
	if diff := cmp.Diff(wantReq, int64Sums(t, findMetric(t, rm, observe.TenantRequestsMetric))); diff != "" {
		t.Errorf("%s (-want +got):\n%s", observe.TenantRequestsMetric, diff)
	}
}

func TestHandlerKeepsRequestID(t *testing.T) {
	tel := newTelemetry(t)
	var got seen
	h := observe.NewHandler(newTestMux(&got), tel.options()...)
	req := httptest.NewRequest("GET", "/items/1", nil)
	req.Header.Set("x-request-id", "req-123")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if got.RequestID != "req-123" || rec.Header().Get("x-request-id") != "req-123" {
		t.Errorf("request id: context %q, response %q; want req-123", got.RequestID, rec.Header().Get("x-request-id"))
	}

	// A request id that could forge log lines is replaced.
	req = httptest.NewRequest("GET", "/items/1", nil)
	req.Header.Set("x-request-id", "bad id\n")
	h.ServeHTTP(httptest.NewRecorder(), req)
	if got.RequestID == "bad id\n" || got.RequestID == "" {
		t.Errorf("request id %q kept", got.RequestID)
	}
}

func TestHandlerTenantValidation(t *testing.T) {
	validator := func(_ context.Context, tenant string) error {
		if tenant == "evil" {
			return errors.New("unknown tenant")
		}
		return nil
	}
	for _, tc := range []struct {
		name, tenant string
		opt          observe.Option
		wantCode     int
		wantBody     string
	}{
		{"required and missing", "", observe.WithTenantRequired(), 400, `{"error":"missing tenant header x-tenant-id"}`},
		{"validator and missing", "", observe.WithTenantValidator(validator), 400, `{"error":"missing tenant header x-tenant-id"}`},
		{"validator rejects", "evil", observe.WithTenantValidator(validator), 400, `{"error":"invalid tenant: unknown tenant"}`},
		{"validator accepts", "acme", observe.WithTenantValidator(validator), 200, "ok"},
		{"optional and missing", "", nil, 200, "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tel := newTelemetry(t)
			var got seen
			h := observe.NewHandler(newTestMux(&got), tel.options(tc.opt)...)
			req := httptest.NewRequest("GET", "/items/1", nil)
			if tc.tenant != "" {
				req.Header.Set("x-tenant-id", tc.tenant)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantCode || strings.TrimSpace(rec.Body.String()) != tc.wantBody {
				t.Errorf("got %d %s, want %d %s", rec.Code, rec.Body, tc.wantCode, tc.wantBody)
			}
			called := got.SpanValid
			if called != (tc.wantCode == 200) {
				t.Errorf("handler called = %v", called)
			}
			if tc.wantCode == 400 {
				if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				if rec.Header().Get("x-request-id") == "" {
					t.Error("rejected response has no x-request-id")
				}
				var body map[string]string
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Errorf("body is not JSON: %v", err)
				}
				errs := int64Sums(t, findMetric(t, tel.collect(t), observe.TenantErrorsMetric))
				if len(errs) != 1 {
					t.Errorf("%s = %v, want one series", observe.TenantErrorsMetric, errs)
				}
			}
		})
	}
}

func TestHandlerErrorsAndCardinality(t *testing.T) {
	tel := newTelemetry(t)
	var got seen
	h := observe.NewHandler(newTestMux(&got), tel.options(observe.WithCardinalityLimit(2))...)
	for _, tc := range []struct{ tenant, path string }{
		{"t1", "/items/1"}, {"t2", "/items/1"}, {"t3", "/items/1"}, {"t1", "/boom"},
	} {
		req := httptest.NewRequest("GET", tc.path, nil)
		req.Header.Set("x-tenant-id", tc.tenant)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	rm := tel.collect(t)
	wantReq := map[string]int64{
		"http.route=/items/{id},tenant.id=t1":     1,
		"http.route=/items/{id},tenant.id=t2":     1,
		"http.route=/items/{id},tenant.id=_other": 1,
		"http.route=/boom,tenant.id=t1":           1,
	}
	if diff := cmp.Diff(wantReq, int64Sums(t, findMetric(t, rm, observe.TenantRequestsMetric))); diff != "" {
		t.Errorf("%s (-want +got):\n%s", observe.TenantRequestsMetric, diff)
	}
	wantErr := map[string]int64{"error.type=500,http.route=/boom,tenant.id=t1": 1}
	if diff := cmp.Diff(wantErr, int64Sums(t, findMetric(t, rm, observe.TenantErrorsMetric))); diff != "" {
		t.Errorf("%s (-want +got):\n%s", observe.TenantErrorsMetric, diff)
	}
	// The span keeps the real tenant.
	for _, s := range tel.spans.Ended() {
		if v, _ := spanAttr(s, "tenant.id"); v.AsString() == observe.OverflowValue {
			t.Errorf("span %s has tenant.id %s", s.Name(), v.AsString())
		}
		if s.Name() == "GET /boom" && s.Status().Code != codes.Error {
			t.Errorf("5xx span status %v", s.Status())
		}
	}
}

func TestHandlerParentsUnderIncomingTrace(t *testing.T) {
	tel := newTelemetry(t)
	var got seen
	h := observe.NewHandler(newTestMux(&got), tel.options()...)
	req := httptest.NewRequest("GET", "/items/1", nil)
	req.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	h.ServeHTTP(httptest.NewRecorder(), req)
	s := tel.spans.Ended()[0]
	if s.Parent().SpanID().String() != "b7ad6b7169203331" || s.SpanContext().TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Errorf("span not parented under incoming traceparent: parent %v", s.Parent())
	}
}

// TestHandlerIncomingBaggage: a tenant comes only from the tenant header;
// incoming baggage is dropped unless the service opts in, and its tenant.id
// member is dropped even then.
func TestHandlerIncomingBaggage(t *testing.T) {
	const incoming = "tenant.id=evil,team=x"
	for _, tc := range []struct {
		name   string
		opts   []observe.Option
		header string // x-tenant-id
		want   seen   // Tenant, BaggageTenant, Baggage
	}{
		{name: "dropped by default", want: seen{}},
		{name: "header wins", header: "acme", want: seen{Tenant: "acme", BaggageTenant: "acme"}},
		{name: "opted in: kept without tenant.id", opts: []observe.Option{observe.WithIncomingBaggage()},
			want: seen{Baggage: "team=x"}},
		{name: "opted in with header", opts: []observe.Option{observe.WithIncomingBaggage()}, header: "acme",
			want: seen{Tenant: "acme", BaggageTenant: "acme", Baggage: "team=x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tel := newTelemetry(t)
			var got seen
			h := observe.NewHandler(newTestMux(&got), tel.options(tc.opts...)...)
			req := httptest.NewRequest("GET", "/items/1", nil)
			req.Header.Set("baggage", incoming)
			if tc.header != "" {
				req.Header.Set("x-tenant-id", tc.header)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d", rec.Code)
			}
			if got.Tenant != tc.want.Tenant || got.BaggageTenant != tc.want.BaggageTenant {
				t.Errorf("Tenant = %q, baggage tenant.id = %q; want %q, %q", got.Tenant, got.BaggageTenant, tc.want.Tenant, tc.want.BaggageTenant)
			}
			// The middleware adds request.id; the rest is what came in.
			var rest []string
			for _, m := range strings.Split(got.Baggage, ",") {
				if m != "" && !strings.HasPrefix(m, "request.id=") && !strings.HasPrefix(m, "tenant.id=") {
					rest = append(rest, m)
				}
			}
			if strings.Join(rest, ",") != tc.want.Baggage {
				t.Errorf("baggage %q, want %q besides tenant.id and request.id", got.Baggage, tc.want.Baggage)
			}
			// The sqlcommenter comment carries only the header's tenant.
			if tag := "tenant_id='" + tc.want.Tenant + "'"; tc.want.Tenant != "" && !strings.Contains(got.Comment, tag) ||
				tc.want.Tenant == "" && strings.Contains(got.Comment, "tenant_id") {
				t.Errorf("Comment = %s, want tenant %q", got.Comment, tc.want.Tenant)
			}
		})
	}
}

// TestHandlerPanicIsCounted: a handler that panics is counted as a
// request and an error (error.type panic), its span is named after the
// route and failed, and the panic goes on to net/http.
func TestHandlerPanicIsCounted(t *testing.T) {
	tel := newTelemetry(t)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /panic/{id}", func(http.ResponseWriter, *http.Request) { panic("boom") })
	h := observe.NewHandler(mux, tel.options()...)
	req := httptest.NewRequest("GET", "/panic/7", nil)
	req.Header.Set("x-tenant-id", "acme")
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want the handler's panic", p)
			}
		}()
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	rm := tel.collect(t)
	if diff := cmp.Diff(map[string]int64{"http.route=/panic/{id},tenant.id=acme": 1},
		int64Sums(t, findMetric(t, rm, observe.TenantRequestsMetric))); diff != "" {
		t.Errorf("%s (-want +got):\n%s", observe.TenantRequestsMetric, diff)
	}
	if diff := cmp.Diff(map[string]int64{"error.type=panic,http.route=/panic/{id},tenant.id=acme": 1},
		int64Sums(t, findMetric(t, rm, observe.TenantErrorsMetric))); diff != "" {
		t.Errorf("%s (-want +got):\n%s", observe.TenantErrorsMetric, diff)
	}
	spans := tel.spans.Ended()
	if len(spans) != 1 || spans[0].Name() != "GET /panic/{id}" || spans[0].Status().Code != codes.Error {
		for _, s := range spans {
			t.Logf("span %q status %v", s.Name(), s.Status())
		}
		t.Error("want one span named after the route, with status Error")
	}
}

// TestHandlerHijack: a handler may take the connection over through the
// middleware, as WebSocket libraries do.
func TestHandlerHijack(t *testing.T) {
	tel := newTelemetry(t)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		hj, ok := w.(http.Hijacker) // as gorilla/websocket asks
		if !ok {
			http.Error(w, "not a Hijacker", http.StatusInternalServerError)
			return
		}
		c, brw, err := hj.Hijack()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
	})
	srv := httptest.NewServer(observe.NewHandler(mux, tel.options()...))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Errorf("status %d, want 101: the hijack failed", resp.StatusCode)
	}
}
