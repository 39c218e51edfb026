package observe

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// NewTransport returns an http.RoundTripper for outgoing requests: otelhttp's
// transport over base (http.DefaultTransport if nil), which makes a client
// span and injects trace context and baggage, and which also forwards the
// tenant and request id of the request's context in the tenant and
// request-id headers. Headers the caller set already are kept.
func NewTransport(base http.RoundTripper, opts ...Option) http.RoundTripper {
	c := newConfig(opts...)
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{
		cfg: c,
		next: otelhttp.NewTransport(base,
			otelhttp.WithTracerProvider(c.TracerProvider),
			otelhttp.WithMeterProvider(c.MeterProvider),
			otelhttp.WithPropagators(c.Propagators)),
	}
}

type transport struct {
	cfg  *config
	next http.RoundTripper
}

// RoundTrip implements http.RoundTripper. As the interface asks, it does not
// modify r: it clones r when it has headers to add.
func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	tenant, reqID := Tenant(ctx), RequestID(ctx)
	addTenant := tenant != "" && r.Header.Get(t.cfg.TenantHeader) == ""
	addReqID := reqID != "" && r.Header.Get(t.cfg.RequestIDHeader) == ""
	if addTenant || addReqID {
		r = r.Clone(ctx)
		if addTenant {
			r.Header.Set(t.cfg.TenantHeader, tenant)
		}
		if addReqID {
			r.Header.Set(t.cfg.RequestIDHeader, reqID)
		}
	}
	return t.next.RoundTrip(r)
}
