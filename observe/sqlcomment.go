package observe

import (
	"context"
	"os"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/trace"
)

// Comment returns query with a sqlcommenter comment appended, for drivers
// that OpenDB and WrapConnector do not wrap. The tags, in the spec's sorted
// order, are:
//
//	application  WithServiceName of the last Setup, else OTEL_SERVICE_NAME
//	route        Route(ctx)
//	tenant_id    Tenant(ctx)
//	traceparent  the current span, whenever its context is valid, with its
//	             real flags: -01 sampled, -00 not
//	tracestate   the current span's trace state, with traceparent
//
// Empty tags are left out. Keys and values are URL-encoded as
// encodeURIComponent does and a ' in them is escaped as \', as the spec
// says. A query that already has a comment (/* or --) is returned as is,
// and so is a query when no tag has a value. A trailing semicolon stays
// last: "SELECT 1;" becomes "SELECT 1 /*…*/;".
func Comment(ctx context.Context, query string) string {
	return defaultCommenter().comment(ctx, query, true)
}

var (
	defaultCommenterMu sync.RWMutex
	defaultCommenterV  *commenter
)

func defaultCommenter() *commenter {
	defaultCommenterMu.RLock()
	c := defaultCommenterV
	defaultCommenterMu.RUnlock()
	if c != nil {
		return c
	}
	defaultCommenterMu.Lock()
	defer defaultCommenterMu.Unlock()
	if defaultCommenterV == nil {
		defaultCommenterV = newCommenter(env(os.Getenv).serviceName(), "")
	}
	return defaultCommenterV
}

func setDefaultApplication(app string) {
	defaultCommenterMu.Lock()
	defer defaultCommenterMu.Unlock()
	defaultCommenterV = newCommenter(app, "")
}

// commenter writes sqlcommenter comments; the tags that do not change per
// query are encoded once.
type commenter struct {
	// prefix holds the encoded static tags that sort before route
	// (application, db_driver), comma-separated.
	prefix string
}

func newCommenter(application, driver string) *commenter {
	var b strings.Builder
	for _, t := range [...]struct{ k, v string }{{"application", application}, {"db_driver", driver}} {
		if t.v != "" {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			writeTag(&b, t.k, t.v)
		}
	}
	return &commenter{prefix: b.String()}
}

// hasComment reports whether query holds a comment, or something that could
// be one: a /* or -- inside a string literal counts too, which errs on the
// side of leaving the query alone (as the spec asks).
func hasComment(query string) bool {
	return strings.Contains(query, "/*") || strings.Contains(query, "--")
}

// comment appends the tags to query. dynamic=false writes only the static
// tags, for statements prepared once and executed in many requests.
func (c *commenter) comment(ctx context.Context, query string, dynamic bool) string {
	if hasComment(query) {
		return query
	}
	var route, tenant string
	var sc trace.SpanContext
	if dynamic {
		route, tenant = Route(ctx), Tenant(ctx)
		sc = trace.SpanContextFromContext(ctx)
	}
	// An unsampled span's context is written too, with flags -00: the proxy
	// then follows the app's sampling decision, groups N+1s by the
	// request's trace, and a span it keeps anyway (slow, failed, N+1)
	// still names the request's trace id.
	traced := sc.IsValid()
	if c.prefix == "" && route == "" && tenant == "" && !traced {
		return query
	}

	body, tail := query, ""
	trimmed := strings.TrimRight(query, " \t\r\n")
	if strings.HasSuffix(trimmed, ";") {
		body, tail = trimmed[:len(trimmed)-1], ";"
	}
	body = strings.TrimRight(body, " \t\r\n")

	var b strings.Builder
	b.Grow(len(body) + len(c.prefix) + 120 + 3*(len(route)+len(tenant)) + len(tail))
	b.WriteString(body)
	b.WriteString(" /*")
	b.WriteString(c.prefix)
	sep := c.prefix != ""
	comma := func() {
		if sep {
			b.WriteByte(',')
		}
		sep = true
	}
	if route != "" {
		comma()
		writeTag(&b, "route", route)
	}
	if tenant != "" {
		comma()
		writeTag(&b, "tenant_id", tenant)
	}
	if traced {
		comma()
		b.WriteString("traceparent='00-")
		tid, sid := sc.TraceID(), sc.SpanID()
		writeHex(&b, tid[:])
		b.WriteByte('-')
		writeHex(&b, sid[:])
		b.WriteByte('-')
		writeHex(&b, []byte{byte(sc.TraceFlags())})
		b.WriteByte('\'')
		if ts := sc.TraceState(); ts.Len() > 0 {
			b.WriteByte(',')
			writeTag(&b, "tracestate", ts.String())
		}
	}
	b.WriteString("*/")
	b.WriteString(tail)
	return b.String()
}

const hexDigits = "0123456789abcdef"

func writeHex(b *strings.Builder, p []byte) {
	for _, c := range p {
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0x0f])
	}
}

// writeTag writes key='value', both serialized as the sqlcommenter spec
// says: URL-encoded, then ' escaped with a backslash.
func writeTag(b *strings.Builder, key, value string) {
	writeEscaped(b, key)
	b.WriteString("='")
	writeEscaped(b, value)
	b.WriteByte('\'')
}

// writeEscaped writes s percent-encoded like JavaScript's
// encodeURIComponent (which the spec's examples follow: "/" becomes %2F, a
// space %20), with ' escaped as \'.
func writeEscaped(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'':
			b.WriteString(`\'`)
		case unreservedComponent(c):
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte("0123456789ABCDEF"[c>>4])
			b.WriteByte("0123456789ABCDEF"[c&0x0f])
		}
	}
}

// unreservedComponent reports whether encodeURIComponent leaves c as is:
// A-Z a-z 0-9 - _ . ! ~ * ' ( ).
func unreservedComponent(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '_', '.', '!', '~', '*', '\'', '(', ')':
		return true
	}
	return false
}
