package fingerprint

import (
	"strings"
	"testing"
	"unsafe"
)

// TestLongTextTagsAreCopies checks that the tags and trace state of a long
// statement share no memory with it, so that a tag kept for long does not
// keep the statement in memory; those of a short one may.
func TestLongTextTagsAreCopies(t *testing.T) {
	comment := " /*application='billing',route='%2Finvoices',tenant_id='acme',x='y'," +
		"traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',tracestate='k%3Dv'*/"
	for _, tc := range []struct {
		name      string
		body      string
		wantAlias bool
	}{
		{"short", "SELECT 1", true},
		{"long", "SELECT * FROM t WHERE id IN (" + strings.Repeat("1,", maxAliasedText) + "1)", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sql := tc.body + comment
			a := New(Config{KeepUnknownTags: true})
			for _, path := range []string{"uncached", "cached"} {
				res := a.Analyze(sql)
				vals := map[string]string{
					"application": res.Tags.Application, "route": res.Tags.Route, "tenant": res.Tags.Tenant,
					"tracestate": res.Trace.TraceState,
				}
				for k, v := range res.Tags.Extra {
					vals["extra key "+k] = k
					vals["extra value "+k] = v
				}
				if res.Tags.Application != "billing" || res.Tags.Route != "/invoices" || res.Trace.TraceState != "k=v" || res.Tags.Extra["x"] != "y" {
					t.Fatalf("tags %+v, trace state %q", res.Tags, res.Trace.TraceState)
				}
				aliased := false
				for k, v := range vals {
					if within(v, sql) {
						aliased = true
						if !tc.wantAlias {
							t.Errorf("%s: %s %q points into the %d-byte statement", path, k, v, len(sql))
						}
					}
				}
				if tc.wantAlias && !aliased {
					t.Errorf("%s: no tag of a short statement aliases it: Analyze allocates where it need not", path)
				}
			}
		})
	}
}

// within reports whether s's bytes lie inside text's.
func within(s, text string) bool {
	if s == "" {
		return false
	}
	p, lo := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.StringData(text)))
	return p >= lo && p < lo+uintptr(len(text))
}
