package pipeline_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/dotmac/pgtrace/internal/testproxy"
	"github.com/jackc/pgx/v5"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// proxy is the whole observing proxy, as `pgtrace serve` assembles it, in
// front of a real PostgreSQL (internal/testproxy).
type proxy struct {
	*testproxy.Proxy
	pg *pgtest.Server
}

func startProxy(t *testing.T, slow time.Duration) *proxy {
	t.Helper()
	return startProxyWith(t, slow, nil)
}

// startProxyWith is startProxy with the exporter's configuration changed by
// configure.
func startProxyWith(t *testing.T, slow time.Duration, configure func(*export.Config)) *proxy {
	t.Helper()
	pg := pgtest.Start(t)
	cfg := export.Config{SlowThreshold: slow, KeepSlowSpans: true}
	if configure != nil {
		configure(&cfg)
	}
	return &proxy{Proxy: testproxy.Start(t, testproxy.Options{Upstream: pg.Addr(), Export: cfg}), pg: pg}
}

func (p *proxy) dsn() string { return pgtest.DSNAt(p.Addr, p.pg.User, p.pg.Password, p.pg.Database) }

// newTraceparent returns a sampled traceparent with fresh ids.
func newTraceparent() (header, traceID, spanID string) {
	var b [24]byte
	_, _ = rand.Read(b[:])
	traceID, spanID = hex.EncodeToString(b[:16]), hex.EncodeToString(b[16:])
	return fmt.Sprintf("00-%s-%s-01", traceID, spanID), traceID, spanID
}

func otlpEnv(t *testing.T, rcv *otlptest.Receiver) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.Endpoint())
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
	t.Setenv("OTEL_SDK_DISABLED", "")
	t.Setenv("OTEL_SERVICE_NAME", "pgtrace-e2e")
}

func TestEndToEndOTLP(t *testing.T) {
	rcv := otlptest.Start(t)
	otlpEnv(t, rcv)
	p := startProxy(t, time.Second)
	ctx := context.Background()

	conn, err := pgx.Connect(ctx, p.dsn())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	const wait = 15 * time.Second
	clientOf := func(traceID string) func(otlptest.Span) bool {
		return func(s otlptest.Span) bool {
			return s.TraceID() == traceID && s.GetKind() == tracepb.Span_SPAN_KIND_CLIENT
		}
	}

	t.Run("pgx extended with traceparent", func(t *testing.T) {
		tp, traceID, spanID := newTraceparent()
		sql := "SELECT relname FROM pg_class WHERE oid = $1 /*traceparent='" + tp + "'*/"
		res := p.Analyzer.Analyze(sql)
		want := res.Query(0)
		for range 5 {
			var name string
			// QueryExecModeExec sends Parse, Bind and Execute in one batch, so
			// the comment applies to every execution. (pgx's default mode is
			// the next subtest.)
			if err := conn.QueryRow(ctx, sql, pgx.QueryExecModeExec, 1259).Scan(&name); err != nil {
				t.Fatal(err)
			}
		}
		spans := rcv.WaitSpans(t, wait, 1, clientOf(traceID))
		s := spans[0]
		if s.ParentSpanID() != spanID {
			t.Errorf("parent span id = %s, want the traceparent's %s", s.ParentSpanID(), spanID)
		}
		if s.GetName() != want.Summary {
			t.Errorf("span name = %q, want %q", s.GetName(), want.Summary)
		}
		host, port, _ := net.SplitHostPort(p.pg.Addr())
		a := otlptest.Attrs(s.GetAttributes())
		for k, v := range map[string]any{
			"db.system.name": "postgresql", "db.system": "postgresql",
			"db.namespace": p.pg.Database, "db.name": p.pg.Database,
			"db.query.text": want.Normalized, "db.statement": want.Normalized,
			"db.query.summary": want.Summary, "db.operation.name": want.Operation, "db.operation": want.Operation,
			"db.collection.name": want.Collection, "pgtrace.fingerprint": want.Fingerprint,
			"server.address": host, "server.port": mustAtoi(t, port),
			"client.address": "127.0.0.1", "db.response.returned_rows": int64(1),
		} {
			if a[k] != v {
				t.Errorf("attribute %s = %v (%T), want %v (%T)", k, a[k], a[k], v, v)
			}
		}
		if strings.Contains(fmt.Sprint(a), "1259") {
			t.Errorf("a bind value leaked into the attributes: %v", a)
		}
		if svc, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name"); svc != "pgtrace-e2e" {
			t.Errorf("service.name = %v, want OTEL_SERVICE_NAME", svc)
		}

		// Metrics: all five executions counted in one histogram point.
		rcv.WaitMetric(t, wait, "db.client.operation.duration", func(m otlptest.Metric) bool {
			for _, dp := range m.GetHistogram().GetDataPoints() {
				if s, _ := otlptest.Attr(dp.GetAttributes(), "db.query.summary"); s == want.Summary {
					return dp.GetCount() == 5
				}
			}
			return false
		})
	})

	t.Run("error status", func(t *testing.T) {
		tp, traceID, spanID := newTraceparent()
		_, err := conn.Exec(ctx, "SELECT * FROM no_such_table_e2e /*traceparent='"+tp+"'*/")
		if err == nil {
			t.Fatal("query of a missing table succeeded")
		}
		s := rcv.WaitSpans(t, wait, 1, clientOf(traceID))[0]
		if s.ParentSpanID() != spanID {
			t.Errorf("parent = %s, want %s", s.ParentSpanID(), spanID)
		}
		if s.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR || !strings.Contains(s.GetStatus().GetMessage(), "no_such_table_e2e") {
			t.Errorf("status = %v, want an error naming the table", s.GetStatus())
		}
		a := otlptest.Attrs(s.GetAttributes())
		if a["db.response.status_code"] != "42P01" || a["error.type"] != "42P01" {
			t.Errorf("status code attributes = %v / %v, want 42P01", a["db.response.status_code"], a["error.type"])
		}
	})

	t.Run("transaction", func(t *testing.T) {
		tp, traceID, spanID := newTraceparent()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1 /*traceparent='"+tp+"'*/"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 2 /*traceparent='"+tp+"'*/"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// BEGIN, two SELECTs and COMMIT, all under the transaction span.
		spans := rcv.WaitSpans(t, wait, 5, func(s otlptest.Span) bool { return s.TraceID() == traceID })
		var txSpan otlptest.Span
		for _, s := range spans {
			if s.GetName() == "transaction" {
				txSpan = s
			}
		}
		if txSpan.Span == nil {
			t.Fatalf("no transaction span among %d spans", len(spans))
		}
		if txSpan.ParentSpanID() != spanID {
			t.Errorf("transaction parent = %s, want %s", txSpan.ParentSpanID(), spanID)
		}
		var children []string
		for _, s := range spans {
			if s.Span != txSpan.Span {
				if s.ParentSpanID() != txSpan.SpanID() {
					t.Errorf("%s parent = %s, want the transaction span", s.GetName(), s.ParentSpanID())
				}
				children = append(children, s.GetName())
			}
		}
		if len(children) != 4 || txSpan.GetStartTimeUnixNano() > minStart(spans) {
			t.Errorf("transaction children %v (want BEGIN, 2 SELECTs, COMMIT), tx start %d, earliest %d",
				children, txSpan.GetStartTimeUnixNano(), minStart(spans))
		}
	})

	t.Run("psql simple query", func(t *testing.T) {
		tp, traceID, spanID := newTraceparent()
		host, port, _ := net.SplitHostPort(p.Addr)
		cmd := exec.Command("psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", p.pg.User, "-d", p.pg.Database,
			"-c", "SELECT count(*) FROM pg_namespace /*traceparent='"+tp+"'*/")
		cmd.Env = append(cmd.Environ(), "PGPASSWORD="+p.pg.Password, "PGSSLMODE=disable")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("psql: %v\n%s", err, out)
		}
		s := rcv.WaitSpans(t, wait, 1, clientOf(traceID))[0]
		if s.ParentSpanID() != spanID {
			t.Errorf("parent = %s, want %s", s.ParentSpanID(), spanID)
		}
		if a, _ := otlptest.Attr(s.GetAttributes(), "db.collection.name"); a != "pg_namespace" {
			t.Errorf("db.collection.name = %v", a)
		}
		// psql's connection got a connect span.
		rcv.WaitSpans(t, wait, 1, func(s otlptest.Span) bool {
			app, _ := otlptest.Attr(s.GetAttributes(), "pgtrace.application")
			return s.GetName() == "connect" && app == "psql"
		})
	})
}

