package observe

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func testSpanContext(sampled bool, state string) trace.SpanContext {
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	ts, _ := trace.ParseTraceState(state)
	var flags trace.TraceFlags
	if sampled {
		flags = trace.FlagsSampled
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, TraceState: ts, Remote: true})
}

// requestContext is what the middleware would give a handler: tenant,
// request id and a request whose pattern the ServeMux set.
func requestContext(ctx context.Context, tenant, pattern string) context.Context {
	r := &http.Request{Pattern: pattern}
	return context.WithValue(ctx, ctxKey{}, &requestState{tenant: tenant, req: r})
}

func TestComment(t *testing.T) {
	const tp = "traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'"
	bg := context.Background()
	sampled := trace.ContextWithSpanContext(bg, testSpanContext(true, ""))
	for _, tc := range []struct {
		name     string
		app, drv string
		ctx      context.Context
		in, want string
	}{
		{name: "nothing to add", ctx: bg, in: "SELECT 1", want: "SELECT 1"},
		{name: "static tags", app: "partners", drv: "pgx", ctx: bg, in: "SELECT 1",
			want: "SELECT 1 /*application='partners',db_driver='pgx'*/"},
		{name: "all tags sorted", app: "partners", drv: "pgx",
			ctx: requestContext(trace.ContextWithSpanContext(bg, testSpanContext(true, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")), "acme", "GET /partners/{id}"),
			in:  "SELECT * FROM partners WHERE id = $1",
			want: "SELECT * FROM partners WHERE id = $1 /*application='partners',db_driver='pgx',route='%2Fpartners%2F%7Bid%7D',tenant_id='acme'," +
				tp + ",tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/"},
		{name: "unsampled span keeps its traceparent with flags 00", ctx: requestContext(trace.ContextWithSpanContext(bg, testSpanContext(false, "a=b")), "acme", ""),
			in: "SELECT 1", want: "SELECT 1 /*tenant_id='acme',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00',tracestate='a%3Db'*/"},
		{name: "no span context, no traceparent", ctx: requestContext(bg, "acme", ""), in: "SELECT 1", want: "SELECT 1 /*tenant_id='acme'*/"},
		{name: "only traceparent", ctx: sampled, in: "SELECT 1", want: "SELECT 1 /*" + tp + "*/"},
		{name: "escaping", app: "it's a/b c", ctx: requestContext(bg, "t'1=ü", ""), in: "SELECT 1",
			want: `SELECT 1 /*application='it\'s%20a%2Fb%20c',tenant_id='t\'1%3D%C3%BC'*/`},
		{name: "trailing semicolon", ctx: sampled, in: "SELECT 1;\n", want: "SELECT 1 /*" + tp + "*/;"},
		{name: "trailing space", ctx: sampled, in: "SELECT 1  ", want: "SELECT 1 /*" + tp + "*/"},
		{name: "existing block comment", app: "x", ctx: sampled, in: "SELECT 1 /*action='a'*/", want: "SELECT 1 /*action='a'*/"},
		{name: "existing leading comment", app: "x", ctx: sampled, in: "/* hi */ SELECT 1", want: "/* hi */ SELECT 1"},
		{name: "line comment", app: "x", ctx: sampled, in: "SELECT 1 -- note", want: "SELECT 1 -- note"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := newCommenter(tc.app, tc.drv).comment(tc.ctx, tc.in, true)
			if got != tc.want {
				t.Errorf("comment(%q)\n got %s\nwant %s", tc.in, got, tc.want)
			}
		})
	}
}

func TestCommentStaticOnly(t *testing.T) {
	ctx := requestContext(trace.ContextWithSpanContext(context.Background(), testSpanContext(true, "")), "acme", "GET /x")
	got := newCommenter("app", "pgx").comment(ctx, "SELECT 1", false)
	if want := "SELECT 1 /*application='app',db_driver='pgx'*/"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// TestEscapingRoundTrip checks that every byte survives the spec's
// serialization: unescape \' then URL-decode.
func TestEscapingRoundTrip(t *testing.T) {
	var all []byte
	for c := 0; c < 256; c++ {
		all = append(all, byte(c))
	}
	for _, s := range []string{string(all), "/partners/{id}", "a b+c", "ü'\"*/"} {
		var b strings.Builder
		writeEscaped(&b, s)
		enc := b.String()
		for i := 0; i+1 < len(enc); i++ {
			if enc[i] == '*' && enc[i+1] == '/' {
				t.Fatalf("encoded %q contains */: %q", s, enc)
			}
		}
		unq := []byte{}
		for i := 0; i < len(enc); i++ {
			if enc[i] == '\\' && i+1 < len(enc) {
				i++
			}
			unq = append(unq, enc[i])
		}
		dec, err := url.PathUnescape(string(unq))
		if err != nil || dec != s {
			t.Errorf("round trip of %q: got %q, %v", s, dec, err)
		}
	}
}

func TestLimiter(t *testing.T) {
	l := newLimiter(TenantIDKey, 2)
	for _, tc := range []struct{ in, want string }{
		{"a", "a"}, {"b", "b"}, {"a", "a"}, {"c", OverflowValue}, {"b", "b"},
	} {
		if got := l.attr(tc.in).Value.AsString(); got != tc.want {
			t.Errorf("attr(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
