package observe

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Environment variables this package reads itself. Every read of the
// environment is in this file; the OTLP exporters and the SDK read the
// other OTEL_* variables (endpoints, headers, insecure, timeouts,
// OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL, …).
const (
	// EnvEnvironment sets deployment.environment.name.
	EnvEnvironment = "ENVIRONMENT"
	// EnvSamplingRatio is the guide's sampling ratio variable: the ratio of
	// root spans sampled, children following their parent. OTEL_TRACES_SAMPLER
	// takes precedence when both are set.
	EnvSamplingRatio = "OTEL_TRACES_SAMPLING_RATIO"
	// EnvServiceVersion is the guide's service version variable: it sets
	// service.version unless WithServiceVersion or a service.version in
	// OTEL_RESOURCE_ATTRIBUTES does.
	EnvServiceVersion = "SERVICE_VERSION"
)

// OTLP protocols Setup supports, as OTEL_EXPORTER_OTLP_PROTOCOL names them.
const (
	protocolGRPC = "grpc"
	protocolHTTP = "http/protobuf"
)

// env reads the variables of this package through getenv (os.Getenv, or a
// map in tests).
type env func(string) string

func (e env) get(key string) string { return strings.TrimSpace(e(key)) }

// serviceName is OTEL_SERVICE_NAME, else the service.name of
// OTEL_RESOURCE_ATTRIBUTES, else "".
func (e env) serviceName() string {
	if s := e.get("OTEL_SERVICE_NAME"); s != "" {
		return s
	}
	return e.resourceAttribute("service.name")
}

// serviceVersion is the service.version of OTEL_RESOURCE_ATTRIBUTES, else
// SERVICE_VERSION, else "".
func (e env) serviceVersion() string {
	if v := e.resourceAttribute("service.version"); v != "" {
		return v
	}
	return e.get(EnvServiceVersion)
}

func (e env) environment() string { return e.get(EnvEnvironment) }

// resourceAttribute returns the value of key in OTEL_RESOURCE_ATTRIBUTES
// (comma-separated key=value pairs, values percent-encoded), the last one
// when it is there more than once, as the SDK reads it.
func (e env) resourceAttribute(key string) string {
	var out string
	for kv := range strings.SplitSeq(e("OTEL_RESOURCE_ATTRIBUTES"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) != key {
			continue
		}
		v = strings.TrimSpace(v)
		if d, err := url.PathUnescape(v); err == nil {
			v = d
		}
		out = v
	}
	return out
}

// samplingRatio is OTEL_TRACES_SAMPLING_RATIO when OTEL_TRACES_SAMPLER is
// not set, else nil (the SDK reads OTEL_TRACES_SAMPLER).
func (e env) samplingRatio() (*float64, error) {
	if e.get("OTEL_TRACES_SAMPLER") != "" {
		return nil, nil
	}
	s := e.get(EnvSamplingRatio)
	if s == "" {
		return nil, nil
	}
	r, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("observe: %s=%q: %w", EnvSamplingRatio, s, err)
	}
	return &r, nil
}

// otlpProtocol returns how signal (TRACES, METRICS, LOGS) is exported:
// protocolGRPC or protocolHTTP, or "" when it is not. A signal is exported
// when an endpoint is set for it (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_{signal}_ENDPOINT) and OTEL_{signal}_EXPORTER is unset,
// "otlp" or not "none". The protocol is OTEL_EXPORTER_OTLP_{signal}_PROTOCOL,
// else OTEL_EXPORTER_OTLP_PROTOCOL, else grpc: pgtrace's own default, and
// what the collectors' :4317 answers (the OpenTelemetry specification's
// default is http/protobuf, on :4318).
func (e env) otlpProtocol(signal string) (string, error) {
	switch exp := e.get("OTEL_" + signal + "_EXPORTER"); exp {
	case "none":
		return "", nil
	case "", "otlp":
	default:
		return "", fmt.Errorf("observe: OTEL_%s_EXPORTER=%q is not supported (want otlp or none)", signal, exp)
	}
	if e.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && e.get("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") == "" {
		return "", nil
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		switch p := e.get(k); p {
		case "":
			continue
		case protocolGRPC, protocolHTTP:
			return p, nil
		default:
			return "", fmt.Errorf("observe: %s=%q is not supported (want %s or %s)", k, p, protocolGRPC, protocolHTTP)
		}
	}
	return protocolGRPC, nil
}
