package clients

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/dotmac/pgtrace/internal/testproxy"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// wait bounds each wait for the proxy's asynchronous stages, a client
// process, or an export interval.
const wait = 60 * time.Second

// proxyService is the service.name of pgtrace's own spans in these tests.
const proxyService = "pgtrace-clients"

// proxy is pgtrace as `pgtrace serve` assembles it (relay, fingerprint,
// detector, export over OTLP to rcv) in front of a throwaway database
// (internal/testproxy).
type proxy struct {
	*testproxy.Proxy
	pg       *pgtest.Server
	database string
	rcv      *otlptest.Receiver
}

// startProxy starts an OTLP receiver, a fresh database on the test
// PostgreSQL and pgtrace in front of it, exporting to the receiver with
// parent-based sampling (roots always). Everything stops when the test
// ends.
func startProxy(t *testing.T) *proxy {
	t.Helper()
	rcv := otlptest.Start(t)
	for k, v := range map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.Endpoint(), "OTEL_EXPORTER_OTLP_INSECURE": "true",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_SCHEDULE_DELAY": "50",
		"OTEL_BSP_MAX_QUEUE_SIZE": "20000", "OTEL_METRIC_EXPORT_INTERVAL": "60000",
		"OTEL_TRACES_SAMPLER": "parentbased_always_on", "OTEL_TRACES_SAMPLER_ARG": "",
		"OTEL_TRACES_SAMPLING_RATIO": "", "OTEL_SDK_DISABLED": "", "OTEL_SERVICE_NAME": proxyService,
		"OTEL_RESOURCE_ATTRIBUTES": "",
	} {
		t.Setenv(k, v)
	}
	pg := pgtest.Start(t)
	database := freshDatabase(t, pg)
	p := testproxy.Start(t, testproxy.Options{
		Upstream: pg.Addr(),
		// Errors only: every finding is a warning, and the tests make hundreds.
		Logger:          testproxy.Logger(t, slog.LevelError),
		Export:          export.Config{SlowThreshold: time.Second, KeepSlowSpans: true},
		ShutdownTimeout: 10 * time.Second,
	})
	return &proxy{Proxy: p, pg: pg, database: database, rcv: rcv}
}

// freshDatabase creates an empty database on pg, dropped when the test
// ends, and returns its name.
func freshDatabase(t *testing.T, pg *pgtest.Server) string {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	name := "clients_" + strings.ToLower(rand.Text()[:10])
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := c.Exec(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return name
}

// dsn is the URL of the test database through the proxy.
func (p *proxy) dsn() string { return pgtest.DSNAt(p.Addr, p.pg.User, p.pg.Password, p.database) }

// directDSN is the URL of the test database on PostgreSQL itself, for
// setting up a schema without going through the proxy.
func (p *proxy) directDSN() string {
	return pgtest.DSNAt(p.pg.Addr(), p.pg.User, p.pg.Password, p.database)
}

// libpqEnv is the proxy's address as libpq's variables, which node-postgres
// and psycopg2 read too.
func (p *proxy) libpqEnv() []string {
	host, port, _ := net.SplitHostPort(p.Addr)
	return []string{"PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + p.pg.User,
		"PGPASSWORD=" + p.pg.Password, "PGDATABASE=" + p.database, "PGSSLMODE=disable"}
}

// nPlusOnes waits until the detector holds at least n N+1 findings for
// which match holds, and returns them.
func (p *proxy) nPlusOnes(t *testing.T, n int, match func(detector.Finding) bool) []detector.Finding {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		var got []detector.Finding
		for _, f := range p.Detector.Findings(detector.FindingNPlusOne, time.Time{}) {
			if match(f) {
				got = append(got, f)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d matching N+1 findings after %v, want %d (detector: %+v; events dropped: %d)",
				len(got), wait, n, p.Detector.Stats(), p.Server.DroppedEvents())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// isStatementSpan reports whether s is one of pgtrace's statement spans.
func isStatementSpan(s otlptest.Span) bool {
	svc, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name")
	_, isQuery := otlptest.Attr(s.GetAttributes(), "pgtrace.fingerprint")
	return svc == proxyService && s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT && isQuery
}

// request is what a client reports about one request it made: the trace
// and span ids its statements were to be parented under.
type request struct {
	TraceID string `json:"trace_id"`
	SpanID  string `json:"span_id"`
	Sampled bool   `json:"sampled"`
}

// seedAuthors creates authors (n) and books (per author) directly on
// PostgreSQL, for the clients that do not make their own schema.
func (p *proxy) seedAuthors(t *testing.T, n, per int) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, p.directDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, fmt.Sprintf(`
CREATE TABLE authors (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE books (id serial PRIMARY KEY, author_id int NOT NULL REFERENCES authors, title text NOT NULL);
INSERT INTO authors SELECT i, 'author ' || i FROM generate_series(1, %d) i;
INSERT INTO books (author_id, title) SELECT a, 'book ' || a || '.' || b FROM generate_series(1, %d) a, generate_series(1, %d) b;`,
		n, n, per))
	if err != nil {
		t.Fatal(err)
	}
}
