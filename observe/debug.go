package observe

import (
	"encoding/json"
	"net/http"

	"go.opentelemetry.io/otel/trace"
)

// DebugPath is where the guide serves the debug handler.
const DebugPath = "/debug/observability"

// DebugInfo is the JSON answer of DebugHandler.
type DebugInfo struct {
	TraceID   string `json:"trace_id"`
	SpanID    string `json:"span_id"`
	Sampled   bool   `json:"sampled"`
	Service   string `json:"service,omitempty"`
	Tenant    string `json:"tenant_id,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Route     string `json:"route,omitempty"`
}

// DebugHandler answers with the DebugInfo of the request: the trace and span
// ids of the current span (the server span NewHandler started), whether it
// is sampled, and the service, tenant, request id and route. Mount it at
// DebugPath behind NewHandler:
//
//	mux.Handle("GET "+observe.DebugPath, observe.DebugHandler())
func DebugHandler(opts ...Option) http.Handler {
	service := newConfig(opts...).application()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		sc := trace.SpanContextFromContext(ctx)
		info := DebugInfo{
			Sampled:   sc.IsSampled(),
			Service:   service,
			Tenant:    Tenant(ctx),
			RequestID: RequestID(ctx),
			Route:     Route(ctx),
		}
		if sc.IsValid() {
			info.TraceID, info.SpanID = sc.TraceID().String(), sc.SpanID().String()
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(info)
	})
}
