package observe_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/baggage"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/dotmac/pgtrace/observe"
)

func ExampleSetup() {
	run := func(ctx context.Context) (err error) { // named, so that the shutdown error is kept
		shutdown, err := observe.Setup(ctx,
			observe.WithServiceName("partners"),
			observe.WithServiceVersion("1.4.0"))
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, shutdown(context.WithoutCancel(ctx))) }()

		// ... serve ...
		return nil
	}
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ok")
	// Output: ok
}

func ExampleNewHandler() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /partners/{id}", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		fmt.Fprintf(w, "tenant=%s route=%s", observe.Tenant(ctx), observe.Route(ctx))
	})
	h := observe.NewHandler(mux, observe.WithTenantRequired())

	for _, tenant := range []string{"acme", ""} {
		req := httptest.NewRequest("GET", "/partners/7", nil)
		if tenant != "" {
			req.Header.Set("x-tenant-id", tenant)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		fmt.Println(rec.Code, strings.TrimSpace(rec.Body.String()))
	}
	// Output:
	// 200 tenant=acme route=/partners/{id}
	// 400 {"error":"missing tenant header x-tenant-id"}
}

func ExampleNewTransport() {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Header.Get("x-tenant-id"), " ", r.Header.Get("x-request-id"))
	}))
	defer upstream.Close()

	// The tenant goes only to the hosts listed (here the test server's
	// address; in production names such as "billing.internal" or
	// "*.svc.cluster.local"); every host gets the trace context and the
	// request id.
	u, _ := url.Parse(upstream.URL)
	client := &http.Client{Transport: observe.NewTransport(nil, observe.WithTenantHosts(u.Host))}
	// In a handler behind NewHandler the context already carries both.
	ctx := observe.ContextWithRequestID(observe.ContextWithTenant(context.Background(), "acme"), "req-1")
	req, _ := http.NewRequestWithContext(ctx, "GET", upstream.URL, nil)
	resp, err := client.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
	// Output: acme req-1
}

func ExampleWithHTTPOptions() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "traced=", trace.SpanFromContext(r.Context()).SpanContext().IsValid())
	})
	mux.HandleFunc("GET /partners", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "traced=", trace.SpanFromContext(r.Context()).SpanContext().IsValid())
	})
	tp := sdktrace.NewTracerProvider() // Setup installs one globally
	defer tp.Shutdown(context.Background())

	// Health checks make no spans.
	h := observe.NewHandler(mux, observe.WithTracerProvider(tp),
		observe.WithHTTPOptions(otelhttp.WithFilter(func(r *http.Request) bool {
			return r.URL.Path != "/healthz"
		})))
	for _, path := range []string{"/healthz", "/partners"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		fmt.Println(path, rec.Body.String())
	}
	// Output:
	// /healthz traced=false
	// /partners traced=true
}

func ExampleWithIncomingBaggage() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		b := baggage.FromContext(r.Context())
		fmt.Fprintf(w, "tenant=%q team=%q", observe.Tenant(r.Context()), b.Member("team").Value())
	})
	for _, opts := range [][]observe.Option{nil, {observe.WithIncomingBaggage()}} {
		req := httptest.NewRequest("GET", "/", nil)
		req.Header.Set("baggage", "tenant.id=someone-else,team=payments")
		rec := httptest.NewRecorder()
		observe.NewHandler(mux, opts...).ServeHTTP(rec, req)
		fmt.Println(rec.Body.String())
	}
	// Output:
	// tenant="" team=""
	// tenant="" team="payments"
}

func ExampleNewLogHandler() {
	noTime := func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}
	logger := slog.New(observe.NewLogHandler(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{ReplaceAttr: noTime})))

	// A request context, as NewHandler makes it.
	ctx := observe.ContextWithTenant(sampledContext(context.Background(), true), "acme")
	logger.InfoContext(ctx, "commission recorded", "partner_id", 7)
	// Output:
	// {"level":"INFO","msg":"commission recorded","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","tenant.id":"acme","partner_id":7}
}

