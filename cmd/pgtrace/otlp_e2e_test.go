package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dotmac/pgtrace/internal/otelenv"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/internal/pgtest"
)

// find returns the records whose message starts with prefix.
func (s *logSink) find(prefix string) []logRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []logRecord
	for _, r := range s.records {
		if strings.HasPrefix(r.str("msg"), prefix) {
			out = append(out, r)
		}
	}
	return out
}

// otlpTestEnv sets the OTEL_* variables of a test that exports to endpoint
// and clears the rest.
func otlpTestEnv(t *testing.T, endpoint, protocol string) {
	t.Helper()
	for k, v := range map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "",
		"OTEL_EXPORTER_OTLP_INSECURE": "", "OTEL_EXPORTER_OTLP_TIMEOUT": "", "OTEL_SDK_DISABLED": "",
		"OTEL_TRACES_EXPORTER": "", "OTEL_METRICS_EXPORTER": "", "OTEL_TRACES_SAMPLER": "parentbased_always_on",
		"OTEL_TRACES_SAMPLER_ARG": "", "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "100",
		"OTEL_SERVICE_NAME": "pgtrace", "OTEL_RESOURCE_ATTRIBUTES": "",
	} {
		t.Setenv(k, v)
	}
}

// runTracedQuery runs one query through pgtrace at listen under a new
// trace and returns the trace id and the parent span id.
func runTracedQuery(t *testing.T, listen string, pg *pgtest.Server) (traceID, parentID string) {
	t.Helper()
	var ids [24]byte
	_, _ = rand.Read(ids[:])
	traceID, parentID = hex.EncodeToString(ids[:16]), hex.EncodeToString(ids[16:])
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(listen, pg.User, pg.Password, pg.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	sql := "SELECT 1 /*traceparent='00-" + traceID + "-" + parentID + "-01'*/"
	if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeExec); err != nil {
		t.Fatal(err)
	}
	return traceID, parentID
}

