package observe

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Names of the per-tenant HTTP instruments.
const (
	TenantRequestsMetric = "dotmac.tenant.requests"
	TenantErrorsMetric   = "dotmac.tenant.errors"
)

// Values of tenant.id on the tenant counters for requests the middleware
// rejected: their tenant is not trusted, so it never takes a series.
const (
	tenantMissing = "_missing"
	tenantInvalid = "_invalid"
)

// maxRequestIDLen bounds an incoming request id; a longer or non-printable
// one is replaced by a generated id, so that it cannot bloat or forge logs.
const maxRequestIDLen = 128

// NewHandler wraps h (normally an *http.ServeMux) with otelhttp and the
// tenant and request-id handling described at NewMiddleware.
func NewHandler(h http.Handler, opts ...Option) http.Handler {
	return NewMiddleware(opts...)(h)
}

// NewMiddleware returns a middleware that, for every request:
//
//   - starts a server span with otelhttp, named "{method} {route}" after the
//     ServeMux pattern that matched (otelhttp also records
//     http.server.request.duration);
//   - takes the request id from the request-id header, or generates one, and
//     echoes it in the response header;
//   - takes the tenant id from the tenant header; with WithTenantRequired or
//     WithTenantValidator, a missing or rejected tenant gets 400 Bad Request
//     with a JSON body {"error": "..."} and the next handler is not called;
//   - drops the baggage the request came with, unless WithIncomingBaggage
//     (and then still its tenant.id member: a tenant comes only from the
//     tenant header, past the validator);
//   - puts tenant and request id into the context (see Tenant, RequestID,
//     Route), into the baggage, and onto the span as tenant.id and
//     request.id;
//   - adds tenant.id, bounded by WithCardinalityLimit, to
//     http.server.request.duration, and counts requests and errors (status
//     5xx, or a rejected tenant) per tenant in dotmac.tenant.requests and
//     dotmac.tenant.errors.
//
// Route is known only when the handler given to the middleware is the
// ServeMux itself (or passes the same *http.Request on to it).
func NewMiddleware(opts ...Option) func(http.Handler) http.Handler {
	c := newConfig(opts...)
	inst := newHTTPInstruments(c)
	otelOpts := []otelhttp.Option{
		otelhttp.WithTracerProvider(c.TracerProvider),
		otelhttp.WithMeterProvider(c.MeterProvider),
		otelhttp.WithPropagators(c.Propagators),
	}
	otelOpts = append(otelOpts, c.HTTPOptions...)
	return func(next http.Handler) http.Handler {
		return otelhttp.NewHandler(&tenantHandler{next: next, cfg: c, inst: inst}, "", otelOpts...)
	}
}

type httpInstruments struct {
	requests metric.Int64Counter
	errors   metric.Int64Counter
	tenants  *limiter
}

func newHTTPInstruments(c *config) *httpInstruments {
	m := c.meter()
	var err error
	in := &httpInstruments{tenants: newLimiter(TenantIDKey, c.CardinalityLimit)}
	in.requests, err = m.Int64Counter(TenantRequestsMetric,
		metric.WithUnit("{request}"),
		metric.WithDescription("HTTP requests served, per tenant and route."))
	in.requests = orNoop[metric.Int64Counter](in.requests, err, noop.Int64Counter{})
	in.errors, err = m.Int64Counter(TenantErrorsMetric,
		metric.WithUnit("{request}"),
		metric.WithDescription("HTTP requests that failed (5xx, or tenant rejected), per tenant and route."))
	in.errors = orNoop[metric.Int64Counter](in.errors, err, noop.Int64Counter{})
	return in
}

// tenantHandler runs inside otelhttp's handler, so the server span and the
// metric labeler are already in the request context.
type tenantHandler struct {
	next http.Handler
	cfg  *config
	inst *httpInstruments
}

