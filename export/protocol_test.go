package export

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestProtocol(t *testing.T) {
	for _, tc := range []struct {
		name         string
		all, signal  string // OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
		want         string
		warnContains string // "" means no warning
	}{
		{"unset", "", "", "grpc", ""},
		{"grpc", "grpc", "", "grpc", ""},
		{"http/protobuf", "http/protobuf", "", "http/protobuf", ""},
		{"spaces", " http/protobuf ", "", "http/protobuf", ""},
		{"per-signal wins", "grpc", "http/protobuf", "http/protobuf", ""},
		{"per-signal grpc wins", "http/protobuf", "grpc", "grpc", ""},
		{"http/json", "http/json", "", "http/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"per-signal http/json", "", "http/json", "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
		{"unknown", "thrift", "", "grpc", "thrift"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": tc.all, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": tc.signal}
			got, warning := otlpProtocol("TRACES", func(k string) string { return env[k] })
			if got != tc.want {
				t.Errorf("protocol = %q, want %q", got, tc.want)
			}
			switch {
			case tc.warnContains == "" && warning != "":
				t.Errorf("unexpected warning: %s", warning)
			case tc.warnContains != "" && !strings.Contains(warning, tc.warnContains):
				t.Errorf("warning %q does not name %q", warning, tc.warnContains)
			}
		})
	}
}

// TestProtocolWarningIsLogged: a replaced protocol is said once, at start,
// as a warning.
func TestProtocolWarningIsLogged(t *testing.T) {
	clearOTLPTargetEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	var logs logLines
	e, err := New(context.Background(), Config{Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = e.Shutdown(ctx)
	if w := logs.records(t, "OTEL_EXPORTER_OTLP_PROTOCOL=http/json"); len(w) != 1 || w[0]["level"] != "WARN" {
		t.Errorf("protocol warnings %v, want one WARN\n%s", w, logs.String())
	}
}
