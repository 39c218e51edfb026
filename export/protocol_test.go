package export

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
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
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tc.all)
			t.Setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", tc.signal)
			var logs bytes.Buffer
			e := &Exporter{log: slog.New(slog.NewTextHandler(&logs, nil))}
			if got := e.protocol("TRACES"); got != tc.want {
				t.Errorf("protocol = %q, want %q", got, tc.want)
			}
			switch {
			case tc.warnContains == "" && logs.Len() > 0:
				t.Errorf("unexpected log: %s", logs.String())
			case tc.warnContains != "" && !strings.Contains(logs.String(), tc.warnContains):
				t.Errorf("log %q does not name %q", logs.String(), tc.warnContains)
			case tc.warnContains != "" && !strings.Contains(logs.String(), "level=WARN"):
				t.Errorf("log %q is not a warning", logs.String())
			}
		})
	}
}
