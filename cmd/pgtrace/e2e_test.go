package main

// Issue 6, end to end: the partners example service, built and run as its
// own process, talks to PostgreSQL through `pgtrace serve`; both export to
// one OTLP receiver. The test plays the HTTP client, so it chooses each
// request's trace id (a traceparent header) and can find everything that
// request caused: partners' server span, pgtrace's query spans under it,
// and pgtrace's findings.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/internal/pgtest"
)

// e2eWait bounds each wait for another process or an export interval.
const e2eWait = 30 * time.Second

// e2eDatabase creates an empty database on pg for one test, dropped when
// the test ends, and returns its name.
func e2eDatabase(t *testing.T, pg *pgtest.Server) string {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	name := "pgtrace_e2e_" + strings.ToLower(rand.Text()[:10])
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

// buildPartners builds the example service into a temporary directory.
func buildPartners(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "partners")
	// go test puts its own go command first on PATH; the module root is
	// two levels up from this package.
	cmd := exec.Command("go", "build", "-o", bin, "./examples/partners")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/partners: %v\n%s", err, out)
	}
	return bin
}

// stopProcess sends cmd SIGTERM and waits until exited closes (after
// cmd.Wait); past 10 s it kills the process. It reports whether SIGTERM was
// enough.
func stopProcess(cmd *exec.Cmd, exited <-chan struct{}) bool {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return true
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return false
	}
}

// lockedBuffer collects a subprocess's stderr for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startPartners runs the partners binary with env added to this process's
// environment, waits for its "listening" line and returns the address.
// The process is stopped (SIGTERM, then killed) when the test ends.
func startPartners(t *testing.T, bin string, env ...string) string {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start partners: %v", err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() {
		if !stopProcess(cmd, exited) {
			t.Errorf("partners did not stop on SIGTERM; killed it")
		}
	})

	// The reader owns stdout until EOF; cmd.Wait runs after it, as
	// StdoutPipe requires.
	addrc := make(chan string, 1)
	var lines lockedBuffer
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(&lines, sc.Text())
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "listening" && rec.Addr != "" {
				select {
				case addrc <- rec.Addr:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
	}()
	select {
	case addr := <-addrc:
		return addr
	case <-exited:
		t.Fatalf("partners exited before listening: %v\nstdout:\n%s\nstderr:\n%s", cmd.ProcessState, lines.String(), stderr)
	case <-time.After(e2eWait):
		t.Fatalf("partners not listening after %v\nstdout:\n%s\nstderr:\n%s", e2eWait, lines.String(), stderr)
	}
	return ""
}

// e2eTraceparent returns a sampled W3C traceparent with fresh ids.
func e2eTraceparent() (header, traceID string) {
	var b [24]byte
	_, _ = rand.Read(b[:])
	traceID = hex.EncodeToString(b[:16])
	return fmt.Sprintf("00-%s-%s-01", traceID, hex.EncodeToString(b[16:])), traceID
}