func (h *tenantHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := dropIncomingBaggage(r.Context(), h.cfg.IncomingBaggage)
	span := trace.SpanFromContext(ctx)

	reqID := r.Header.Get(h.cfg.RequestIDHeader)
	if !validRequestID(reqID) {
		reqID = rand.Text()
	}
	w.Header().Set(h.cfg.RequestIDHeader, reqID)
	span.SetAttributes(RequestIDKey.String(reqID))

	tenant := r.Header.Get(h.cfg.TenantHeader)
	if tenant == "" && h.cfg.TenantRequired {
		h.reject(ctx, w, tenantMissing, "missing tenant header "+h.cfg.TenantHeader)
		return
	}
	if tenant != "" && h.cfg.TenantValidator != nil {
		if err := h.cfg.TenantValidator(ctx, tenant); err != nil {
			h.reject(ctx, w, tenantInvalid, "invalid tenant: "+err.Error())
			return
		}
	}

	var tenantAttr attribute.KeyValue
	if tenant != "" {
		span.SetAttributes(TenantIDKey.String(tenant))
		tenantAttr = h.inst.tenants.attr(tenant)
		if l, ok := otelhttp.LabelerFromContext(ctx); ok {
			l.Add(tenantAttr)
		}
		ctx = withBaggage(ctx, string(TenantIDKey), tenant)
	}
	ctx = withBaggage(ctx, string(RequestIDKey), reqID)

	state := &requestState{tenant: tenant, requestID: reqID}
	r2 := r.WithContext(context.WithValue(ctx, ctxKey{}, state))
	state.req = r2

	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		// Deferred, so that a handler that panics is counted, as an
		// error, and its span named and failed too; the panic goes on.
		p := recover()
		h.done(ctx, span, r, r2, sw, tenant, tenantAttr, p)
		if p != nil {
			panic(p)
		}
	}()
	h.next.ServeHTTP(sw, r2)
}

// done accounts for a request once its handler has returned or panicked
// with p.
func (h *tenantHandler) done(ctx context.Context, span trace.Span, r, r2 *http.Request, sw *statusWriter, tenant string, tenantAttr attribute.KeyValue, p any) {
	if r.Pattern == "" {
		// Let otelhttp, which holds r, name the span and the http.route
		// metric attribute after the pattern the ServeMux set on r2.
		r.Pattern = r2.Pattern
	}

	attrs := make([]attribute.KeyValue, 0, 3)
	if tenant != "" {
		attrs = append(attrs, tenantAttr)
	}
	if route := routeOf(r2.Pattern); route != "" {
		attrs = append(attrs, semconv.HTTPRoute(route))
		span.SetAttributes(semconv.HTTPRoute(route))
	}
	h.inst.requests.Add(ctx, 1, metric.WithAttributes(attrs...))
	errType := ""
	switch {
	case p != nil && p != http.ErrAbortHandler: // ErrAbortHandler aborts a response on purpose
		errType = "panic"
		span.SetStatus(codes.Error, fmt.Sprint("panic: ", p))
		span.SetAttributes(semconv.ErrorTypeKey.String(errType))
		if route := routeOf(r2.Pattern); route != "" {
			span.SetName(r.Method + " " + route) // otelhttp names it only when the handler returns
		}
	case sw.code() >= 500:
		errType = strconv.Itoa(sw.code())
	}
	if errType != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(errType))
		h.inst.errors.Add(ctx, 1, metric.WithAttributes(attrs...))
	}
}

// dropIncomingBaggage removes the baggage otelhttp extracted from the
// request: all of it, or with keep only its tenant.id member.
func dropIncomingBaggage(ctx context.Context, keep bool) context.Context {
	b := baggage.FromContext(ctx)
	if b.Len() == 0 {
		return ctx
	}
	if !keep {
		return baggage.ContextWithoutBaggage(ctx)
	}
	return baggage.ContextWithBaggage(ctx, b.DeleteMember(string(TenantIDKey)))
}

func (h *tenantHandler) reject(ctx context.Context, w http.ResponseWriter, tenant, msg string) {
	attrs := metric.WithAttributes(TenantIDKey.String(tenant))
	h.inst.requests.Add(ctx, 1, attrs)
	h.inst.errors.Add(ctx, 1, metric.WithAttributes(TenantIDKey.String(tenant), semconv.ErrorTypeKey.String("tenant"+tenant)))
	writeJSONError(w, http.StatusBadRequest, msg)
}

func writeJSONError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// statusWriter records the status code the handler sends. Unwrap lets
// http.ResponseController reach the underlying writer's optional methods.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack lets a handler take the connection over (a WebSocket upgrade)
// through the middleware, as otelhttp's own writer does.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}
