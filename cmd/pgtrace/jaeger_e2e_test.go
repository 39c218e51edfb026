package main

// Issue 4, "Tests with real parts": end to end against a tracing backend that
// no one here wrote. A real Jaeger v2 (built by scripts/jaeger.sh, or the
// binary PGTRACE_JAEGER_BIN names) runs as a subprocess with in-memory
// storage; the whole observing proxy (wire → fingerprint → detector →
// export) runs in-process in front of a real PostgreSQL and exports over
// OTLP gRPC to Jaeger; the test then asks Jaeger's own query API for the
// trace it started with a sqlcommenter traceparent.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/internal/pgtest"
)

// jaegerWait bounds Jaeger's start and the wait for a trace to appear in it.
const jaegerWait = 30 * time.Second

// jaegerBinary returns the Jaeger v2 binary: PGTRACE_JAEGER_BIN, or what
// scripts/jaeger.sh prints (it builds and caches the binary the first time,
// which takes minutes; tests never skip for want of it).
func jaegerBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("PGTRACE_JAEGER_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("PGTRACE_JAEGER_BIN: %v", err)
		}
		return bin
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "jaeger.sh"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PGTRACE_JAEGER_BIN is unset: running %s (the first build takes several minutes)", script)
	var stderr lockedBuffer
	cmd := exec.Command("bash", script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/jaeger.sh: %v\n%s", err, stderr.String())
	}
	bin := strings.TrimSpace(string(out))
	if bin == "" {
		t.Fatalf("scripts/jaeger.sh printed no path\n%s", stderr.String())
	}
	return bin
}

