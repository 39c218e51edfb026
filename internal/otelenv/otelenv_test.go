package otelenv

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type env map[string]string

func (e env) get(k string) string { return e[k] }

// TestOTLP is where each signal goes for each combination of the OTLP
// variables. export (spans, metrics), observe (spans, metrics, logs) and
// `pgtrace check` (traces, metrics) all send, or probe, exactly this.
func TestOTLP(t *testing.T) {
	tests := []struct {
		name   string
		signal string
		env    env
		want   Target
	}{
		{"nothing set", "traces", env{}, Target{Signal: "traces", Off: "no OTEL_EXPORTER_OTLP_ENDPOINT set"}},
		{"sdk disabled", "metrics", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "TRUE"},
			Target{Signal: "metrics", Off: "OTEL_SDK_DISABLED=true"}},
		{"sdk disabled, logs too", "logs", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"},
			Target{Signal: "logs", Off: "OTEL_SDK_DISABLED=true"}},
		{"metrics exporter none", "metrics", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_METRICS_EXPORTER": "none"},
			Target{Signal: "metrics", Off: "OTEL_METRICS_EXPORTER=none"}},
		{"traces exporter none", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"},
			Target{Signal: "traces", Off: "OTEL_TRACES_EXPORTER=none"}},
		{"metrics none leaves traces on", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_METRICS_EXPORTER": "none"},
			Target{Signal: "traces", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4317", URL: "http://c:4317", Insecure: true}},
		{"exporter otlp", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "otlp"},
			Target{Signal: "traces", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4317", URL: "http://c:4317", Insecure: true}},
		{"exporter zipkin: OTLP with a warning", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "zipkin"},
			Target{Signal: "traces", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4317", URL: "http://c:4317", Insecure: true,
				Warnings: []string{"OTEL_TRACES_EXPORTER=zipkin: only otlp and none are supported; sending OTLP"}}},
		{"exporter list with none", "logs", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_LOGS_EXPORTER": "console, none"},
			Target{Signal: "logs", Off: "OTEL_LOGS_EXPORTER=none"}},
		{"https", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://ingest.example:443"},
			Target{Signal: "traces", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "https://ingest.example:443", URL: "https://ingest.example:443"}},
		{"no scheme: TLS by default", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317"},
			Target{Signal: "traces", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "localhost:4317", URL: "https://localhost:4317", NoScheme: true}},
		{"no scheme, insecure", "metrics", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
			Target{Signal: "metrics", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "127.0.0.1:4317", URL: "http://127.0.0.1:4317", Insecure: true, NoScheme: true}},
		{"signal's insecure wins", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false"},
			Target{Signal: "traces", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "c:4317", URL: "https://c:4317", NoScheme: true}},
		{"signal endpoint wins", "metrics", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://b:4317"},
			Target{Signal: "metrics", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", Endpoint: "http://b:4317", URL: "http://b:4317", Insecure: true}},
		{"http base URL gets the signal path", "metrics", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			Target{Signal: "metrics", Protocol: "http/protobuf", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4318/otlp", URL: "http://c:4318/otlp/v1/metrics", Insecure: true}},
		{"http base URL, logs", "logs", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			Target{Signal: "logs", Protocol: "http/protobuf", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4318", URL: "http://c:4318/v1/logs", Insecure: true}},
		{"http signal URL as is", "traces", env{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c/api/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			Target{Signal: "traces", Protocol: "http/protobuf", Variable: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Endpoint: "https://c/api/traces", URL: "https://c/api/traces"}},
		{"http without scheme", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
			Target{Signal: "traces", Protocol: "http/protobuf", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "c:4318", URL: "http://c:4318/v1/traces", Insecure: true, NoScheme: true}},
		{"http/json is sent as http/protobuf", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
			Target{Signal: "traces", Protocol: "http/protobuf", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4318", URL: "http://c:4318/v1/traces", Insecure: true,
				Warnings: []string{"OTEL_EXPORTER_OTLP_PROTOCOL=http/json: OTLP over http/json is not supported; sending http/protobuf to the same endpoint"}}},
		{"per-signal protocol wins", "logs", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": " http/protobuf "},
			Target{Signal: "logs", Protocol: "http/protobuf", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4318", URL: "http://c:4318/v1/logs", Insecure: true}},
		{"unknown protocol is sent as grpc", "metrics", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "udp"},
			Target{Signal: "metrics", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "http://c:4317", URL: "http://c:4317", Insecure: true,
				Warnings: []string{"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=udp: unknown OTLP protocol; sending grpc (valid: grpc, http/protobuf)"}}},
		{"unix socket", "traces", env{"OTEL_EXPORTER_OTLP_ENDPOINT": "unix:///run/otel.sock"},
			Target{Signal: "traces", Protocol: "grpc", Variable: "OTEL_EXPORTER_OTLP_ENDPOINT", Endpoint: "unix:///run/otel.sock", URL: "unix:///run/otel.sock", Insecure: true, Custom: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := OTLP(tt.signal, tt.env.get)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("OTLP(%s) (-want +got):\n%s", tt.signal, diff)
			}
		})
	}
}

func TestTargetString(t *testing.T) {
	for want, tg := range map[string]Target{
		"off (OTEL_SDK_DISABLED=true)":     {Off: "OTEL_SDK_DISABLED=true"},
		"grpc http://c:4317 (plaintext)":   {Protocol: "grpc", URL: "http://c:4317", Insecure: true},
		"http/protobuf https://c/v1 (TLS)": {Protocol: "http/protobuf", URL: "https://c/v1"},
	} {
		if got := tg.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

func TestSampler(t *testing.T) {
	tests := []struct {
		sampler, arg, ratio string
		want                string // Description prefix
		name                string // SamplerName
		err                 bool
	}{
		{"", "", "", "ParentBased{root:AlwaysOnSampler", "parentbased_always_on", false},
		{"always_off", "", "", "AlwaysOffSampler", "always_off", false},
		{"traceidratio", "0.25", "", "TraceIDRatioBased{0.25}", "traceidratio 0.25", false},
		{"parentbased_traceidratio", "0.5", "", "ParentBased{root:TraceIDRatioBased{0.5}", "parentbased_traceidratio 0.5", false},
		{"parentbased_traceidratio", "", "", "ParentBased{root:TraceIDRatioBased{1}", "parentbased_traceidratio 1", false},
		{"", "", "0.1", "ParentBased{root:TraceIDRatioBased{0.1}", "parentbased_traceidratio 0.1", false},
		{"always_on", "", "0.1", "AlwaysOnSampler", "always_on", false}, // the standard variable wins over the alias
		{"traceidratio", "2", "", "ParentBased{root:AlwaysOnSampler", "traceidratio 2", true},
		{"", "", "lots", "ParentBased{root:AlwaysOnSampler", "parentbased_traceidratio lots", true},
		{"bogus", "", "", "ParentBased{root:AlwaysOnSampler", "bogus", true},
	}
	for _, tt := range tests {
		e := env{"OTEL_TRACES_SAMPLER": tt.sampler, "OTEL_TRACES_SAMPLER_ARG": tt.arg, "OTEL_TRACES_SAMPLING_RATIO": tt.ratio}
		s, err := Sampler(e.get)
		if (err != nil) != tt.err {
			t.Errorf("%v: err = %v, want error %v", e, err, tt.err)
		}
		if d := s.Description(); !strings.HasPrefix(d, tt.want) {
			t.Errorf("%v: sampler = %s, want %s…", e, d, tt.want)
		}
		if got := SamplerName(e.get); got != tt.name {
			t.Errorf("%v: SamplerName = %q, want %q", e, got, tt.name)
		}
	}
}

func TestBSP(t *testing.T) {
	if got, want := BSP(env{}.get), (BatchSpanProcessor{2048, 512, 5 * time.Second, 30 * time.Second}); got != want {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
	got := BSP(env{"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "512",
		"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BSP_EXPORT_TIMEOUT": "-1"}.get)
	// The batch is at most the queue; a negative timeout is ignored.
	if want := (BatchSpanProcessor{100, 100, 50 * time.Millisecond, 30 * time.Second}); got != want {
		t.Errorf("set %+v, want %+v", got, want)
	}
	if n := len(got.Options()); n != 4 {
		t.Errorf("%d options", n)
	}
}

func TestMetricInterval(t *testing.T) {
	for v, want := range map[string]time.Duration{"": time.Minute, "200": 200 * time.Millisecond, "x": time.Minute, "0": time.Minute} {
		if got := MetricInterval(env{"OTEL_METRIC_EXPORT_INTERVAL": v}.get); got != want {
			t.Errorf("OTEL_METRIC_EXPORT_INTERVAL=%q: %v, want %v", v, got, want)
		}
	}
	if got := MetricTimeout(env{"OTEL_METRIC_EXPORT_TIMEOUT": "1500"}.get); got != 1500*time.Millisecond {
		t.Errorf("timeout %v", got)
	}
	if got := MetricTimeout(env{}.get); got != 30*time.Second {
		t.Errorf("default timeout %v", got)
	}
}

func TestLegacyDatabaseAttributes(t *testing.T) {
	for optIn, want := range map[string]bool{"": true, "database/dup": true, "http,database": false, "database": false, "database,database/dup": true} {
		if got := LegacyDatabaseAttributes(env{"OTEL_SEMCONV_STABILITY_OPT_IN": optIn}.get); got != want {
			t.Errorf("OTEL_SEMCONV_STABILITY_OPT_IN=%q: %v, want %v", optIn, got, want)
		}
	}
}

func TestServiceName(t *testing.T) {
	for _, tt := range []struct {
		env  env
		want string
	}{
		{env{}, ""},
		{env{"OTEL_RESOURCE_ATTRIBUTES": "team=a,service.name=from%20attrs"}, "from attrs"},
		{env{"OTEL_RESOURCE_ATTRIBUTES": "service.name=a,service.name=b"}, "b"},
		{env{"OTEL_SERVICE_NAME": " checkout ", "OTEL_RESOURCE_ATTRIBUTES": "service.name=b"}, "checkout"},
	} {
		if got := ServiceName(tt.env.get); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.env, got, tt.want)
		}
	}
	if got := ResourceAttribute(env{"OTEL_RESOURCE_ATTRIBUTES": "a=1, team = partners "}.get, "team"); got != "partners" {
		t.Errorf("team = %q", got)
	}
}