func minStart(spans []otlptest.Span) uint64 {
	m := ^uint64(0)
	for _, s := range spans {
		m = min(m, s.GetStartTimeUnixNano())
	}
	return m
}

func mustAtoi(t *testing.T, s string) int64 {
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDeadCollectorThroughProxy: with an OTLP endpoint that accepts TCP and
// never answers, queries through the proxy keep their latency, spans are
// dropped and counted, and memory stays flat.
func TestDeadCollectorThroughProxy(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c: // kept open, never read or answered
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		close(held)
		for c := range held {
			c.Close()
		}
	})
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+lis.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30000")
	t.Setenv("OTEL_BSP_MAX_QUEUE_SIZE", "64")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	t.Setenv("OTEL_SDK_DISABLED", "")
	p := startProxy(t, time.Second)
	p.FlushMayFail = true

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.dsn())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// mean runs n queries and returns their mean latency.
	mean := func(n int) time.Duration {
		start := time.Now()
		for i := range n {
			var x int
			if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&x); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(n)
	}
	mean(50)
	before := mean(100) // the span queues still have room
	mean(400)           // fill them
	heap0 := heapInuse()
	after := mean(1000)
	heap1 := heapInuse()
	t.Logf("query latency %v before the queues filled, %v after; %d spans dropped; heap %d → %d KiB",
		before, after, p.Exporter.SpansDropped(), heap0>>10, heap1>>10)
	if p.Exporter.SpansDropped() == 0 {
		t.Error("no spans dropped: the dead collector's queue never filled")
	}
	if after > 10*before+time.Millisecond {
		t.Errorf("query latency rose from %v to %v with a dead collector", before, after)
	}
	if heap1 > heap0+16<<20 {
		t.Errorf("heap grew from %d to %d KiB", heap0>>10, heap1>>10)
	}
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
