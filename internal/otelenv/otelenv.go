// Package otelenv is the one reader of the standard OTEL_* environment
// variables (DESIGN.md decision 9) for pgtrace's exporter (export), the
// companion package (observe) and `pgtrace check`: where each signal goes
// over OTLP, the sampler, the batch span processor, the metric interval,
// the semantic-convention opt-in and the service name. What it resolves is
// handed to the OTel clients and SDK explicitly (an endpoint URL, a
// sampler, batch and interval options), so that what pgtrace logs and
// checks is what they do.
//
// A value that cannot be honoured is replaced by the default, or by the
// nearest supported value, with a warning, as the OpenTelemetry
// specification asks of environment variables ("generate a warning and
// gracefully ignore the setting"): never a failure to start. The readers
// differ only in where the warning goes: export logs it, observe hands it
// to the OTel error handler (otel.Handle), check prints it.
//
//	variable                                   read by                  what it does
//	OTEL_SDK_DISABLED=true                     OTLP                     every signal off (export, observe, check)
//	OTEL_{TRACES,METRICS,LOGS}_EXPORTER        OTLP                     none: that signal off; otlp or unset: on;
//	                                                                    anything else: on, with a warning
//	OTEL_EXPORTER_OTLP[_{SIGNAL}]_ENDPOINT     OTLP                     where; the signal's own wins; unset: off
//	OTEL_EXPORTER_OTLP[_{SIGNAL}]_PROTOCOL     OTLP                     grpc (default) or http/protobuf; http/json
//	                                                                    is sent as http/protobuf, anything else as
//	                                                                    grpc, each with a warning
//	OTEL_EXPORTER_OTLP[_{SIGNAL}]_INSECURE     OTLP                     plaintext for an endpoint without http(s)
//	OTEL_TRACES_SAMPLER, _ARG                  Sampler, SamplerName     the root sampler (parent-based by default)
//	OTEL_TRACES_SAMPLING_RATIO                 Sampler, SamplerName     the guide's alias: parentbased_traceidratio
//	                                                                    when OTEL_TRACES_SAMPLER is unset
//	OTEL_BSP_*                                 BatchSpanProcessor       queue, batch, delay, timeout
//	OTEL_METRIC_EXPORT_INTERVAL, _TIMEOUT      MetricInterval, MetricTimeout
//	OTEL_SEMCONV_STABILITY_OPT_IN              LegacyDatabaseAttributes database: stable attributes only
//	OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES ServiceName, ResourceAttribute
//
// The OTel clients still read the rest themselves (headers, certificates,
// compression, timeouts), and the resource detector reads
// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME into the resource.
package otelenv

