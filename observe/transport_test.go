package observe_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/dotmac/pgtrace/observe"
)

// headerServer is a real HTTP server that every host name reaches (through
// client's dialer), and that hands each request's headers to got.
type headerServer struct {
	client *http.Client
	got    chan http.Header
}

func newHeaderServer(t *testing.T, opts ...observe.Option) *headerServer {
	t.Helper()
	s := &headerServer{got: make(chan http.Header, 1)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.got <- r.Header.Clone()
	}))
	t.Cleanup(srv.Close)
	base := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Listener.Addr().String())
	}}
	t.Cleanup(base.CloseIdleConnections)
	s.client = &http.Client{Transport: observe.NewTransport(base, opts...)}
	return s
}

// get sends GET url with ctx and returns the headers the server saw.
func (s *headerServer) get(t *testing.T, ctx context.Context, url string) http.Header {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if req.Header.Get("x-tenant-id") != "" || req.Header.Get("baggage") != "" {
		t.Error("RoundTrip modified the caller's request")
	}
	return <-s.got
}

func TestTransportForwardsTenantAndRequestID(t *testing.T) {
	tel := newTelemetry(t)
	s := newHeaderServer(t, tel.options(observe.WithTenantHosts("API.internal", "billing.internal:8443", "*.svc.local"))...)
	ctx, span := tel.tp.Tracer("test").Start(context.Background(), "parent")
	ctx = observe.ContextWithTenant(ctx, "acme")
	ctx = observe.ContextWithRequestID(ctx, "req-1")

	for _, tc := range []struct {
		url    string
		tenant bool
	}{
		{"http://api.internal/x", true},
		{"http://api.internal:9000/x", true},      // a name entry allows any port
		{"http://billing.internal:8443/x", true},  // host:port entry
		{"http://billing.internal:9443/x", false}, // ... and only that port
		{"http://orders.svc.local/x", true},       // wildcard
		{"http://svc.local/x", false},             // the wildcard's domain itself is not under it
		{"http://api.internal.evil.example/x", false},
		{"http://third-party.example/x", false},
	} {
		h := s.get(t, ctx, tc.url)
		if h.Get("traceparent") == "" || h.Get("x-request-id") != "req-1" {
			t.Errorf("%s: traceparent %q, request id %q; want both everywhere", tc.url, h.Get("traceparent"), h.Get("x-request-id"))
		}
		gotTenant, gotBaggage := h.Get("x-tenant-id"), h.Get("baggage")
		if tc.tenant && (gotTenant != "acme" || gotBaggage == "") {
			t.Errorf("%s (listed): tenant %q, baggage %q; want both", tc.url, gotTenant, gotBaggage)
		}
		if !tc.tenant && (gotTenant != "" || gotBaggage != "") {
			t.Errorf("%s (not listed): tenant %q, baggage %q; want neither", tc.url, gotTenant, gotBaggage)
		}
	}
	span.End()

	var clientSpans int
	for _, sp := range tel.spans.Ended() {
		if sp.SpanKind() == trace.SpanKindClient && sp.Parent().SpanID() == span.SpanContext().SpanID() {
			clientSpans++
		}
	}
	if clientSpans != 8 {
		t.Errorf("%d client spans under the parent, want 8", clientSpans)
	}
}

// TestTransportSendsNoTenantByDefault: without WithTenantHosts no host gets
// the tenant.
func TestTransportSendsNoTenantByDefault(t *testing.T) {
	s := newHeaderServer(t, newTelemetry(t).options()...)
	ctx := observe.ContextWithTenant(context.Background(), "acme")
	if h := s.get(t, ctx, "http://api.internal/x"); h.Get("x-tenant-id") != "" || h.Get("baggage") != "" {
		t.Errorf("tenant %q, baggage %q sent with no host listed", h.Get("x-tenant-id"), h.Get("baggage"))
	}
}

// TestTenantFromBaggageDoesNotPropagate: a caller that sends tenant.id
// baggage and no tenant header does not get a tenant, neither in the
// service nor in what the service sends on to a trusted host.
func TestTenantFromBaggageDoesNotPropagate(t *testing.T) {
	tel := newTelemetry(t)
	down := newHeaderServer(t, tel.options(observe.WithTenantHosts("api.internal"))...)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /call", func(w http.ResponseWriter, r *http.Request) {
		h := down.get(t, r.Context(), "http://api.internal/x")
		if h.Get("x-tenant-id") != "" {
			t.Errorf("forwarded tenant %q from the caller's baggage", h.Get("x-tenant-id"))
		}
		if b := h.Get("baggage"); b != "" && !isRequestIDOnly(b) {
			t.Errorf("forwarded baggage %q", b)
		}
	})
	req := httptest.NewRequest("GET", "/call", nil)
	req.Header.Set("baggage", "tenant.id=someone-else")
	rec := httptest.NewRecorder()
	observe.NewHandler(mux, tel.options()...).ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
}

// isRequestIDOnly reports whether a baggage header holds only the
// middleware's own request.id member.
func isRequestIDOnly(b string) bool {
	return strings.HasPrefix(b, "request.id=") && !strings.Contains(b, ",")
}