// partnersGet sends GET url as a client under a new trace and returns the
// status and the trace id. tenant "" sends no x-tenant-id header.
func partnersGet(t *testing.T, url, tenant string) (int, string) {
	t.Helper()
	header, traceID := e2eTraceparent()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("traceparent", header)
	if tenant != "" {
		req.Header.Set("x-tenant-id", tenant)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && !json.Valid(body) {
		t.Errorf("GET %s: invalid JSON %q", url, body)
	}
	return resp.StatusCode, traceID
}

func serviceName(s otlptest.Span) string {
	v, _ := otlptest.Attr(s.Resource.GetAttributes(), "service.name")
	name, _ := v.(string)
	return name
}

func TestEndToEndPartnersThroughPgtrace(t *testing.T) {
	bin := buildPartners(t)
	pg := pgtest.Start(t)
	db := e2eDatabase(t, pg)
	rcv := otlptest.Start(t)
	for k, v := range map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":         rcv.Endpoint(),
		"OTEL_EXPORTER_OTLP_INSECURE":         "true",
		"OTEL_EXPORTER_OTLP_PROTOCOL":         "grpc",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":  "",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "",
		"OTEL_BSP_SCHEDULE_DELAY":             "100",
		"OTEL_METRIC_EXPORT_INTERVAL":         "500",
		"OTEL_TRACES_SAMPLER":                 "parentbased_always_on",
		"OTEL_SDK_DISABLED":                   "",
		"OTEL_SERVICE_NAME":                   "", // pgtrace's default name
		"OTEL_RESOURCE_ATTRIBUTES":            "",
	} {
		t.Setenv(k, v)
	}

	p := startPgtrace(t, "--upstream", pg.Addr(), "--n-plus-one-threshold", "5")
	listen, adminAddr := p.ready.str("listen"), p.ready.str("admin")
	api := startPartners(t, bin,
		"PARTNERS_DSN="+pgtest.DSNAt(listen, pg.User, pg.Password, db),
		"PARTNERS_ADDR=127.0.0.1:0",
		"OTEL_SERVICE_NAME=partners",
		"OTEL_LOGS_EXPORTER=none", // the receiver takes traces and metrics only
	)
	base := "http://" + api

	// A request the tenant middleware refuses; sent first, so that the
	// later requests' spans arriving bounds the wait for any of its own.
	code, refusedTrace := partnersGet(t, base+"/partners/report", "")
	if code != http.StatusBadRequest {
		t.Errorf("GET /partners/report without x-tenant-id = %d, want 400", code)
	}
	code, reportTrace := partnersGet(t, base+"/partners/report", "acme")
	if code != http.StatusOK {
		t.Fatalf("GET /partners/report = %d", code)
	}
	code, loopTrace := partnersGet(t, base+"/partners/report-n-plus-one", "acme")
	if code != http.StatusOK {
		t.Fatalf("GET /partners/report-n-plus-one = %d", code)
	}

	serverSpan := func(traceID string) otlptest.Span {
		t.Helper()
		return rcv.WaitSpans(t, e2eWait, 1, func(s otlptest.Span) bool {
			return s.TraceID() == traceID && s.GetKind() == tracepb.Span_SPAN_KIND_SERVER && serviceName(s) == "partners"
		})[0]
	}
	// pgtrace exports a statement's span under the service of the
	// application that ran it (--service-name-from application_name):
	// partners' own service, in pgtrace's instrumentation scope.
	querySpans := func(traceID string) func(otlptest.Span) bool {
		return func(s otlptest.Span) bool {
			return s.TraceID() == traceID && serviceName(s) == "partners" && s.Scope.GetName() == export.ScopeName
		}
	}

	// (a) Each request's query spans are pgtrace's CLIENT spans, children
	// of partners' HTTP server span of the same trace.
	for _, tc := range []struct {
		name    string
		traceID string
		queries int // statements the handler runs
	}{
		{"report", reportTrace, 1},
		{"report-n-plus-one", loopTrace, 1 + 12}, // the partners, then one per partner (schema.go seeds 12)
	} {
		srv := serverSpan(tc.traceID)
		spans := rcv.WaitSpans(t, e2eWait, tc.queries, querySpans(tc.traceID))
		if len(spans) != tc.queries {
			t.Errorf("%s: %d pgtrace spans, want %d", tc.name, len(spans), tc.queries)
		}
		for _, s := range spans {
			if s.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || s.ParentSpanID() != srv.SpanID() {
				t.Errorf("%s: pgtrace span %q kind %v parent %s, want CLIENT under the server span %s (%q)",
					tc.name, s.GetName(), s.GetKind(), s.ParentSpanID(), srv.SpanID(), srv.GetName())
			}
			if sys, _ := otlptest.Attr(s.GetAttributes(), "db.system.name"); sys != "postgresql" {
				t.Errorf("%s: span %q db.system.name = %v", tc.name, s.GetName(), sys)
			}
		}
	}

	// (c) The refused request reached partners (its server span says 400)
	// and never the database.
	refused := serverSpan(refusedTrace)
	if code, _ := otlptest.Attr(refused.GetAttributes(), "http.response.status_code"); code != int64(400) {
		t.Errorf("refused request's server span status code = %v, want 400", code)
	}
	for _, s := range rcv.Spans() {
		if s.TraceID() == refusedTrace && serviceName(s) != "partners" {
			t.Errorf("the refused request has a %s span %q", serviceName(s), s.GetName())
		}
	}

	// (b) pgtrace's admin API: an N+1 in the looping request's trace, none
	// in the joined report's.
	var findings []detector.Finding
	deadline := time.Now().Add(e2eWait)
	for {
		code, body := httpGet(t, "http://"+adminAddr+"/api/findings?type=n_plus_one")
		var resp struct {
			Findings []detector.Finding `json:"findings"`
		}
		if code != http.StatusOK || json.Unmarshal([]byte(body), &resp) != nil {
			t.Fatalf("GET /api/findings = %d %s", code, body)
		}
		findings = resp.Findings
		var loop *detector.Finding
		for i, f := range findings {
			if f.TraceID == loopTrace {
				loop = &findings[i]
			}
		}
		if loop != nil && loop.Count == 12 {
			if !strings.Contains(loop.Query, "customers") || loop.Application == "" {
				t.Errorf("n_plus_one finding = %+v, want the per-partner query and an application", *loop)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no n_plus_one finding with trace %s and count 12 after %v: %+v", loopTrace, e2eWait, findings)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, f := range findings {
		if f.TraceID == reportTrace || f.TraceID == refusedTrace {
			t.Errorf("n_plus_one finding for a request without a loop: %+v", f)
		}
	}
}
