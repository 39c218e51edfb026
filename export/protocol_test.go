package export

import (
	"context"
	"strings"
	"testing"
	"time"
)

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

// TestExporterWarningIsLogged: an OTEL_TRACES_EXPORTER pgtrace does not
// have is a warning, and OTLP is sent all the same.
func TestExporterWarningIsLogged(t *testing.T) {
	clearOTLPTargetEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_TRACES_EXPORTER", "zipkin")
	var logs logLines
	e, err := New(context.Background(), Config{Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = e.Shutdown(ctx)
	if w := logs.records(t, "OTEL_TRACES_EXPORTER=zipkin"); len(w) != 1 || w[0]["level"] != "WARN" {
		t.Errorf("exporter warnings %v, want one WARN\n%s", w, logs.String())
	}
	if start := logs.records(t, "OTLP export"); len(start) != 1 || !strings.HasPrefix(start[0]["traces"].(string), "grpc http://127.0.0.1:1") {
		t.Errorf("startup line %v, want traces sent over grpc", start)
	}
}
