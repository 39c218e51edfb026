package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/internal/pgtest"
)

func TestCheck(t *testing.T) {
	pg := pgtest.Managed(t)
	receiver := otlptest.Start(t)
	dead := closedAddr(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busySock := filepath.Join(t.TempDir(), ".s.PGSQL.6432")
	busyUnix, err := net.Listen("unix", busySock)
	if err != nil {
		t.Fatal(err)
	}
	defer busyUnix.Close()
	freeSock := filepath.Join(t.TempDir(), ".s.PGSQL.6432")
	tracesOnly := tracesOnlyCollector(t)

	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantCode int
		want     []string // lines that must appear, in order
	}{
		{
			name:     "upstream reachable, no OTLP",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			wantCode: 0,
			want:     []string{"PASS  upstream  " + pg.Addr() + " is a PostgreSQL server", "INFO  otlp      no OTLP endpoint configured"},
		},
		{
			name:     "login with credentials",
			args:     []string{"--upstream", pg.Addr(), "--user", pgtest.ScramUser, "--password", pgtest.ScramPassword, "--database", "postgres", "--listen", "", "--admin-listen", ""},
			wantCode: 0,
			want:     []string{"PASS  upstream  " + pg.Addr() + ": logged in as " + pgtest.ScramUser},
		},
		{
			name:     "Unix socket",
			args:     []string{"--upstream", pg.Socket(), "--listen", "", "--admin-listen", ""},
			wantCode: 0,
			want:     []string{"PASS  upstream  " + pg.Socket() + " is a PostgreSQL server"},
		},
		{
			name:     "login over a Unix socket",
			args:     []string{"--upstream", pg.Socket(), "--user", pgtest.ScramUser, "--password", pgtest.ScramPassword, "--database", "postgres", "--listen", "", "--admin-listen", ""},
			wantCode: 0,
			want:     []string{"PASS  upstream  " + pg.Socket() + ": logged in as " + pgtest.ScramUser},
		},
		{
			name:     "wrong password",
			args:     []string{"--upstream", pg.Addr(), "--user", pgtest.ScramUser, "--password", "nope", "--database", "postgres", "--listen", "", "--admin-listen", ""},
			wantCode: 1,
			want:     []string{"FAIL  upstream  " + pg.Addr() + " as " + pgtest.ScramUser, "fix: check --user/--password"},
		},
		{
			name:     "upstream down, listen address taken",
			args:     []string{"--upstream", dead, "--listen", busy.Addr().String(), "--admin-listen", ""},
			wantCode: 1,
			want: []string{"FAIL  upstream  " + dead, "fix: start PostgreSQL there, or point --upstream",
				"FAIL  listen    cannot listen on " + busy.Addr().String(), "fix: stop what uses"},
		},
		{
			name:     "Unix socket to listen on is free",
			args:     []string{"--upstream", pg.Addr(), "--listen", freeSock, "--admin-listen", ""},
			wantCode: 0,
			want:     []string{"PASS  listen    " + freeSock + " is free"},
		},
		{
			name:     "Unix socket to listen on in use",
			args:     []string{"--upstream", pg.Addr(), "--listen", busySock, "--admin-listen", ""},
			wantCode: 1,
			want:     []string{"FAIL  listen    cannot listen on " + busySock + ": a server already listens on this socket", "fix: stop what uses"},
		},
		{
			name:     "OTLP receiver answers",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.Endpoint()},
			wantCode: 0,
			want: []string{"PASS  traces    grpc " + receiver.Addr() + " (plaintext) accepted an empty trace export",
				"PASS  metrics   grpc " + receiver.Addr() + " (plaintext) accepted an empty metric export"},
		},
		{
			name:     "collector without metrics",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + tracesOnly},
			wantCode: 1,
			want: []string{"PASS  traces    grpc " + tracesOnly, "FAIL  metrics   grpc " + tracesOnly + " answers but does not accept metrics (Unimplemented)",
				"fix: this collector does not take metrics (Jaeger takes traces only): set OTEL_METRICS_EXPORTER=none"},
		},
		{
			name:     "metrics switched off",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + tracesOnly, "OTEL_METRICS_EXPORTER": "none"},
			wantCode: 0,
			want:     []string{"PASS  traces    grpc " + tracesOnly, "INFO  metrics   OTLP metrics off (OTEL_METRICS_EXPORTER=none)"},
		},
		{
			name:     "traces switched off",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + dead, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.Endpoint(), "OTEL_TRACES_EXPORTER": "none"},
			wantCode: 0,
			want:     []string{"INFO  traces    OTLP traces off (OTEL_TRACES_EXPORTER=none)", "PASS  metrics   grpc " + receiver.Addr()},
		},
		{
			name:     "protocol replaced",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.Endpoint(), "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"},
			wantCode: 0,
			want: []string{"INFO  traces    OTEL_EXPORTER_OTLP_PROTOCOL=thrift: unknown OTLP protocol; sending grpc",
				"PASS  traces    grpc " + receiver.Addr(), "PASS  metrics   grpc " + receiver.Addr()},
		},
		{
			name:     "endpoint without a scheme",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.Addr(), "OTEL_EXPORTER_OTLP_INSECURE": "true"},
			wantCode: 0,
			want:     []string{"PASS  traces    grpc " + receiver.Addr() + " (plaintext)", "PASS  metrics   grpc " + receiver.Addr() + " (plaintext)"},
		},
		{
			name:     "OTLP endpoint down",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", "", "--timeout", "1s"},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + dead},
			wantCode: 1,
			want:     []string{"FAIL  traces    grpc " + dead, "fix: start the collector", "FAIL  metrics   grpc " + dead, "fix: start the collector"},
		},
		{
			name:     "SDK disabled",
			args:     []string{"--upstream", pg.Addr(), "--listen", "", "--admin-listen", ""},
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + dead, "OTEL_SDK_DISABLED": "true"},
			wantCode: 0,
			want:     []string{"INFO  otlp      no OTLP endpoint configured"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_SDK_DISABLED", "PGUSER", "PGPASSWORD", "PGDATABASE",
				"OTEL_METRICS_EXPORTER", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
				t.Setenv(k, "")
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := execute(context.Background(), append([]string{"pgtrace", "check"}, tc.args...), strings.NewReader(""), &stdout, &stderr)
			out := stdout.String()
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, out, stderr.String())
			}
			rest := out
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order):\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
			if tc.wantCode != 0 && !strings.Contains(stderr.String(), "checks failed") {
				t.Errorf("stderr lacks the failure count: %q", stderr.String())
			}
		})
	}
}

