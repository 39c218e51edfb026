package observe_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/dotmac/pgtrace/observe"
)

// BenchmarkHandler measures the middleware's cost per request against a
// bare ServeMux and against otelhttp alone, with an SDK tracer that samples
// every span (and exports none) and an SDK meter.
func BenchmarkHandler(b *testing.B) {
	tp := sdktrace.NewTracerProvider()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /partners/{id}", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	for _, bc := range []struct {
		name string
		h    http.Handler
	}{
		{"mux", mux},
		{"otelhttp", otelhttp.NewHandler(mux, "", otelhttp.WithTracerProvider(tp), otelhttp.WithMeterProvider(mp))},
		{"observe", observe.NewHandler(mux, observe.WithTracerProvider(tp), observe.WithMeterProvider(mp))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/partners/7", nil)
			req.Header.Set("x-tenant-id", "acme")
			req.Header.Set("x-request-id", "req-1")
			b.ReportAllocs()
			for b.Loop() {
				bc.h.ServeHTTP(discardWriter{h: http.Header{}}, req)
			}
		})
	}
}

// discardWriter is a ResponseWriter that keeps nothing; a fresh header map
// per request would measure the map, not the middleware.
type discardWriter struct{ h http.Header }

func (w discardWriter) Header() http.Header {
	clear(w.h)
	return w.h
}
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// BenchmarkComment measures comment injection per query, with every tag
// present (sampled span, tenant, route) and for a query left alone.
func BenchmarkComment(b *testing.B) {
	var ctx context.Context
	mux := http.NewServeMux()
	mux.HandleFunc("GET /partners/{id}", func(w http.ResponseWriter, r *http.Request) { ctx = r.Context() })
	req := httptest.NewRequest("GET", "/partners/7", nil)
	req.Header.Set("x-tenant-id", "acme")
	req.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	observe.NewHandler(mux).ServeHTTP(httptest.NewRecorder(), req)

	const query = "SELECT p.id, p.name FROM partners p WHERE p.id = $1"
	b.Run("all-tags", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = observe.Comment(ctx, query)
		}
	})
	b.Run("already-commented", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = observe.Comment(ctx, query+" /* x */")
		}
	})
}
