package observe

import (
	"context"
	"database/sql"
	"os"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/log"
	"go.opentelemetry.io/otel/log/global"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope name of the tracers and meters this
// package creates.
const ScopeName = "github.com/dotmac/pgtrace/observe"

// Version is the version of this package, recorded as the instrumentation
// scope version.
func Version() string { return "0.1.0" }

// Header names and limits the HTTP features use unless told otherwise.
const (
	DefaultTenantHeader     = "x-tenant-id"
	DefaultRequestIDHeader  = "x-request-id"
	DefaultCardinalityLimit = 100
)

// TenantValidator decides whether a tenant id taken from a request is
// acceptable. A non-nil error rejects the request with 400 Bad Request; the
// error's text is part of the JSON answer, so it must not carry secrets.
type TenantValidator func(ctx context.Context, tenant string) error

// config holds every setting of the package. Each feature reads the fields it
// needs and ignores the rest, as otelhttp's config does for its handler and
// transport.
type config struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	LoggerProvider log.LoggerProvider
	Propagators    propagation.TextMapPropagator

	// Setup.
	ServiceName        string
	DefaultServiceName string
	ServiceVersion     string
	Environment        string
	SamplingRatio      *float64
	SpanExporters      []sdktrace.SpanExporter
	MetricReaders      []sdkmetric.Reader
	LogExporters       []sdklog.Exporter

	// HTTP.
	TenantHeader    string
	RequestIDHeader string
	TenantRequired  bool
	TenantValidator TenantValidator
	IncomingBaggage bool
	TenantHosts     []string
	HTTPOptions     []otelhttp.Option

	// Logs.
	LogBridge bool

	// Database.
	DriverName string
	TxOptions  *sql.TxOptions

	// Spans and metrics.
	SpanAttributes   []attribute.KeyValue
	CardinalityLimit int
	Currency         string
}

// Option configures the features of this package. Options that do not apply
// to a feature are ignored by it.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (o optionFunc) apply(c *config) { o(c) }

// newConfig applies opts over the defaults: the global providers and
// propagator, the default header names, and the default cardinality limit.
func newConfig(opts ...Option) *config {
	c := &config{
		TenantHeader:     DefaultTenantHeader,
		RequestIDHeader:  DefaultRequestIDHeader,
		CardinalityLimit: DefaultCardinalityLimit,
		Currency:         "USD",
	}
	for _, o := range opts {
		if o != nil {
			o.apply(c)
		}
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.LoggerProvider == nil {
		c.LoggerProvider = global.GetLoggerProvider()
	}
	if c.Propagators == nil {
		c.Propagators = otel.GetTextMapPropagator()
	}
	return c
}

func (c *config) tracer() trace.Tracer {
	return c.TracerProvider.Tracer(ScopeName, trace.WithInstrumentationVersion(Version()))
}

func (c *config) meter() metric.Meter {
	return c.MeterProvider.Meter(ScopeName, metric.WithInstrumentationVersion(Version()))
}

// application is the sqlcommenter application tag and the service name
// Setup gives the resource: WithServiceName, then OTEL_SERVICE_NAME, then
// the service.name in OTEL_RESOURCE_ATTRIBUTES, then WithDefaultServiceName.
func (c *config) application() string {
	if c.ServiceName != "" {
		return c.ServiceName
	}
	if s := env(os.Getenv).serviceName(); s != "" {
		return s
	}
	return c.DefaultServiceName
}

// WithTracerProvider sets the tracer provider. If none is given, the global
// provider is used.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(c *config) {
		if tp != nil {
			c.TracerProvider = tp
		}
	})
}

// WithMeterProvider sets the meter provider. If none is given, the global
// provider is used.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) {
		if mp != nil {
			c.MeterProvider = mp
		}
	})
}

// WithLoggerProvider sets the OpenTelemetry logger provider the log bridge
// writes to. If none is given, the global provider is used.
func WithLoggerProvider(lp log.LoggerProvider) Option {
	return optionFunc(func(c *config) {
		if lp != nil {
			c.LoggerProvider = lp
		}
	})
}

// WithPropagators sets the propagators used to extract and inject trace
// context and baggage over HTTP. If none is given, the global propagator is
// used.
func WithPropagators(p propagation.TextMapPropagator) Option {
	return optionFunc(func(c *config) {
		if p != nil {
			c.Propagators = p
		}
	})
}

// WithServiceName sets service.name, overriding OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES. It is also the sqlcommenter application tag.
// A program that only wants a name for when the environment gives none
// uses WithDefaultServiceName.
func WithServiceName(name string) Option {
	return optionFunc(func(c *config) { c.ServiceName = name })
}

// WithDefaultServiceName sets service.name (and the sqlcommenter
// application tag) for when neither OTEL_SERVICE_NAME nor a service.name in
// OTEL_RESOURCE_ATTRIBUTES gives one, so that the deployment can rename the
// service without a rebuild.
func WithDefaultServiceName(name string) Option {
	return optionFunc(func(c *config) { c.DefaultServiceName = name })
}

// WithServiceVersion sets service.version, overriding the environment. If it
// is not given, Setup uses the service.version of OTEL_RESOURCE_ATTRIBUTES,
// else SERVICE_VERSION, else the main module's version from the build
// information, when there is one.
func WithServiceVersion(version string) Option {
	return optionFunc(func(c *config) { c.ServiceVersion = version })
}

// WithEnvironment sets deployment.environment.name, overriding the
// ENVIRONMENT variable.
func WithEnvironment(env string) Option {
	return optionFunc(func(c *config) { c.Environment = env })
}

