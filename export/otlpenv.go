package export

import (
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

// This file reads where OTLP goes from the standard OTEL_* variables, once,
// for the exporters, the startup line and `pgtrace check`. The OTel
// clients read the same variables; for an endpoint given as a URL with
// http or https, or without a scheme, pgtrace passes the URL it resolved
// here to them (WithEndpointURL), so that what it logs is what they do.

// OTLPTarget is where one signal's OTLP export goes.
type OTLPTarget struct {
	Signal string // "traces" or "metrics"
	// Off, when not empty, says why this signal is not exported:
	// "OTEL_SDK_DISABLED=true", "OTEL_METRICS_EXPORTER=none", or that no
	// endpoint is set. The other fields are then empty.
	Off string

	Protocol string // "grpc" or "http/protobuf"
	// ProtocolWarning, when not empty, says that the configured protocol
	// was replaced (http/json, an unknown one).
	ProtocolWarning string
	Variable        string // the variable the endpoint came from
	Endpoint        string // its value, as given
	// URL is where requests go: scheme://host:port, with the request path
	// for http/protobuf. Its scheme says whether TLS is used.
	URL      string
	Insecure bool // plaintext, no TLS
	// NoScheme is set when Endpoint had no scheme (host:port, as the spec
	// allows for gRPC): TLS then follows OTEL_EXPORTER_OTLP_INSECURE,
	// default on.
	NoScheme bool
	// Custom is set when Endpoint has a scheme other than http or https
	// (unix:, dns:): the OTel client reads it itself and URL is Endpoint.
	Custom bool
}

// ResolveOTLP returns the target of signal ("traces" or "metrics") from
// the variables getenv reads (os.Getenv).
func ResolveOTLP(signal string, getenv func(string) string) OTLPTarget {
	sig := strings.ToUpper(signal)
	t := OTLPTarget{Signal: signal}
	env := func(k string) string { return strings.TrimSpace(getenv(k)) }
	if strings.EqualFold(env("OTEL_SDK_DISABLED"), "true") {
		t.Off = "OTEL_SDK_DISABLED=true"
		return t
	}
	if v := env("OTEL_" + sig + "_EXPORTER"); strings.EqualFold(v, "none") {
		t.Off = "OTEL_" + sig + "_EXPORTER=none"
		return t
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_" + sig + "_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := env(k); v != "" {
			t.Variable, t.Endpoint = k, v
			break
		}
	}
	if t.Endpoint == "" {
		t.Off = "no OTEL_EXPORTER_OTLP_ENDPOINT set"
		return t
	}
	t.Protocol, t.ProtocolWarning = otlpProtocol(sig, getenv)

	// TLS as the OTel Go clients decide it: from the scheme (http is
	// plaintext, anything else TLS), then OTEL_EXPORTER_OTLP_INSECURE,
	// then the signal's own variable.
	raw := t.Endpoint
	if !strings.Contains(raw, "://") {
		t.NoScheme = true
		raw = "//" + raw
	}
	u, err := url.Parse(raw)
	scheme := ""
	if err == nil {
		scheme = strings.ToLower(u.Scheme)
	}
	t.Insecure = scheme == "http" || scheme == "unix"
	t.Insecure = envBool(getenv, "OTEL_EXPORTER_OTLP_INSECURE", t.Insecure)
	t.Insecure = envBool(getenv, "OTEL_EXPORTER_OTLP_"+sig+"_INSECURE", t.Insecure)
	if err != nil || u.Host == "" || (scheme != "http" && scheme != "https" && scheme != "") {
		// unix:, dns: or not a URL: the clients read it themselves (and
		// log what they cannot parse). Say where it goes as given.
		t.URL, t.Custom = t.Endpoint, true
		return t
	}

	// A host without a port keeps the scheme's (443 or 80), as the
	// clients do.
	out := url.URL{Scheme: "https", Host: u.Host}
	if t.Insecure {
		out.Scheme = "http"
	}
	if t.Protocol == "http/protobuf" {
		// The general endpoint is a base URL that gets the signal's path;
		// the signal's own is used as it is ("/" when it has none).
		switch {
		case t.Variable == "OTEL_EXPORTER_OTLP_ENDPOINT":
			out.Path = path.Join("/", u.Path, "v1", signal)
		case u.Path == "":
			out.Path = "/"
		default:
			out.Path = u.Path
		}
	}
	t.URL = out.String()
	return t
}

// String describes the target for a log line: "grpc http://host:4317
// (plaintext)", or "off (why)".
func (t OTLPTarget) String() string {
	if t.Off != "" {
		return "off (" + t.Off + ")"
	}
	tls := "TLS"
	if t.Insecure {
		tls = "plaintext"
	}
	return fmt.Sprintf("%s %s (%s)", t.Protocol, t.URL, tls)
}

// Addr is the collector's address as a user would recognise it in an
// error: the endpoint's URL.
func (t OTLPTarget) Addr() string { return t.URL }

// otlpProtocol is the OTLP protocol for signal ("TRACES" or "METRICS"):
// OTEL_EXPORTER_OTLP_<signal>_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL,
// else grpc. pgtrace sends grpc or http/protobuf; http/json becomes
// http/protobuf (the same endpoint takes both) and anything else grpc,
// each with a warning, rather than a silent switch to an exporter the
// endpoint does not speak.
func otlpProtocol(signal string, getenv func(string) string) (protocol, warning string) {
	key := "OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL"
	p := strings.TrimSpace(getenv(key))
	if p == "" {
		key = "OTEL_EXPORTER_OTLP_PROTOCOL"
		p = strings.TrimSpace(getenv(key))
	}
	switch p {
	case "", "grpc":
		return "grpc", ""
	case "http/protobuf":
		return p, ""
	case "http/json":
		return "http/protobuf", key + "=http/json: OTLP over http/json is not supported; sending http/protobuf to the same endpoint"
	}
	return "grpc", fmt.Sprintf("%s=%s: unknown OTLP protocol; sending grpc (valid: grpc, http/protobuf)", key, p)
}

// envBool reads a boolean variable as the OTel clients do ("true" in any
// case is true, anything else false); unset keeps def.
func envBool(getenv func(string) string, key string, def bool) bool {
	v := strings.TrimSpace(getenv(key))
	if v == "" {
		return def
	}
	return strings.EqualFold(v, "true")
}

// samplerFromEnvName names the root sampler the variables configure, as
// samplerFromEnv reads them: "parentbased_traceidratio 0.1".
func samplerFromEnvName(getenv func(string) string) string {
	name := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER")))
	arg := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLER_ARG"))
	if name == "" {
		if r := strings.TrimSpace(getenv("OTEL_TRACES_SAMPLING_RATIO")); r != "" {
			name, arg = "parentbased_traceidratio", r
		} else {
			name = "parentbased_always_on"
		}
	}
	if strings.HasSuffix(name, "traceidratio") {
		if arg == "" {
			arg = "1"
		}
		return name + " " + arg
	}
	return name
}

// metricInterval is the OTLP metric push interval:
// OTEL_METRIC_EXPORT_INTERVAL in milliseconds, default 60 s, as the
// periodic reader reads it.
func metricInterval(getenv func(string) string) time.Duration {
	if ms, err := strconv.Atoi(strings.TrimSpace(getenv("OTEL_METRIC_EXPORT_INTERVAL"))); err == nil && ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return time.Minute
}
