package observe

import (
	"context"
	"net/http"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
)

// Attribute keys this package puts on spans, metrics and logs, and the
// baggage keys it propagates.
const (
	TenantIDKey  = attribute.Key("tenant.id")
	RequestIDKey = attribute.Key("request.id")
	PartnerIDKey = attribute.Key("partner.id")
)

// OverflowValue replaces a tenant or partner id on metrics once an
// instrument has seen WithCardinalityLimit distinct ids.
const OverflowValue = "_other"

type ctxKey struct{}

// requestState is what the middleware (or ContextWithTenant and
// ContextWithRequestID) stores in a context: one value, so that a request
// costs one context.WithValue.
type requestState struct {
	tenant    string
	requestID string
	// req is the request the middleware hands to the next handler. A
	// ServeMux sets its Pattern before calling the matched handler, which is
	// how Route learns the route from a context.
	req *http.Request
}

func stateFrom(ctx context.Context) *requestState {
	s, _ := ctx.Value(ctxKey{}).(*requestState)
	return s
}

// ContextWithTenant returns a copy of ctx carrying tenant as the tenant id,
// for work that does not come through the HTTP middleware (jobs, consumers).
// The tenant is also put in the baggage, so that it propagates.
func ContextWithTenant(ctx context.Context, tenant string) context.Context {
	s := requestState{}
	if old := stateFrom(ctx); old != nil {
		s = *old
	}
	s.tenant = tenant
	return context.WithValue(withBaggage(ctx, string(TenantIDKey), tenant), ctxKey{}, &s)
}

// ContextWithRequestID returns a copy of ctx carrying id as the request id.
func ContextWithRequestID(ctx context.Context, id string) context.Context {
	s := requestState{}
	if old := stateFrom(ctx); old != nil {
		s = *old
	}
	s.requestID = id
	return context.WithValue(withBaggage(ctx, string(RequestIDKey), id), ctxKey{}, &s)
}

// Tenant returns the tenant id of ctx: the one the middleware took from the
// tenant header (past WithTenantValidator), or the one ContextWithTenant
// stored, else "". It never reads the tenant.id baggage member, which a
// caller could set to anything: work that learns its tenant some other way
// (a queue message) validates it and calls ContextWithTenant.
func Tenant(ctx context.Context) string {
	if s := stateFrom(ctx); s != nil {
		return s.tenant
	}
	return ""
}

// RequestID returns the request id of ctx: the one the middleware or
// ContextWithRequestID stored, else the request.id baggage member, else "".
func RequestID(ctx context.Context) string {
	if s := stateFrom(ctx); s != nil && s.requestID != "" {
		return s.requestID
	}
	return baggage.FromContext(ctx).Member(string(RequestIDKey)).Value()
}

// Route returns the route pattern of the request ctx belongs to, such as
// "/partners/{id}", or "" when unknown. It is known once an http.ServeMux
// wrapped by NewHandler has matched the request.
func Route(ctx context.Context) string {
	if s := stateFrom(ctx); s != nil && s.req != nil {
		return routeOf(s.req.Pattern)
	}
	return ""
}

// routeOf strips the method and host from a ServeMux pattern:
// "GET example.com/a/{id}" becomes "/a/{id}".
func routeOf(pattern string) string {
	if i := strings.IndexByte(pattern, '/'); i >= 0 {
		return pattern[i:]
	}
	return ""
}

func withBaggage(ctx context.Context, key, value string) context.Context {
	if value == "" {
		return ctx
	}
	m, err := baggage.NewMemberRaw(key, value)
	if err != nil {
		return ctx
	}
	b, err := baggage.FromContext(ctx).SetMember(m)
	if err != nil {
		return ctx
	}
	return baggage.ContextWithBaggage(ctx, b)
}

// limiter bounds the distinct values of one attribute on an instrument: the
// first max values pass, later ones become OverflowValue. It never forgets,
// so a value keeps its series for the life of the process.
type limiter struct {
	key attribute.Key
	max int

	mu   sync.RWMutex
	seen map[string]attribute.KeyValue
}

func newLimiter(key attribute.Key, max int) *limiter {
	return &limiter{key: key, max: max, seen: make(map[string]attribute.KeyValue)}
}

// attr returns key=v, or key=OverflowValue when the limit is reached.
func (l *limiter) attr(v string) attribute.KeyValue {
	l.mu.RLock()
	kv, ok := l.seen[v]
	full := len(l.seen) >= l.max
	l.mu.RUnlock()
	if ok {
		return kv
	}
	if full {
		return l.key.String(OverflowValue)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if kv, ok := l.seen[v]; ok {
		return kv
	}
	if len(l.seen) >= l.max {
		return l.key.String(OverflowValue)
	}
	kv = l.key.String(v)
	l.seen[v] = kv
	return kv
}
