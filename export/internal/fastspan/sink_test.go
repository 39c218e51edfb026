package fastspan

import (
	"reflect"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// TestSpanMethods calls every exported method of ReadOnlySpan on a Span:
// one the SDK adds and Span lacks would reach the nil embedded interface
// and panic in an exporter.
func TestSpanMethods(t *testing.T) {
	var s sdktrace.ReadOnlySpan = &Span{}
	v := reflect.ValueOf(s)
	it := reflect.TypeFor[sdktrace.ReadOnlySpan]()
	for i := range it.NumMethod() {
		m := it.Method(i)
		if !m.IsExported() {
			continue
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("Span does not define ReadOnlySpan.%s: %v", m.Name, r)
				}
			}()
			v.MethodByName(m.Name).Call(nil)
		}()
	}
}

func TestTruncate(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"éééé", 2, "éé"},
		{"a\xffbc", 2, "ab"},
		{"abc", 0, ""},
	} {
		if got := truncate(tt.in, tt.n); got != tt.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
