package observe_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/dotmac/pgtrace/observe"
)

func TestDebugHandler(t *testing.T) {
	tel := newTelemetry(t)
	mux := http.NewServeMux()
	mux.Handle("GET "+observe.DebugPath, observe.DebugHandler(observe.WithServiceName("partners")))
	h := observe.NewHandler(mux, tel.options()...)

	req := httptest.NewRequest("GET", observe.DebugPath, nil)
	req.Header.Set("x-tenant-id", "acme")
	req.Header.Set("x-request-id", "req-9")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)

	var got observe.DebugInfo
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	sc := tel.spans.Ended()[0].SpanContext()
	want := observe.DebugInfo{
		TraceID: sc.TraceID().String(), SpanID: sc.SpanID().String(), Sampled: true,
		Service: "partners", Tenant: "acme", RequestID: "req-9", Route: observe.DebugPath,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("debug info (-want +got):\n%s", diff)
	}
}