// WithSamplingRatio makes Setup sample root spans with the given ratio (0 to
// 1) and follow the parent's decision otherwise. It overrides
// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLING_RATIO.
func WithSamplingRatio(ratio float64) Option {
	return optionFunc(func(c *config) { c.SamplingRatio = &ratio })
}

// WithSpanExporter makes Setup export spans to e (batched), in addition to
// the OTLP exporter the environment configures.
func WithSpanExporter(e sdktrace.SpanExporter) Option {
	return optionFunc(func(c *config) {
		if e != nil {
			c.SpanExporters = append(c.SpanExporters, e)
		}
	})
}

// WithMetricReader makes Setup register r with the meter provider, in
// addition to the OTLP exporter the environment configures.
func WithMetricReader(r sdkmetric.Reader) Option {
	return optionFunc(func(c *config) {
		if r != nil {
			c.MetricReaders = append(c.MetricReaders, r)
		}
	})
}

// WithLogExporter makes Setup export log records to e (batched), in addition
// to the OTLP exporter the environment configures.
func WithLogExporter(e sdklog.Exporter) Option {
	return optionFunc(func(c *config) {
		if e != nil {
			c.LogExporters = append(c.LogExporters, e)
		}
	})
}

// WithTenantHeader sets the request header that carries the tenant id.
// The default is DefaultTenantHeader (x-tenant-id).
func WithTenantHeader(name string) Option {
	return optionFunc(func(c *config) {
		if name != "" {
			c.TenantHeader = name
		}
	})
}

// WithRequestIDHeader sets the request header that carries the request id.
// The default is DefaultRequestIDHeader (x-request-id).
func WithRequestIDHeader(name string) Option {
	return optionFunc(func(c *config) {
		if name != "" {
			c.RequestIDHeader = name
		}
	})
}

// WithTenantRequired makes the HTTP middleware reject a request without a
// tenant header with 400 Bad Request; the handler is not called.
func WithTenantRequired() Option {
	return optionFunc(func(c *config) { c.TenantRequired = true })
}

// WithTenantValidator makes the HTTP middleware require a tenant and check it
// with v; a rejected tenant gets 400 Bad Request and the handler is not
// called. It implies WithTenantRequired.
func WithTenantValidator(v TenantValidator) Option {
	return optionFunc(func(c *config) {
		if v != nil {
			c.TenantRequired = true
			c.TenantValidator = v
		}
	})
}

// WithIncomingBaggage makes the HTTP middleware keep the W3C baggage of
// incoming requests, for a service whose callers are trusted to set it. By
// default the middleware drops it: baggage from outside is not trusted and
// would otherwise be forwarded by NewTransport. Even with this option the
// tenant.id member is dropped: the tenant comes only from the tenant header,
// checked by WithTenantValidator (see Tenant).
func WithIncomingBaggage() Option {
	return optionFunc(func(c *config) { c.IncomingBaggage = true })
}

// WithTenantHosts lists the hosts NewTransport sends the tenant to: its
// tenant header and the baggage (which carries tenant.id). Requests to other
// hosts get the trace context and the request id only. An entry is a host
// name (any port), a host:port, or "*.example.com" for every host under
// example.com; case does not matter. Without this option the tenant goes to
// no host. Repeated options add to the list.
func WithTenantHosts(hosts ...string) Option {
	return optionFunc(func(c *config) {
		for _, h := range hosts {
			if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
				c.TenantHosts = append(c.TenantHosts, h)
			}
		}
	})
}

// WithHTTPOptions passes opts to otelhttp, after this package's own (the
// providers and propagators), in NewHandler, NewMiddleware and NewTransport.
// For example otelhttp.WithFilter keeps health checks out of the traces:
//
//	observe.WithHTTPOptions(otelhttp.WithFilter(func(r *http.Request) bool {
//		return r.URL.Path != "/healthz"
//	}))
func WithHTTPOptions(opts ...otelhttp.Option) Option {
	return optionFunc(func(c *config) {
		for _, o := range opts {
			if o != nil {
				c.HTTPOptions = append(c.HTTPOptions, o)
			}
		}
	})
}

// WithLogBridge makes the log handler also send every record to
// OpenTelemetry logs through the logger provider (see WithLoggerProvider).
func WithLogBridge() Option {
	return optionFunc(func(c *config) { c.LogBridge = true })
}

// WithDriverName sets the sqlcommenter db_driver tag. OpenDB uses its
// driverName argument; WrapConnector uses the driver's package path unless
// this option is given.
func WithDriverName(name string) Option {
	return optionFunc(func(c *config) { c.DriverName = name })
}

// WithTxOptions sets the options TracedTx begins its transaction with.
func WithTxOptions(o *sql.TxOptions) Option {
	return optionFunc(func(c *config) {
		if o != nil {
			c.TxOptions = o
		}
	})
}

// WithSpanAttributes adds attributes to the span TracedTx or TracedOp starts.
func WithSpanAttributes(attrs ...attribute.KeyValue) Option {
	return optionFunc(func(c *config) {
		c.SpanAttributes = append(c.SpanAttributes, attrs...)
	})
}

// WithCardinalityLimit bounds how many distinct tenant ids (HTTP metrics) or
// partner ids (business metrics) an instrument records; later values are
// recorded as OverflowValue. The default is DefaultCardinalityLimit. Spans
// always carry the real id.
func WithCardinalityLimit(n int) Option {
	return optionFunc(func(c *config) {
		if n > 0 {
			c.CardinalityLimit = n
		}
	})
}

// WithCurrency sets the ISO 4217 currency code of the business metrics'
// monetary instruments; their unit is "{USD}" for the default "USD".
func WithCurrency(code string) Option {
	return optionFunc(func(c *config) {
		if code != "" {
			c.Currency = code
		}
	})
}
