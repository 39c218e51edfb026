package observe_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/dotmac/pgtrace/observe"
)

func TestTransportForwardsTenantAndRequestID(t *testing.T) {
	tel := newTelemetry(t)
	got := make(chan http.Header, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
	}))
	defer srv.Close()

	client := &http.Client{Transport: observe.NewTransport(nil, tel.options()...)}
	ctx, span := tel.tp.Tracer("test").Start(context.Background(), "parent")
	ctx = observe.ContextWithTenant(ctx, "acme")
	ctx = observe.ContextWithRequestID(ctx, "req-1")
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	span.End()

	h := <-got
	if h.Get("x-tenant-id") != "acme" || h.Get("x-request-id") != "req-1" {
		t.Errorf("forwarded tenant %q, request id %q", h.Get("x-tenant-id"), h.Get("x-request-id"))
	}
	if h.Get("traceparent") == "" {
		t.Error("no traceparent header")
	}
	if h.Get("baggage") == "" {
		t.Error("no baggage header")
	}
	if req.Header.Get("x-tenant-id") != "" {
		t.Error("RoundTrip modified the caller's request")
	}
	var client1 bool
	for _, s := range tel.spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient && s.Parent().SpanID() == span.SpanContext().SpanID() {
			client1 = true
		}
	}
	if !client1 {
		t.Error("no client span under the parent")
	}
}