func ExampleComment() {
	ctx := context.Background()
	shutdown, err := observe.Setup(ctx, observe.WithServiceName("partners"))
	if err != nil {
		log.Fatal(err)
	}
	defer shutdown(ctx)

	// The current span is the traceparent, with its sampled flag: -01 when
	// sampled, -00 when not (pgtrace then follows that decision, and still
	// groups the request's N+1s by its trace id).
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	sampled := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled,
	}))
	sampled = observe.ContextWithTenant(sampled, "acme")
	unsampled := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid,
	}))

	fmt.Println(observe.Comment(sampled, "SELECT * FROM partners WHERE id = $1;"))
	fmt.Println(observe.Comment(unsampled, "SELECT 1"))
	fmt.Println(observe.Comment(sampled, "SELECT 1 /* already commented */"))
	// Output:
	// SELECT * FROM partners WHERE id = $1 /*application='partners',tenant_id='acme',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/;
	// SELECT 1 /*application='partners',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00'*/
	// SELECT 1 /* already commented */
}

func ExampleOpenDB() {
	// Exec mode: see "Client-side statement caches" in the package
	// documentation.
	db, err := observe.OpenDB("pgx", "postgres://app@127.0.0.1:6432/app?default_query_exec_mode=exec",
		observe.WithServiceName("partners"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	// Behind NewHandler, r.Context() carries the server span, route and
	// tenant; the statement reaches PostgreSQL (through pgtrace) as
	// SELECT name FROM partners WHERE id = $1 /*application='partners',db_driver='pgx',route=...,traceparent=...*/
	var name string
	_ = db.QueryRowContext(context.Background(), "SELECT name FROM partners WHERE id = $1", 7).Scan(&name)
}

func ExampleWrapConnector() {
	cfg, err := pgx.ParseConfig("postgres://app@127.0.0.1:6432/app")
	if err != nil {
		log.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	db := sql.OpenDB(observe.WrapConnector(stdlib.GetConnector(*cfg), observe.WithDriverName("pgx")))
	defer db.Close()
}

func ExampleTracedTx() {
	var db *sql.DB // from OpenDB
	record := func(ctx context.Context, partnerID int64, amount float64) error {
		return observe.TracedTx(ctx, db, "record commission", func(ctx context.Context, tx *sql.Tx) error {
			// Both statements carry the "record commission" span as traceparent.
			if _, err := tx.ExecContext(ctx, "SELECT 1 FROM partners WHERE id = $1 FOR UPDATE", partnerID); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO commissions (partner_id, amount) VALUES ($1, $2)", partnerID, amount)
			return err
		})
	}
	_ = record
}

func ExampleTracedOp() {
	err := observe.TracedOp(context.Background(), "rebuild partner report", func(ctx context.Context) error {
		// Statements run with ctx are parented under the operation's span.
		return nil
	})
	fmt.Println(err)
	// Output: <nil>
}

func ExampleNewBusinessMetrics() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	business := observe.NewBusinessMetrics(observe.WithMeterProvider(mp))

	ctx := context.Background()
	business.RecordCommission(ctx, observe.Commission{PartnerID: "7", Base: 1000, Rate: 0.1, Amount: 100})
	business.RecordSLAViolation(ctx, observe.SLAViolation{PartnerID: "7", Metric: "response_time", Severity: "critical"})

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		switch d := m.Data.(type) {
		case metricdata.Histogram[float64]:
			fmt.Println(m.Name, m.Unit, d.DataPoints[0].Sum)
		case metricdata.Sum[int64]:
			fmt.Println(m.Name, m.Unit, d.DataPoints[0].Value)
		}
	}
	// Output:
	// dotmac.commission.amount {USD} 100
	// dotmac.sla.violations {violation} 1
}

func ExampleDebugHandler() {
	mux := http.NewServeMux()
	mux.Handle("GET "+observe.DebugPath, observe.DebugHandler())
	srv := httptest.NewServer(observe.NewHandler(mux))
	defer srv.Close()

	req, _ := http.NewRequest("GET", srv.URL+observe.DebugPath, nil)
	req.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(strings.Contains(string(body), `"trace_id":"0af7651916cd43dd8448eb211c80319c"`),
		strings.Contains(string(body), `"sampled":true`))
	// Output: true true
}

func ExampleWithDefaultServiceName() {
	// "partners" unless the deployment names the service with
	// OTEL_SERVICE_NAME or service.name in OTEL_RESOURCE_ATTRIBUTES; the
	// version comes from OTEL_RESOURCE_ATTRIBUTES, else SERVICE_VERSION,
	// else the build information.
	ctx := context.Background()
	shutdown, err := observe.Setup(ctx, observe.WithDefaultServiceName("partners"))
	if err != nil {
		log.Fatal(err)
	}
	defer shutdown(ctx)
}