// TestJaegerWithoutMetrics: pointed at a real Jaeger, which takes traces
// only, over gRPC and over HTTP, pgtrace says once at start where OTLP
// goes, says once that the collector does not accept metrics and what to
// set, then stops trying (no export errors every interval, none at
// shutdown), while the traces arrive. `pgtrace check` probes both signals
// and says the same.
func TestJaegerWithoutMetrics(t *testing.T) {
	js := startJaeger(t, jaegerBinary(t))
	pg := pgtest.Start(t)
	for _, tt := range []struct{ protocol, endpoint string }{
		{"grpc", "http://" + js.otlpAddr},
		{"http/protobuf", "http://" + js.httpAddr},
	} {
		t.Run(tt.protocol, func(t *testing.T) {
			otlpTestEnv(t, tt.endpoint, tt.protocol)
			traces, metrics := otelenv.OTLP("traces", os.Getenv), otelenv.OTLP("metrics", os.Getenv)
			p := startPgtrace(t, "--upstream", pg.Addr())
			start := p.logs.find("OTLP export")
			if len(start) != 1 || start[0].str("traces") != traces.String() || start[0].str("metrics") != metrics.String() ||
				!strings.Contains(start[0].str("traces"), tt.endpoint) {
				t.Errorf("startup lines %v, want one naming %s for traces and metrics", start, tt.endpoint)
			}

			traceID, parentID := runTracedQuery(t, p.ready.str("listen"), pg)
			refused := "the collector at " + metrics.URL + " does not accept metrics; set OTEL_METRICS_EXPORTER=none"
			w := p.logs.wait(t, refused, 20*time.Second)
			if w.str("level") != "WARN" {
				t.Errorf("refusal line %v, want WARN", w)
			}
			time.Sleep(time.Second) // ten more metric intervals
			if err := p.stop(t, errSigTerm); err != errSigTerm {
				t.Errorf("pgtrace stopped with %v", err)
			}
			js.waitTrace(t, traceID, func(s jaegerSpan) bool { return s.ParentSpanID == parentID })
			if n := len(p.logs.find(refused)); n != 1 {
				t.Errorf("%d refusal lines, want 1", n)
			}
			for _, r := range p.logs.find("") {
				if lvl := r.str("level"); lvl == "ERROR" || strings.Contains(r.str("msg"), "export error") || strings.Contains(r.str("msg"), "did not finish") {
					t.Errorf("log line %v: want no errors about the refused metrics", r)
				}
			}

			// check: traces pass, metrics fail with the fix; switching
			// metrics off makes it pass.
			var out bytes.Buffer
			code := execute(t.Context(), []string{"pgtrace", "check", "--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""}, nil, &out, &out)
			if code != 1 || !strings.Contains(out.String(), "PASS  traces") || !strings.Contains(out.String(), "FAIL  metrics") ||
				!strings.Contains(out.String(), "set OTEL_METRICS_EXPORTER=none") {
				t.Errorf("pgtrace check against Jaeger: exit %d\n%s\nwant exit 1, traces PASS, metrics FAIL naming OTEL_METRICS_EXPORTER=none", code, out.String())
			}
			t.Setenv("OTEL_METRICS_EXPORTER", "none")
			out.Reset()
			code = execute(t.Context(), []string{"pgtrace", "check", "--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""}, nil, &out, &out)
			if code != 0 || !strings.Contains(out.String(), "INFO  metrics   OTLP metrics off (OTEL_METRICS_EXPORTER=none)") {
				t.Errorf("pgtrace check with OTEL_METRICS_EXPORTER=none: exit %d\n%s", code, out.String())
			}
		})
	}
}

// deadCollector accepts TCP connections and never answers.
func deadCollector(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return lis.Addr().String()
}

// TestShutdownWithDeadCollector: when the collector never answers, the
// shutdown ends with one line that names what was not sent (spans and
// metric points) and the cause, once.
func TestShutdownWithDeadCollector(t *testing.T) {
	pg := pgtest.Start(t)
	otlpTestEnv(t, "http://"+deadCollector(t), "grpc")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000") // spans wait for the shutdown
	t.Setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "500") // each export gives up after 0.5 s
	p := startPgtrace(t, "--upstream", pg.Addr())
	runTracedQuery(t, p.ready.str("listen"), pg)
	time.Sleep(200 * time.Millisecond) // the statement reaches the exporter
	p.stop(t, errSigTerm)

	rs := p.logs.find("OTLP export did not finish: spans and metric points not sent")
	if len(rs) != 1 {
		t.Fatalf("%d shutdown reports, want 1:\n%s", len(rs), p.logs)
	}
	r := rs[0]
	spans, _ := r["spans_not_sent"].(float64)
	points, _ := r["metric_points_not_sent"].(float64)
	cause := r.str("cause")
	if spans < 1 || points < 1 || cause == "" || strings.Contains(cause, "\n") {
		t.Errorf("shutdown report %v, want spans and metric points not sent and a one-line cause", r)
	}
	seen := map[string]bool{}
	for _, c := range strings.Split(cause, "; ") {
		if seen[c] {
			t.Errorf("cause %q repeats %q", cause, c)
		}
		seen[c] = true
	}
	if len(p.logs.find("observation pipeline did not shut down cleanly")) > 0 {
		t.Errorf("the old multi-line error is still logged:\n%s", p.logs)
	}
}

// TestSpanPathFlag: with --span-path fast and sdk alike, a statement's
// span reaches the collector under its parent, named by its summary, with
// its normalized text.
func TestSpanPathFlag(t *testing.T) {
	pg := pgtest.Start(t)
	for _, path := range []string{"fast", "sdk"} {
		t.Run(path, func(t *testing.T) {
			rcv := otlptest.Start(t)
			otlpTestEnv(t, rcv.Endpoint(), "grpc")
			p := startPgtrace(t, "--upstream", pg.Addr(), "--span-path", path)
			traceID, parentID := runTracedQuery(t, p.ready.str("listen"), pg)
			spans := rcv.WaitSpans(t, 20*time.Second, 1, func(s otlptest.Span) bool {
				return s.TraceID() == traceID && s.ParentSpanID() == parentID
			})
			s := spans[0]
			svc, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name")
			if s.GetName() != "SELECT" || svc != "pgtrace" { // pgx sets no application_name
				t.Errorf("span %q under service %v", s.GetName(), svc)
			}
			if text, _ := otlptest.Attr(s.GetAttributes(), "db.query.text"); text != "SELECT $1" {
				t.Errorf("db.query.text = %v", text)
			}
			if err := p.stop(t, errSigTerm); err != errSigTerm {
				t.Errorf("stop: %v", err)
			}
		})
	}
}