import (
	"fmt"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Getenv reads one variable: os.Getenv, or a map in tests.
type Getenv func(string) string

func (g Getenv) get(key string) string { return strings.TrimSpace(g(key)) }

// Protocols, as OTEL_EXPORTER_OTLP_PROTOCOL names them.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// Target is where one signal's OTLP export goes.
type Target struct {
	Signal string // "traces", "metrics" or "logs"
	// Off, when not empty, says why this signal is not exported:
	// "OTEL_SDK_DISABLED=true", "OTEL_METRICS_EXPORTER=none", or that no
	// endpoint is set. The other fields are then empty, but for Warnings.
	Off string

	Protocol string // ProtocolGRPC or ProtocolHTTP
	// Warnings say what was replaced: a protocol (http/json, an unknown
	// one), an exporter other than otlp.
	Warnings []string
	Variable string // the variable the endpoint came from
	Endpoint string // its value, as given
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

// OTLP returns the target of signal ("traces", "metrics" or "logs").
//
// TLS is decided as the OTel Go clients decide it: from the scheme (http
// is plaintext, anything else TLS), then OTEL_EXPORTER_OTLP_INSECURE, then
// the signal's own variable. For an endpoint with http, https or no
// scheme, callers pass URL to the client (WithEndpointURL).
func OTLP(signal string, getenv Getenv) Target {
	sig := strings.ToUpper(signal)
	t := Target{Signal: signal}
	if strings.EqualFold(getenv.get("OTEL_SDK_DISABLED"), "true") {
		t.Off = "OTEL_SDK_DISABLED=true"
		return t
	}
	switch on, warning := exporter(sig, getenv); {
	case !on:
		t.Off = "OTEL_" + sig + "_EXPORTER=none"
		return t
	case warning != "":
		t.Warnings = append(t.Warnings, warning)
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_" + sig + "_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := getenv.get(k); v != "" {
			t.Variable, t.Endpoint = k, v
			break
		}
	}
	if t.Endpoint == "" {
		t.Off, t.Warnings = "no OTEL_EXPORTER_OTLP_ENDPOINT set", nil
		return t
	}
	var warning string
	t.Protocol, warning = protocol(sig, getenv)
	if warning != "" {
		t.Warnings = append(t.Warnings, warning)
	}

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
	t.Insecure = boolVar(getenv, "OTEL_EXPORTER_OTLP_INSECURE", t.Insecure)
	t.Insecure = boolVar(getenv, "OTEL_EXPORTER_OTLP_"+sig+"_INSECURE", t.Insecure)
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
	if t.Protocol == ProtocolHTTP {
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
func (t Target) String() string {
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
func (t Target) Addr() string { return t.URL }

// exporter reads OTEL_<signal>_EXPORTER, a comma-separated list: the
// signal is on unless the list is "none".
func exporter(signal string, getenv Getenv) (on bool, warning string) {
	key := "OTEL_" + signal + "_EXPORTER"
	v := getenv.get(key)
	if v == "" {
		return true, ""
	}
	var other []string
	for e := range strings.SplitSeq(v, ",") {
		switch e = strings.ToLower(strings.TrimSpace(e)); e {
		case "none":
			return false, ""
		case "otlp", "":
		default:
			other = append(other, e)
		}
	}
	if len(other) > 0 {
		return true, fmt.Sprintf("%s=%s: only otlp and none are supported; sending OTLP", key, v)
	}
	return true, ""
}

// protocol is the OTLP protocol of signal: OTEL_EXPORTER_OTLP_<signal>_PROTOCOL,
// else OTEL_EXPORTER_OTLP_PROTOCOL, else grpc (pgtrace's default, and what
// a collector's :4317 answers; the specification's is http/protobuf on
// :4318). http/json becomes http/protobuf (OTLP/HTTP receivers take both
// on the same path) and anything else grpc, each with a warning.
func protocol(signal string, getenv Getenv) (p, warning string) {
	key := "OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL"
	p = getenv.get(key)
	if p == "" {
		key = "OTEL_EXPORTER_OTLP_PROTOCOL"
		p = getenv.get(key)
	}
	switch p {
	case "", ProtocolGRPC:
		return ProtocolGRPC, ""
	case ProtocolHTTP:
		return p, ""
	case "http/json":
		return ProtocolHTTP, key + "=http/json: OTLP over http/json is not supported; sending http/protobuf to the same endpoint"
	}
	return ProtocolGRPC, fmt.Sprintf("%s=%s: unknown OTLP protocol; sending grpc (valid: grpc, http/protobuf)", key, p)
}

// boolVar reads a boolean variable as the OTel clients do ("true" in any
// case is true, anything else false); unset keeps def.
func boolVar(getenv Getenv, key string, def bool) bool {
	v := getenv.get(key)
	if v == "" {
		return def
	}
	return strings.EqualFold(v, "true")
}

// samplerSpec is the root sampler the variables name: OTEL_TRACES_SAMPLER
// and OTEL_TRACES_SAMPLER_ARG, else the guide's OTEL_TRACES_SAMPLING_RATIO
// as parentbased_traceidratio, else parentbased_always_on.
func samplerSpec(getenv Getenv) (name, arg string) {
	name = strings.ToLower(getenv.get("OTEL_TRACES_SAMPLER"))
	arg = getenv.get("OTEL_TRACES_SAMPLER_ARG")
	if name == "" {
		if r := getenv.get("OTEL_TRACES_SAMPLING_RATIO"); r != "" {
			return "parentbased_traceidratio", r
		}
		return "parentbased_always_on", ""
	}
	return name, arg
}

// Sampler returns the sampler the variables configure, as the SDK reads
// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (its parser is
// unexported, and a sampler passed to the SDK replaces it), plus
// OTEL_TRACES_SAMPLING_RATIO (see samplerSpec). On an invalid setting it
// returns parentbased_always_on and an error saying what was ignored: the
// caller warns.
func Sampler(getenv Getenv) (sdktrace.Sampler, error) {
	name, arg := samplerSpec(getenv)
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || f < 0 || f > 1 {
			return 0, fmt.Errorf("sampler argument %q: want a ratio in [0,1]; using parentbased_always_on", arg)
		}
		return f, nil
	}
	def := sdktrace.ParentBased(sdktrace.AlwaysSample())
	switch name {
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio":
		r, err := ratio()
		if err != nil {
			return def, err
		}
		return sdktrace.TraceIDRatioBased(r), nil
	case "parentbased_always_on":
		return def, nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "parentbased_traceidratio":
		r, err := ratio()
		if err != nil {
			return def, err
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), nil
	}
	return def, fmt.Errorf("unsupported OTEL_TRACES_SAMPLER %q; using parentbased_always_on", name)
}

// SamplerName names the root sampler the variables configure, for a log
// line: "parentbased_traceidratio 0.1".
func SamplerName(getenv Getenv) string {
	name, arg := samplerSpec(getenv)
	if strings.HasSuffix(name, "traceidratio") {
		if arg == "" {
			arg = "1"
		}
		return name + " " + arg
	}
	return name
}

// BatchSpanProcessor is what OTEL_BSP_* configure, with the SDK's
// defaults for what is unset or not a positive number.
type BatchSpanProcessor struct {
	MaxQueueSize       int           // OTEL_BSP_MAX_QUEUE_SIZE, default 2048
	MaxExportBatchSize int           // OTEL_BSP_MAX_EXPORT_BATCH_SIZE, default 512, at most MaxQueueSize
	ScheduleDelay      time.Duration // OTEL_BSP_SCHEDULE_DELAY (ms), default 5 s
	ExportTimeout      time.Duration // OTEL_BSP_EXPORT_TIMEOUT (ms), default 30 s
}

// BSP reads OTEL_BSP_*.
func BSP(getenv Getenv) BatchSpanProcessor {
	b := BatchSpanProcessor{
		MaxQueueSize:       positive(getenv, "OTEL_BSP_MAX_QUEUE_SIZE", sdktrace.DefaultMaxQueueSize),
		MaxExportBatchSize: positive(getenv, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", sdktrace.DefaultMaxExportBatchSize),
		ScheduleDelay:      time.Duration(positive(getenv, "OTEL_BSP_SCHEDULE_DELAY", sdktrace.DefaultScheduleDelay)) * time.Millisecond,
		ExportTimeout:      time.Duration(positive(getenv, "OTEL_BSP_EXPORT_TIMEOUT", sdktrace.DefaultExportTimeout)) * time.Millisecond,
	}
	b.MaxExportBatchSize = min(b.MaxExportBatchSize, b.MaxQueueSize)
	return b
}

// Options are b as the SDK's batch span processor takes them.
func (b BatchSpanProcessor) Options() []sdktrace.BatchSpanProcessorOption {
	return []sdktrace.BatchSpanProcessorOption{
		sdktrace.WithMaxQueueSize(b.MaxQueueSize),
		sdktrace.WithMaxExportBatchSize(b.MaxExportBatchSize),
		sdktrace.WithBatchTimeout(b.ScheduleDelay),
		sdktrace.WithExportTimeout(b.ExportTimeout),
	}
}

// MetricInterval is the OTLP metric push interval:
// OTEL_METRIC_EXPORT_INTERVAL in milliseconds, default 60 s.
func MetricInterval(getenv Getenv) time.Duration {
	return time.Duration(positive(getenv, "OTEL_METRIC_EXPORT_INTERVAL", 60000)) * time.Millisecond
}

// MetricTimeout bounds one OTLP metric export: OTEL_METRIC_EXPORT_TIMEOUT
// in milliseconds, default 30 s.
func MetricTimeout(getenv Getenv) time.Duration {
	return time.Duration(positive(getenv, "OTEL_METRIC_EXPORT_TIMEOUT", 30000)) * time.Millisecond
}

// LegacyDatabaseAttributes reports whether spans carry the legacy database
// attributes (db.system, db.name, db.statement, db.operation) beside the
// stable ones, by OTEL_SEMCONV_STABILITY_OPT_IN (a comma list): "database"
// asks for the stable ones only, "database/dup" for both. Unset, both:
// SigNoz's DB views still key on db.system and db.statement.
func LegacyDatabaseAttributes(getenv Getenv) bool {
	legacy := true
	for v := range strings.SplitSeq(getenv("OTEL_SEMCONV_STABILITY_OPT_IN"), ",") {
		switch strings.TrimSpace(v) {
		case "database/dup":
			return true
		case "database":
			legacy = false
		}
	}
	return legacy
}

// ServiceName is OTEL_SERVICE_NAME, else the service.name of
// OTEL_RESOURCE_ATTRIBUTES, else "".
func ServiceName(getenv Getenv) string {
	if s := getenv.get("OTEL_SERVICE_NAME"); s != "" {
		return s
	}
	return ResourceAttribute(getenv, "service.name")
}

// ResourceAttribute returns the value of key in OTEL_RESOURCE_ATTRIBUTES
// (comma-separated key=value pairs, values percent-encoded), the last one
// when it is there more than once, as the SDK reads it.
func ResourceAttribute(getenv Getenv, key string) string {
	var out string
	for kv := range strings.SplitSeq(getenv("OTEL_RESOURCE_ATTRIBUTES"), ",") {
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

// positive reads a positive integer; anything else keeps def.
func positive(getenv Getenv, key string, def int) int {
	if v, err := strconv.Atoi(getenv.get(key)); err == nil && v > 0 {
		return v
	}
	return def
}
