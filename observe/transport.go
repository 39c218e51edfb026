package observe

import (
	"net/http"
	"net/url"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/baggage"
)

// NewTransport returns an http.RoundTripper for outgoing requests: otelhttp's
// transport over base (http.DefaultTransport if nil), which makes a client
// span and injects trace context, and which also forwards the request id of
// the request's context in the request-id header.
//
// The tenant goes only to the hosts listed with WithTenantHosts: the tenant
// header and the W3C baggage (which carries tenant.id) are sent to them and
// to no other host. Headers the caller set already are kept.
func NewTransport(base http.RoundTripper, opts ...Option) http.RoundTripper {
	c := newConfig(opts...)
	if base == nil {
		base = http.DefaultTransport
	}
	otelOpts := []otelhttp.Option{
		otelhttp.WithTracerProvider(c.TracerProvider),
		otelhttp.WithMeterProvider(c.MeterProvider),
		otelhttp.WithPropagators(c.Propagators),
	}
	otelOpts = append(otelOpts, c.HTTPOptions...)
	return &transport{
		cfg:   c,
		hosts: hostList(c.TenantHosts),
		next:  otelhttp.NewTransport(base, otelOpts...),
	}
}

type transport struct {
	cfg   *config
	hosts hostList
	next  http.RoundTripper
}

// RoundTrip implements http.RoundTripper. As the interface asks, it does not
// modify r: it clones r when it has headers to add.
func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	trusted := t.hosts.match(r.URL)
	if !trusted && baggage.FromContext(ctx).Len() > 0 {
		// otelhttp injects the baggage of the request's context.
		ctx = baggage.ContextWithoutBaggage(ctx)
		r = r.WithContext(ctx)
	}
	tenant, reqID := "", RequestID(r.Context())
	if trusted {
		tenant = Tenant(ctx)
	}
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

// hostList is WithTenantHosts' list, lower case.
type hostList []string

// match reports whether u's host is in the list: by name (any port), by
// name and port, or under a "*.domain" entry.
func (l hostList) match(u *url.URL) bool {
	if u == nil || len(l) == 0 {
		return false
	}
	name := strings.ToLower(u.Hostname())
	hostport := name
	if p := u.Port(); p != "" {
		hostport = name + ":" + p
	}
	for _, h := range l {
		switch {
		case h == name, h == hostport:
			return true
		case strings.HasPrefix(h, "*.") && strings.HasSuffix(name, h[1:]):
			return true
		}
	}
	return false
}
