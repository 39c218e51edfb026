package pipeline_test

import (
	"context"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/jackc/pgx/v5"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// TestServicePerApplicationOTLP: two applications behind one proxy are two
// services in the backend. Their statement and transaction spans arrive
// under resources named by their application_name, the proxy's connect
// spans under its own, and the metrics name the application.
func TestServicePerApplicationOTLP(t *testing.T) {
	rcv := otlptest.Start(t)
	otlpEnv(t, rcv)
	p := startProxyWith(t, time.Minute, func(c *export.Config) { c.ServiceNameFrom = export.ServiceFromApplicationName })
	ctx := context.Background()
	traces := map[string]string{}
	for _, app := range []string{"billing", "shipping"} {
		cfg, err := pgx.ParseConfig(p.dsn())
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"] = app
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		tp, traceID, _ := newTraceparent()
		traces[app] = traceID
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT count(*) FROM pg_class /*traceparent='"+tp+"'*/"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	service := func(s otlptest.Span) string {
		v, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name")
		str, _ := v.(string)
		return str
	}
	for app, traceID := range traces {
		spans := rcv.WaitSpans(t, namedWait, 4, func(s otlptest.Span) bool { return s.TraceID() == traceID })
		for _, s := range spans {
			if got := service(s); got != app {
				t.Errorf("%s span %q under service %q, want %q", app, s.GetName(), got, app)
			}
			if s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT {
				if ps, _ := otlptest.Attr(s.GetAttributes(), "peer.service"); ps != "postgresql" {
					t.Errorf("%s span %q: peer.service %v, want postgresql", app, s.GetName(), ps)
				}
			}
		}
	}
	connects := rcv.WaitSpans(t, namedWait, 2, func(s otlptest.Span) bool { return s.GetName() == "connect" })
	for _, s := range connects {
		if got := service(s); got != "pgtrace-e2e" {
			t.Errorf("connect span under service %q, want the proxy's own (OTEL_SERVICE_NAME)", got)
		}
	}
	rcv.WaitMetric(t, namedWait, "db.client.operation.duration", func(m otlptest.Metric) bool {
		seen := map[any]bool{}
		for _, dp := range m.GetHistogram().GetDataPoints() {
			if app, ok := otlptest.Attr(dp.GetAttributes(), "pgtrace.application"); ok {
				seen[app] = true
			}
		}
		return seen["billing"] && seen["shipping"]
	})
}