// TestCheckRefusesArguments: flags after a stray word go unread, so check
// must refuse it rather than check the defaults.
func TestCheckRefusesArguments(t *testing.T) {
	for _, args := range [][]string{{"db.internal:5432"}, {"stray", "--upstream", "127.0.0.1:1"}, {"--timeout", "0s"}} {
		var stdout, stderr bytes.Buffer
		code := execute(context.Background(), append([]string{"pgtrace", "check", "--listen", "", "--admin-listen", ""}, args...),
			strings.NewReader(""), &stdout, &stderr)
		if code != 2 || stdout.Len() != 0 {
			t.Errorf("check %q: exit %d, stdout %q, stderr %q; want exit 2 and no checks run", args, code, stdout.String(), stderr.String())
		}
	}
}

// TestCheckSignalEndpointPath: OTLP/HTTP uses a signal-specific endpoint
// (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) as given, and the general one with
// /v1/traces appended; check must probe the same URL the exporter uses.
// A receiver without /v1/metrics (traces only) fails the metrics line.
func TestCheckSignalEndpointPath(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		if r.URL.Path != "/otlp/traces" && r.URL.Path != "/base/v1/traces" {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, tc := range []struct{ key, endpoint string }{
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", srv.URL + "/otlp/traces"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL + "/base"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
			t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
			t.Setenv("OTEL_METRICS_EXPORTER", "")
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
			t.Setenv(tc.key, tc.endpoint)
			rs := checkOTLP(context.Background(), 5*time.Second, os.Getenv)
			if len(rs) != 2 || rs[0].Name != "traces" || !rs[0].OK {
				t.Fatalf("%s=%s: %+v (paths probed: %q)", tc.key, tc.endpoint, rs, paths)
			}
			if tc.key == "OTEL_EXPORTER_OTLP_ENDPOINT" {
				if m := rs[1]; m.Name != "metrics" || m.OK || !strings.Contains(m.Msg, "/base/v1/metrics answered 404") || !strings.Contains(m.Fix, "OTEL_METRICS_EXPORTER=none") {
					t.Errorf("metrics line %+v, want a FAIL for /base/v1/metrics with the fix", m)
				}
			}
		})
	}
}

// tracesOnlyCollector is an OTLP gRPC server with the trace service only,
// as Jaeger is: metrics get Unimplemented.
func tracesOnlyCollector(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, acceptTraces{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

type acceptTraces struct {
	collectortrace.UnimplementedTraceServiceServer
}

func (acceptTraces) Export(context.Context, *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	return &collectortrace.ExportTraceServiceResponse{}, nil
}