// jaegerServer is a running Jaeger v2 subprocess.
type jaegerServer struct {
	otlpAddr string // OTLP gRPC receiver, host:port
	httpAddr string // OTLP HTTP receiver, host:port
	apiURL   string // query service HTTP base, e.g. http://127.0.0.1:16686
	out      *lockedBuffer
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// Another process may take one before Jaeger binds it; startJaeger retries.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		ls = append(ls, l) // held until all are chosen, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// startJaeger runs bin with testdata/jaeger.yaml on free loopback ports and
// waits until its OTLP port accepts and its query API answers. The process
// is stopped (SIGTERM, then killed) when the test ends.
func startJaeger(t *testing.T, bin string) *jaegerServer {
	t.Helper()
	config, err := filepath.Abs(filepath.Join("testdata", "jaeger.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		js, err := tryStartJaeger(t, bin, config)
		if err == nil {
			return js
		}
		// A port taken between freePorts and Jaeger's bind: try new ones.
		lastErr = err
		t.Logf("jaeger start, attempt %d: %v", attempt, err)
	}
	t.Fatalf("jaeger did not start: %v", lastErr)
	return nil
}

func tryStartJaeger(t *testing.T, bin, config string) (*jaegerServer, error) {
	p := freePorts(t, 4)
	js := &jaegerServer{
		otlpAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p[0])),
		httpAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p[3])),
		apiURL:   "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(p[1])),
		out:      &lockedBuffer{},
	}
	cmd := exec.Command(bin, "--config", config)
	// Jaeger is an OTel collector: keep this process's OTEL_* settings
	// (set by other tests or the caller) out of it.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OTEL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"PGTRACE_JAEGER_OTLP_GRPC_PORT="+strconv.Itoa(p[0]),
		"PGTRACE_JAEGER_QUERY_HTTP_PORT="+strconv.Itoa(p[1]),
		"PGTRACE_JAEGER_QUERY_GRPC_PORT="+strconv.Itoa(p[2]),
		"PGTRACE_JAEGER_OTLP_HTTP_PORT="+strconv.Itoa(p[3]),
	)
	cmd.Stdout, cmd.Stderr = js.out, js.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = cmd.Wait()
	}()
	stop := func() {
		if !stopProcess(cmd, exited) {
			t.Logf("jaeger did not stop on SIGTERM; killed it")
		}
	}

	deadline := time.Now().Add(jaegerWait)
	for {
		select {
		case <-exited:
			return nil, fmt.Errorf("jaeger exited before it was ready (%v):\n%s", cmd.ProcessState, js.out)
		default:
		}
		if js.ready() {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					t.Logf("jaeger output:\n%s", js.out)
				}
			})
			return js, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("jaeger not ready after %v (OTLP %s, API %s):\n%s", jaegerWait, js.otlpAddr, js.apiURL, js.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ready reports whether the OTLP port accepts and the query API answers.
func (js *jaegerServer) ready() bool {
	for _, addr := range []string{js.otlpAddr, js.httpAddr} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	resp, err := http.Get(js.apiURL + "/api/v3/services")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// The parts of Jaeger's /api/v3/traces/{id} answer the test reads: OTLP
// JSON (hex ids; enums as numbers, or names — both accepted) under
// "result".
type jaegerTraceResponse struct {
	Result struct {
		ResourceSpans []struct {
			Resource struct {
				Attributes []jaegerAttr `json:"attributes"`
			} `json:"resource"`
			ScopeSpans []struct {
				Spans []jaegerSpan `json:"spans"`
			} `json:"scopeSpans"`
		} `json:"resourceSpans"`
	} `json:"result"`
}

type jaegerSpan struct {
	TraceID      string          `json:"traceId"`
	SpanID       string          `json:"spanId"`
	ParentSpanID string          `json:"parentSpanId"`
	Name         string          `json:"name"`
	Kind         json.RawMessage `json:"kind"`
	Attributes   []jaegerAttr    `json:"attributes"`
	// service is the resource's service.name, copied in by spans().
	service string
}

type jaegerAttr struct {
	Key   string `json:"key"`
	Value struct {
		StringValue *string `json:"stringValue"`
		// OTLP JSON encodes int64 as a string; a number is accepted too.
		IntValue  json.RawMessage `json:"intValue"`
		BoolValue *bool           `json:"boolValue"`
	} `json:"value"`
}

// jaegerAttrs flattens attributes to strings (ints in decimal).
func jaegerAttrs(as []jaegerAttr) map[string]string {
	m := make(map[string]string, len(as))
	for _, a := range as {
		switch {
		case a.Value.StringValue != nil:
			m[a.Key] = *a.Value.StringValue
		case a.Value.IntValue != nil:
			m[a.Key] = strings.Trim(string(a.Value.IntValue), `"`)
		case a.Value.BoolValue != nil:
			m[a.Key] = strconv.FormatBool(*a.Value.BoolValue)
		}
	}
	return m
}

func (r *jaegerTraceResponse) spans() []jaegerSpan {
	var out []jaegerSpan
	for _, rs := range r.Result.ResourceSpans {
		svc := jaegerAttrs(rs.Resource.Attributes)["service.name"]
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				s.service = svc
				out = append(out, s)
			}
		}
	}
	return out
}

// isClient reports whether the span's kind is CLIENT (3 in OTLP).
func (s jaegerSpan) isClient() bool {
	k := strings.Trim(string(s.Kind), `"`)
	return k == "3" || k == "SPAN_KIND_CLIENT"
}

