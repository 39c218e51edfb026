package observe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/dotmac/pgtrace/internal/otelenv"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/log/global"
	"go.opentelemetry.io/otel/propagation"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Setup builds tracer, meter and logger providers, installs them and the
// W3C tracecontext and baggage propagators globally, and returns a shutdown
// function that flushes and stops them all, returning every error it met.
//
// Precedence is options > environment variables > defaults. The resource
// has service.name (WithServiceName, else OTEL_SERVICE_NAME or the
// service.name of OTEL_RESOURCE_ATTRIBUTES, else WithDefaultServiceName),
// service.version (WithServiceVersion, else OTEL_RESOURCE_ATTRIBUTES, else
// SERVICE_VERSION, else the main module's version), and
// deployment.environment.name (WithEnvironment, else
// OTEL_RESOURCE_ATTRIBUTES, else ENVIRONMENT), plus the rest of
// OTEL_RESOURCE_ATTRIBUTES.
//
// Sampling is parent-based: a sampled parent's children are sampled; roots
// are sampled with the ratio of WithSamplingRatio, else the sampler of
// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else
// OTEL_TRACES_SAMPLING_RATIO, else always.
//
// The OTEL_* variables are read as pgtrace reads them (internal/otelenv).
// Each signal is exported with OTLP when an endpoint is set for it
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT),
// OTEL_{TRACES,METRICS,LOGS}_EXPORTER is not "none" and OTEL_SDK_DISABLED
// is not true, over gRPC or HTTP as OTEL_EXPORTER_OTLP_PROTOCOL (or its
// per-signal variant) says: "grpc", the default, or "http/protobuf"; with
// http/protobuf, OTEL_EXPORTER_OTLP_ENDPOINT is a base URL to which
// /v1/traces, /v1/metrics and /v1/logs are appended. The exporters read
// the other OTEL_EXPORTER_OTLP_* variables (headers, certificates,
// timeouts). A value Setup cannot honour does not fail it: as the
// OpenTelemetry specification asks, it is replaced with a warning handed
// to the OTel error handler (otel.Handle): http/json is sent as
// http/protobuf, an unknown protocol as grpc, an exporter other than otlp
// as otlp, an invalid sampler setting as the default. With no endpoint
// Setup does not fail either: the signal has no exporter (spans still get
// ids, so logs and sqlcommenter comments still carry them).
// WithSpanExporter, WithMetricReader and WithLogExporter add exporters of
// the caller's.
func Setup(ctx context.Context, opts ...Option) (shutdown func(context.Context) error, err error) {
	c := newConfig(opts...)
	var shutdowns []func(context.Context) error
	shutdownAll := func(ctx context.Context) error {
		var errs []error
		for i := len(shutdowns) - 1; i >= 0; i-- {
			errs = append(errs, shutdowns[i](ctx))
		}
		shutdowns = nil
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, shutdownAll(ctx))
		}
	}()

	e := env(os.Getenv)
	getenv := otelenv.Getenv(e)
	var targets [3]otelenv.Target
	for i, signal := range [...]string{"traces", "metrics", "logs"} {
		targets[i] = otelenv.OTLP(signal, getenv)
		for _, w := range targets[i].Warnings {
			otel.Handle(errors.New("observe: " + w))
		}
	}
	res, err := newResource(ctx, c, e)
	if err != nil {
		return nil, err
	}
	sampler, err := newSampler(c, getenv)
	if err != nil {
		return nil, err
	}

	// Traces.
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithSampler(sampler)}
	exporters := c.SpanExporters
	if t := targets[0]; t.Off == "" {
		exp, err := newOTLPSpanExporter(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP trace exporter (%s): %w", t, err)
		}
		exporters = append(exporters, exp)
	}
	bsp := otelenv.BSP(getenv).Options()
	for _, exp := range exporters {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp, bsp...))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	shutdowns = append(shutdowns, tp.Shutdown)

	// Metrics.
	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	for _, r := range c.MetricReaders {
		mpOpts = append(mpOpts, sdkmetric.WithReader(r))
	}
	if t := targets[1]; t.Off == "" {
		exp, err := newOTLPMetricExporter(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP metric exporter (%s): %w", t, err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp,
			sdkmetric.WithInterval(otelenv.MetricInterval(getenv)), sdkmetric.WithTimeout(otelenv.MetricTimeout(getenv)))))
	}
	mp := sdkmetric.NewMeterProvider(mpOpts...)
	shutdowns = append(shutdowns, mp.Shutdown)

	// Logs.
	lpOpts := []sdklog.LoggerProviderOption{sdklog.WithResource(res)}
	logExporters := c.LogExporters
	if t := targets[2]; t.Off == "" {
		exp, err := newOTLPLogExporter(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP log exporter (%s): %w", t, err)
		}
		logExporters = append(logExporters, exp)
	}
	for _, exp := range logExporters {
		lpOpts = append(lpOpts, sdklog.WithProcessor(sdklog.NewBatchProcessor(exp)))
	}
	lp := sdklog.NewLoggerProvider(lpOpts...)
	shutdowns = append(shutdowns, lp.Shutdown)

	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	global.SetLoggerProvider(lp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(
		propagation.TraceContext{}, propagation.Baggage{}))
	setDefaultApplication(c.application())
	return shutdownAll, nil
}

