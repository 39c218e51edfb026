package observe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/log/global"
	"go.opentelemetry.io/otel/propagation"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Environment variables Setup reads itself; the OTLP exporters and the SDK
// read the other OTEL_* variables (endpoints, headers, insecure, timeouts,
// OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL, …).
const (
	// EnvEnvironment sets deployment.environment.name.
	EnvEnvironment = "ENVIRONMENT"
	// EnvSamplingRatio is the guide's sampling ratio variable: the ratio of
	// root spans sampled, children following their parent. OTEL_TRACES_SAMPLER
	// takes precedence when both are set.
	EnvSamplingRatio = "OTEL_TRACES_SAMPLING_RATIO"
)

// Setup builds tracer, meter and logger providers, installs them and the
// W3C tracecontext and baggage propagators globally, and returns a shutdown
// function that flushes and stops them all, returning every error it met.
//
// Precedence is options > environment variables > defaults. The resource has
// service.name (WithServiceName, OTEL_SERVICE_NAME), service.version
// (WithServiceVersion, else the main module's version), and
// deployment.environment.name (WithEnvironment, ENVIRONMENT), plus
// OTEL_RESOURCE_ATTRIBUTES.
//
// Sampling is parent-based: a sampled parent's children are sampled; roots
// are sampled with the ratio of WithSamplingRatio, else the sampler of
// OTEL_TRACES_SAMPLER (read by the SDK), else OTEL_TRACES_SAMPLING_RATIO,
// else always.
//
// Each signal is exported with OTLP over gRPC when an endpoint is set for it
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT)
// and OTEL_{TRACES,METRICS,LOGS}_EXPORTER is not "none". With no endpoint
// Setup does not fail: the signal has no exporter (spans still get ids, so
// logs and sqlcommenter comments still carry them). WithSpanExporter,
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

	res, err := newResource(ctx, c, os.Getenv)
	if err != nil {
		return nil, err
	}
	sampler, err := newSampler(c, os.Getenv)
	if err != nil {
		return nil, err
	}

	// Traces.
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if sampler != nil {
		tpOpts = append(tpOpts, sdktrace.WithSampler(sampler))
	}
	exporters := c.SpanExporters
	if on, err := otlpEnabled("TRACES", os.Getenv); err != nil {
		return nil, err
	} else if on {
		e, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP trace exporter: %w", err)
		}
		exporters = append(exporters, e)
	}
	for _, e := range exporters {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(e))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	shutdowns = append(shutdowns, tp.Shutdown)

	// Metrics.
	mpOpts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	for _, r := range c.MetricReaders {
		mpOpts = append(mpOpts, sdkmetric.WithReader(r))
	}
	if on, err := otlpEnabled("METRICS", os.Getenv); err != nil {
		return nil, err
	} else if on {
		e, err := otlpmetricgrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP metric exporter: %w", err)
		}
		mpOpts = append(mpOpts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(e)))
	}
	mp := sdkmetric.NewMeterProvider(mpOpts...)
	shutdowns = append(shutdowns, mp.Shutdown)

	// Logs.
	lpOpts := []sdklog.LoggerProviderOption{sdklog.WithResource(res)}
	logExporters := c.LogExporters
	if on, err := otlpEnabled("LOGS", os.Getenv); err != nil {
		return nil, err
	} else if on {
		e, err := otlploggrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("observe: OTLP log exporter: %w", err)
		}
		logExporters = append(logExporters, e)
	}
	for _, e := range logExporters {
		lpOpts = append(lpOpts, sdklog.WithProcessor(sdklog.NewBatchProcessor(e)))
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

func newResource(ctx context.Context, c *config, getenv func(string) string) (*resource.Resource, error) {
	var attrs []attribute.KeyValue
	if env := c.Environment; env != "" {
		attrs = append(attrs, semconv.DeploymentEnvironmentNameKey.String(env))
	}
	if c.ServiceName != "" {
		attrs = append(attrs, semconv.ServiceName(c.ServiceName))
	}
	version := c.ServiceVersion
	if version == "" {
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
	}
	if version != "" {
		attrs = append(attrs, semconv.ServiceVersion(version))
	}
	var envAttrs []attribute.KeyValue
	if env := strings.TrimSpace(getenv(EnvEnvironment)); env != "" {
		envAttrs = append(envAttrs, semconv.DeploymentEnvironmentNameKey.String(env))
	}
	// Later detectors override earlier ones.
	r, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithAttributes(envAttrs...),
		resource.WithFromEnv(),
		resource.WithAttributes(attrs...),
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
func newSampler(c *config, getenv func(string) string) (sdktrace.Sampler, error) {
	ratio := c.SamplingRatio
	if ratio == nil && getenv("OTEL_TRACES_SAMPLER") == "" {
		if s := strings.TrimSpace(getenv(EnvSamplingRatio)); s != "" {
			r, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("observe: %s=%q: %w", EnvSamplingRatio, s, err)
			}
			ratio = &r
		}
	}
	if ratio == nil {
		return nil, nil
	}
	if *ratio < 0 || *ratio > 1 {
		return nil, fmt.Errorf("observe: sampling ratio %v is not between 0 and 1", *ratio)
	}
	return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(*ratio)), nil
}

// otlpEnabled reports whether signal (TRACES, METRICS, LOGS) is to be
// exported with OTLP: an endpoint is set and the exporter is not "none".
func otlpEnabled(signal string, getenv func(string) string) (bool, error) {
	switch exp := strings.TrimSpace(getenv("OTEL_" + signal + "_EXPORTER")); exp {
	case "none":
		return false, nil
	case "", "otlp":
	default:
		return false, fmt.Errorf("observe: OTEL_%s_EXPORTER=%q is not supported (want otlp or none)", signal, exp)
	}
	if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") == "" {
		return false, nil
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		switch p := strings.TrimSpace(getenv(k)); p {
		case "":
			continue
		case "grpc":
			return true, nil
		default:
			return false, fmt.Errorf("observe: %s=%q is not supported (want grpc)", k, p)
		}
	}
	return true, nil
}