// waitTrace polls GET /api/v3/traces/{traceID} until the trace holds a span
// that match accepts, and returns that span. Jaeger answers 404 until the
// trace is stored.
func (js *jaegerServer) waitTrace(t *testing.T, traceID string, match func(jaegerSpan) bool) jaegerSpan {
	t.Helper()
	url := js.apiURL + "/api/v3/traces/" + traceID
	deadline := time.Now().Add(jaegerWait)
	var last string
	for {
		resp, err := http.Get(url)
		if err != nil {
			last = err.Error()
		} else {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%s: %s", resp.Status, body)
			if rerr == nil && resp.StatusCode == http.StatusOK {
				var tr jaegerTraceResponse
				if err := json.Unmarshal(body, &tr); err != nil {
					t.Fatalf("GET %s: decode: %v\n%s", url, err, body)
				}
				for _, s := range tr.spans() {
					if match(s) {
						return s
					}
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: no matching span after %v; last answer %s", url, jaegerWait, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestJaegerEndToEnd(t *testing.T) {
	started := time.Now()
	bin := jaegerBinary(t)
	js := startJaeger(t, bin)
	t.Logf("jaeger ready in %v (OTLP %s, API %s)", time.Since(started).Round(time.Millisecond), js.otlpAddr, js.apiURL)

	pg := pgtest.Start(t)
	t.Logf("postgres ready %v after the start", time.Since(started).Round(time.Millisecond))
	// Traces only: Jaeger has no metrics receiver.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+js.otlpAddr)
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	t.Setenv("OTEL_SERVICE_NAME", "pgtrace")
	t.Setenv("OTEL_METRICS_EXPORTER", "none")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
	t.Setenv("OTEL_SDK_DISABLED", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	// The real command, in-process: what users run.
	p := startPgtrace(t, "--upstream", pg.Addr())
	listen := p.ready.str("listen")

	var ids [24]byte
	_, _ = rand.Read(ids[:])
	traceID, parentID := hex.EncodeToString(ids[:16]), hex.EncodeToString(ids[16:])
	// The literals must not reach Jaeger: db.query.text is normalized.
	const literal = "pg_namespace"
	sql := "SELECT oid FROM pg_class WHERE relname = '" + literal + "' AND relnamespace > 0" +
		" /*traceparent='00-" + traceID + "-" + parentID + "-01'*/"
	res := fingerprint.New(fingerprint.Config{}).Analyze(sql)
	want := res.Query(0)
	if want.Normalized == "" || strings.Contains(want.Normalized, literal) || want.Summary == "" || want.Operation == "" {
		t.Fatalf("fingerprint of the test query: %+v", want)
	}

	ctx := context.Background()
	// The application names itself: its statements are its service's.
	conn, err := pgx.Connect(ctx, pgtest.DSNAt(listen, pg.User, pg.Password, pg.Database)+"&application_name=billing")
	if err != nil {
		t.Fatal(err)
	}
	var oid uint32
	// QueryExecModeExec: Parse, Bind and Execute in one batch, so the
	// comment parents the execution (DESIGN.md decision 5).
	if err := conn.QueryRow(ctx, sql, pgx.QueryExecModeExec).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// SIGTERM: serve stops the relay, then flushes the spans to Jaeger.
	if err := p.stop(t, errSigTerm); err != errSigTerm {
		t.Fatalf("pgtrace stopped with %v, want the SIGTERM exit", err)
	}

	s := js.waitTrace(t, traceID, func(s jaegerSpan) bool { return s.ParentSpanID == parentID })
	t.Logf("span %q (kind %s, parent %s) found in Jaeger %v after the start", s.Name, s.Kind, s.ParentSpanID, time.Since(started).Round(time.Millisecond))
	if !s.isClient() {
		t.Errorf("span kind = %s, want CLIENT", s.Kind)
	}
	if s.TraceID != traceID || s.SpanID == "" || s.SpanID == parentID {
		t.Errorf("span ids: trace %s span %s, want trace %s and a span id of its own under %s", s.TraceID, s.SpanID, traceID, parentID)
	}
	if s.Name != want.Summary {
		t.Errorf("span name = %q, want db.query.summary %q", s.Name, want.Summary)
	}
	if s.service != "billing" {
		t.Errorf("service.name = %q, want the application's, billing", s.service)
	}
	host, _, _ := net.SplitHostPort(pg.Addr())
	a := jaegerAttrs(s.Attributes)
	for _, c := range []struct{ key, want string }{
		// Stable conventions.
		{"db.system.name", "postgresql"},
		{"db.namespace", pg.Database},
		{"db.query.text", want.Normalized},
		{"db.query.summary", want.Summary},
		{"db.operation.name", want.Operation},
		{"server.address", host},
		// The legacy keys SigNoz still reads.
		{"db.system", "postgresql"},
		{"db.name", pg.Database},
		{"db.statement", want.Normalized},
		{"db.operation", want.Operation},
	} {
		if got, ok := a[c.key]; !ok || got != c.want {
			t.Errorf("attribute %s = %q (present %v), want %q", c.key, got, ok, c.want)
		}
	}
	for k, v := range a {
		if strings.Contains(v, literal) {
			t.Errorf("attribute %s = %q carries the literal %q", k, v, literal)
		}
	}
	if t.Failed() {
		t.Logf("span %s (kind %s, parent %s) attributes: %v", s.SpanID, s.Kind, s.ParentSpanID, a)
	}
}
