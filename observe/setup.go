package observe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"

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
// OTEL_TRACES_SAMPLER (read by the SDK), else OTEL_TRACES_SAMPLING_RATIO,
// else always.
//
// Each signal is exported with OTLP when an endpoint is set for it
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT)
// and OTEL_{TRACES,METRICS,LOGS}_EXPORTER is not "none", over gRPC or
// HTTP as OTEL_EXPORTER_OTLP_PROTOCOL (or its per-signal variant) says:
// "grpc", the default, or "http/protobuf". The exporters read the other
// OTEL_EXPORTER_OTLP_* variables as the specification says; with
// http/protobuf, OTEL_EXPORTER_OTLP_ENDPOINT is a base URL to which
// /v1/traces, /v1/metrics and /v1/logs are appended. With no endpoint Setup
// does not fail: the signal has no exporter (spans still get ids, so logs
// and sqlcommenter comments still carry them). WithSpanExporter,
// WithMetricReader and WithLogExporter add exporters of the caller's.
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
	// Every variable is checked before any exporter exists, so that a
	// mistake fails fast, without a shutdown that waits on exporters.
	var protos [3]string
	for i, signal := range [...]string{"TRACES", "METRICS", "LOGS"} {
		if protos[i], err = e.otlpProtocol(signal); err != nil {
			return nil, err
		}
	}
	res, err := newResource(ctx, c, e)
	if err != nil {
		return nil, err
	}
	sampler, err := newSampler(c, e)
	if err != nil {
		return nil, err
	}

	// Traces.
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if sampler != nil {
		tpOpts = append(tpOpts, sdktrace.WithSampler(sampler))
	}
	exporters := c.SpanExporters
	if proto := protos[0]; proto != "" {
		exp, err := newOTLPSpanExporter(ctx, proto)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP trace exporter (%s): %w", proto, err)
		}
		exporters = append(exporters, exp)
	}
	for _, exp := range exporters {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	shutdowns = append(shutdowns, tp.Shutdown)

	// Metrics.
	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	for _, r := range c.MetricReaders {
		mpOpts = append(mpOpts, sdkmetric.WithReader(r))
	}
	if proto := protos[1]; proto != "" {
		exp, err := newOTLPMetricExporter(ctx, proto)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP metric exporter (%s): %w", proto, err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
	}
	mp := sdkmetric.NewMeterProvider(mpOpts...)
	shutdowns = append(shutdowns, mp.Shutdown)

	// Logs.
	lpOpts := []sdklog.LoggerProviderOption{sdklog.WithResource(res)}
	logExporters := c.LogExporters
	if proto := protos[2]; proto != "" {
		exp, err := newOTLPLogExporter(ctx, proto)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP log exporter (%s): %w", proto, err)
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

// newSampler returns the sampler Setup passes to the SDK, or nil to let the
// SDK read OTEL_TRACES_SAMPLER or use its default (parent-based, always on).
func newSampler(c *config, e env) (sdktrace.Sampler, error) {
	ratio := c.SamplingRatio
	if ratio == nil {
		r, err := e.samplingRatio()
		if err != nil {
			return nil, err
		}
		ratio = r
	}
	if ratio == nil {
		return nil, nil
	}
	if *ratio < 0 || *ratio > 1 {
		return nil, fmt.Errorf("observe: sampling ratio %v is not between 0 and 1", *ratio)
	}
	return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(*ratio)), nil
}

func newOTLPSpanExporter(ctx context.Context, proto string) (sdktrace.SpanExporter, error) {
	if proto == protocolHTTP {
		return otlptracehttp.New(ctx)
	}
	return otlptracegrpc.New(ctx)
}

func newOTLPMetricExporter(ctx context.Context, proto string) (sdkmetric.Exporter, error) {
	if proto == protocolHTTP {
		return otlpmetrichttp.New(ctx)
	}
	return otlpmetricgrpc.New(ctx)
}

func newOTLPLogExporter(ctx context.Context, proto string) (sdklog.Exporter, error) {
	if proto == protocolHTTP {
		return otlploghttp.New(ctx)
	}
	return otlploggrpc.New(ctx)
}