// newResource builds the resource from the defaults, then the environment,
// then the options: later sources override earlier ones.
func newResource(ctx context.Context, c *config, e env) (*resource.Resource, error) {
	var defaults []attribute.KeyValue
	if c.DefaultServiceName != "" {
		defaults = append(defaults, semconv.ServiceName(c.DefaultServiceName))
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		defaults = append(defaults, semconv.ServiceVersion(bi.Main.Version))
	}
	// The guide's variables, below the OTEL_* ones (WithFromEnv).
	var guide []attribute.KeyValue
	if v := e.get(EnvServiceVersion); v != "" {
		guide = append(guide, semconv.ServiceVersion(v))
	}
	if v := e.environment(); v != "" {
		guide = append(guide, semconv.DeploymentEnvironmentNameKey.String(v))
	}
	var opts []attribute.KeyValue
	if c.ServiceName != "" {
		opts = append(opts, semconv.ServiceName(c.ServiceName))
	}
	if c.ServiceVersion != "" {
		opts = append(opts, semconv.ServiceVersion(c.ServiceVersion))
	}
	if c.Environment != "" {
		opts = append(opts, semconv.DeploymentEnvironmentNameKey.String(c.Environment))
	}
	r, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(defaults...),
		resource.WithAttributes(guide...),
		resource.WithFromEnv(),
		resource.WithAttributes(opts...),
	)
	if err != nil {
		return nil, fmt.Errorf("observe: resource: %w", err)
	}
	r, err = resource.Merge(resource.Default(), r)
	if err != nil {
		return nil, fmt.Errorf("observe: resource: %w", err)
	}
	return r, nil
}

// newSampler returns the sampler Setup passes to the SDK: the option's
// ratio, parent-based, else what the OTEL_* variables say
// (otelenv.Sampler; an invalid setting is a warning and the default).
func newSampler(c *config, getenv otelenv.Getenv) (sdktrace.Sampler, error) {
	if r := c.SamplingRatio; r != nil {
		if *r < 0 || *r > 1 {
			return nil, fmt.Errorf("observe: sampling ratio %v is not between 0 and 1", *r)
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(*r)), nil
	}
	s, err := otelenv.Sampler(getenv)
	if err != nil {
		otel.Handle(fmt.Errorf("observe: %w", err))
	}
	return s, nil
}

// The OTLP exporters send where t says: the URL otelenv resolved, unless
// the endpoint has a scheme the clients read themselves (unix:, dns:).

func newOTLPSpanExporter(ctx context.Context, t otelenv.Target) (sdktrace.SpanExporter, error) {
	if t.Protocol == otelenv.ProtocolHTTP {
		// Protobuf whatever OTEL_EXPORTER_OTLP_PROTOCOL says: the client
		// would read http/json from it.
		opts := []otlptracehttp.Option{otlptracehttp.WithEncoding(otlptracehttp.EncodingProtobuf)}
		if !t.Custom {
			opts = append(opts, otlptracehttp.WithEndpointURL(t.URL))
		}
		return otlptracehttp.New(ctx, opts...)
	}
	var opts []otlptracegrpc.Option
	if !t.Custom {
		opts = append(opts, otlptracegrpc.WithEndpointURL(t.URL))
	}
	return otlptracegrpc.New(ctx, opts...)
}

func newOTLPMetricExporter(ctx context.Context, t otelenv.Target) (sdkmetric.Exporter, error) {
	if t.Protocol == otelenv.ProtocolHTTP {
		var opts []otlpmetrichttp.Option
		if !t.Custom {
			opts = append(opts, otlpmetrichttp.WithEndpointURL(t.URL))
		}
		return otlpmetrichttp.New(ctx, opts...)
	}
	var opts []otlpmetricgrpc.Option
	if !t.Custom {
		opts = append(opts, otlpmetricgrpc.WithEndpointURL(t.URL))
	}
	return otlpmetricgrpc.New(ctx, opts...)
}

func newOTLPLogExporter(ctx context.Context, t otelenv.Target) (sdklog.Exporter, error) {
	if t.Protocol == otelenv.ProtocolHTTP {
		var opts []otlploghttp.Option
		if !t.Custom {
			opts = append(opts, otlploghttp.WithEndpointURL(t.URL))
		}
		return otlploghttp.New(ctx, opts...)
	}
	var opts []otlploggrpc.Option
	if !t.Custom {
		opts = append(opts, otlploggrpc.WithEndpointURL(t.URL))
	}
	return otlploggrpc.New(ctx, opts...)
}
