package export

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dotmac/pgtrace/export/internal/fastspan"
	"github.com/dotmac/pgtrace/internal/otelenv"
	"github.com/dotmac/pgtrace/pool"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Exporter records spans and metrics for the proxy's statements and
// connections.
//
// Statement and Conn are called from one goroutine (the pipeline's
// dispatcher); Finding may be called from another. MetricsHandler serves
// concurrently. Shutdown flushes and stops everything.
type Exporter struct {
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	tp     *sdktrace.TracerProvider // nil when no span goes anywhere
	// spans builds statement spans on the fast path (SpanPathFast); nil
	// on the SDK path, where they go through the tracers, and when no
	// span goes anywhere.
	spans *fastspan.Sink
	// spansOn says statement spans go somewhere: a span exporter or
	// processor is configured, and Shutdown has not begun. Under mu.
	spansOn bool
	mp      *sdkmetric.MeterProvider
	drops   *fastspan.Batcher // the fast path's queue; nil unless spans are exported on it
	apps    *applications
	// legacy: spans carry the pre-1.26 database attributes (db.system,
	// db.name, db.statement, db.operation, db.user) beside the stable
	// ones (otelenv.LegacyDatabaseAttributes).
	legacy bool
	reg    *prometheus.Registry

	// What the span and metric exporters sent or not (delivery.go);
	// always set.
	spanDelivery, metricDelivery *delivery

	serverAddr string // from Config.UpstreamAddr; "" means per connection
	serverPort int

	inst instruments

	connStateIdle, connStateUsed metric.MeasurementOption // db.client.connection.count sets

	// mu guards the per-connection state and the attribute-set caches. Only
	// the dispatcher takes it on the hot path, so it is uncontended.
	mu      sync.Mutex
	conns   map[uint64]*connState
	sweepAt int // len(conns) at which the next ConnOpened sweeps
	sets    map[setKey]*metricSets

	// The pools' attribute sets, by pool (pool.go), read by the pool
	// hooks on session goroutines; poolMu guards adding to them, and pools.
	poolSets     sync.Map // pool.Key → *poolSets
	poolMu       sync.Mutex
	poolSetCount int                 // entries in poolSets
	pools        func() []pool.Stats // nil until ObservePools
}

// New builds the tracer and meter providers. It sets the global OTel error
// handler and logger to log through cfg.Logger (errors rate-limited). OTLP
// export is on when an OTEL_EXPORTER_OTLP_{,TRACES_,METRICS_}ENDPOINT is set
// and OTEL_SDK_DISABLED is not true (otelenv.OTLP); gRPC unless
// OTEL_EXPORTER_OTLP_PROTOCOL (or the per-signal variable) says
// http/protobuf. One log line says where each signal goes. Exporters
// connect lazily, so New does not fail because a collector is down. The
// Prometheus handler is always on.
func New(ctx context.Context, cfg Config) (*Exporter, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CardinalityLimit == 0 {
		cfg.CardinalityLimit = defaultCardinalityLimit
	}
	if cfg.MaxApplications <= 0 {
		cfg.MaxApplications = defaultMaxApplications
	}
	switch cfg.SpanPath {
	case "":
		cfg.SpanPath = SpanPathFast
	case SpanPathFast, SpanPathSDK:
	default:
		return nil, fmt.Errorf("export: span path %q: want %s or %s", cfg.SpanPath, SpanPathFast, SpanPathSDK)
	}
	switch cfg.ServiceNameFrom {
	case "":
		cfg.ServiceNameFrom = ServiceFromNone
	case ServiceFromNone, ServiceFromApplicationName, ServiceFromSQLCommenter:
	default:
		return nil, fmt.Errorf("export: service name from %q: want %s, %s or %s", cfg.ServiceNameFrom,
			ServiceFromApplicationName, ServiceFromSQLCommenter, ServiceFromNone)
	}
	traces, metrics := otelenv.OTLP("traces", os.Getenv), otelenv.OTLP("metrics", os.Getenv)
	// The SDK reports export failures to the global handler and its own
	// notes to the global logger. pgtrace has one Exporter per process;
	// its logger takes both, in its format.
	otel.SetErrorHandler(&errorHandler{log: cfg.Logger, targets: []otelenv.Target{traces, metrics}})
	otel.SetLogger(logr.FromSlogHandler(newSDKLogHandler(cfg.Logger.Handler(), traces, metrics)))
	e := &Exporter{
		cfg:     cfg,
		log:     cfg.Logger,
		legacy:  otelenv.LegacyDatabaseAttributes(os.Getenv),
		conns:   make(map[uint64]*connState),
		sweepAt: minSweepAt,
		sets:    make(map[setKey]*metricSets),
		reg:     prometheus.NewRegistry(),
	}
	if cfg.UpstreamAddr != "" {
		e.serverAddr, e.serverPort = splitHostPort(cfg.UpstreamAddr)
	}
	upstream := keyConnPoolName.String(cfg.UpstreamAddr)
	e.connStateIdle = metric.WithAttributeSet(attribute.NewSet(attrSystem, upstream, keyConnState.String("idle")))
	e.connStateUsed = metric.WithAttributeSet(attribute.NewSet(attrSystem, upstream, keyConnState.String("used")))

	res, err := resource.New(ctx,
		resource.WithAttributes(
			attribute.String("service.name", defaultServiceName),
			attribute.String("service.version", cfg.Version),
		),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("export: resource: %w", err)
	}

	e.spanDelivery = &delivery{signal: "traces", target: traces, log: e.log}
	e.metricDelivery = &delivery{signal: "metrics", target: metrics, log: e.log}
	e.logTargets(traces, metrics)

	e.apps = &applications{from: cfg.ServiceNameFrom, max: cfg.MaxApplications, base: res, version: cfg.Version,
		byName: make(map[string]*application)}
	if err := e.buildTracing(ctx, cfg, res, traces); err != nil {
		return nil, err
	}
	if err := e.buildMetrics(ctx, cfg, res, metrics); err != nil {
		_ = e.shutdownTracing(ctx)
		return nil, err
	}
	return e, nil
}

// logTargets says, once at start, where OTLP goes: one line for both
// signals, and a warning for each thing that may surprise (an endpoint
// without a scheme sent with TLS, a protocol replaced).
func (e *Exporter) logTargets(traces, metrics otelenv.Target) {
	switch {
	case traces.Off == "OTEL_SDK_DISABLED=true":
		e.log.Info("OTLP export disabled by OTEL_SDK_DISABLED; metrics on /metrics only")
		return
	case traces.Off != "" && metrics.Off != "":
		msg := "OTLP export off: no OTEL_EXPORTER_OTLP_ENDPOINT set; metrics on /metrics only"
		if traces.Off != metrics.Off {
			msg = "OTLP export off; metrics on /metrics only"
		}
		e.log.Info(msg, "traces", traces.String(), "metrics", metrics.String())
		return
	}
	attrs := []any{"traces", traces.String(), "metrics", metrics.String()}
	if traces.Off == "" {
		attrs = append(attrs, "sampler", otelenv.SamplerName(os.Getenv))
	}
	if metrics.Off == "" {
		attrs = append(attrs, "metric_interval", otelenv.MetricInterval(os.Getenv).String())
	}
	e.log.Info("OTLP export", attrs...)
	warned := map[string]bool{}
	for _, t := range []otelenv.Target{traces, metrics} {
		if t.Off != "" {
			continue
		}
		for _, w := range t.Warnings {
			if !warned[w] {
				warned[w] = true
				e.log.Warn(w)
			}
		}
		if t.NoScheme && !t.Insecure && !warned[t.Variable] {
			warned[t.Variable] = true
			e.log.Warn(t.Variable+" has no scheme: sending with TLS, as the OTLP specification says",
				"endpoint", t.Endpoint,
				"fix", "for a collector without TLS set OTEL_EXPORTER_OTLP_INSECURE=true or write http://"+t.Endpoint)
		}
	}
}

func (e *Exporter) buildTracing(ctx context.Context, cfg Config, res *resource.Resource, target otelenv.Target) error {
	fast := cfg.SpanPath != SpanPathSDK
	spanExp := cfg.SpanExporter
	if spanExp == nil && target.Off == "" {
		// The OTel clients read the OTEL_EXPORTER_OTLP_* settings; the
		// endpoint is the one otelenv.OTLP resolved. Both paths send
		// protobuf (the client would read http/json from the variables).
		var client fastspan.Client
		if target.Protocol == otelenv.ProtocolHTTP {
			opts := []otlptracehttp.Option{otlptracehttp.WithEncoding(otlptracehttp.EncodingProtobuf)}
			if !target.Custom {
				opts = append(opts, otlptracehttp.WithEndpointURL(target.URL))
			}
			client = otlptracehttp.NewClient(opts...)
		} else {
			var opts []otlptracegrpc.Option
			if !target.Custom {
				opts = append(opts, otlptracegrpc.WithEndpointURL(target.URL))
			}
			client = otlptracegrpc.NewClient(opts...)
		}
		client = deliveredTraces{client, e.spanDelivery}
		var err error
		if fast {
			spanExp, err = fastspan.NewExporter(ctx, client) // pgtrace's encoder
		} else {
			spanExp, err = otlptrace.New(ctx, client) // the OTel exporter
		}
		if err != nil {
			return fmt.Errorf("export: OTLP span exporter: %w", err)
		}
	}

	if spanExp == nil && cfg.SpanProcessor == nil {
		e.tracer = noop.NewTracerProvider().Tracer(ScopeName)
		return nil
	}
	base, err := otelenv.Sampler(os.Getenv)
	if err != nil {
		e.log.Warn("invalid trace sampler configuration; using parentbased_always_on", "err", err)
	}
	sampler := keepSampler{base: base}
	scope := instrumentation.Scope{Name: ScopeName, Version: cfg.Version}

	var procs []sdktrace.SpanProcessor
	if fast {
		// Statement spans are recycled when they reach nothing but the
		// batcher and an exporter known to keep nothing of them: no user
		// processor.
		recycle := cfg.SpanProcessor == nil && keepsNoSpans(cfg.SpanExporter)
		e.spans = fastspan.NewSink(sampler, res, scope, recycle)
		if spanExp != nil {
			var release func(sdktrace.ReadOnlySpan)
			if recycle {
				release = e.spans.Release
			}
			e.drops = fastspan.NewBatcher(spanExp, release, otelenv.BSP(os.Getenv)) // bounded; drops and counts
			procs = append(procs, e.drops)
		}
	} else if spanExp != nil {
		// The SDK's batch span processor: bounded too, it drops when full
		// (it does not block), but keeps its count to itself.
		procs = append(procs, sdktrace.NewBatchSpanProcessor(spanExp, otelenv.BSP(os.Getenv).Options()...))
	}
	if cfg.SpanProcessor != nil {
		procs = append(procs, cfg.SpanProcessor)
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
	}
	for _, p := range procs {
		opts = append(opts, sdktrace.WithSpanProcessor(p))
	}
	// Transaction and connect spans go through the provider, and on the
	// SDK path statement spans too; on the fast path statement spans are
	// built whole and handed to the same processors (fastspan.Sink).
	e.tp = sdktrace.NewTracerProvider(opts...)
	e.tracer = e.tp.Tracer(ScopeName, trace.WithInstrumentationVersion(cfg.Version))
	if e.spans != nil {
		e.spans.SetProcessors(procs)
	}
	e.spansOn = true
	// An application's spans (transaction spans, and statement spans on
	// the SDK path) come from a provider of its own resource, feeding the
	// same processors.
	e.apps.newTracer = func(res *resource.Resource) (trace.Tracer, func(context.Context) error) {
		opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithSampler(sampler)}
		for _, p := range procs {
			opts = append(opts, sdktrace.WithSpanProcessor(sharedProcessor{p}))
		}
		tp := sdktrace.NewTracerProvider(opts...)
		return tp.Tracer(ScopeName, trace.WithInstrumentationVersion(cfg.Version)), tp.Shutdown
	}
	return nil
}

// keepsNoSpans reports whether exp, the configured span exporter (nil:
// pgtrace's own OTLP exporter), is known to read the spans only while
// ExportSpans runs and to keep none of them, nor their attribute slices,
// once it returns: pgtrace's OTLP exporter (fastspan.Exporter, over gRPC
// or HTTP), which encodes the batch before sending it and retries with
// the encoded request, and any exporter that says so (TransientExporter).
func keepsNoSpans(exp sdktrace.SpanExporter) bool {
	switch exp.(type) {
	case nil, *fastspan.Exporter, TransientExporter:
		return true
	}
	return false
}

// TransientExporter is a span exporter that reads the spans only while
// ExportSpans runs and keeps none of them, nor their attribute slices,
// once it returns. Given as Config.SpanExporter on the fast span path, its
// statement spans are recycled, as with pgtrace's OTLP exporter.
type TransientExporter interface {
	sdktrace.SpanExporter
	KeepsNoSpans()
}

func (e *Exporter) buildMetrics(ctx context.Context, cfg Config, res *resource.Resource, target otelenv.Target) error {
	prom, err := otelprom.New(otelprom.WithRegisterer(e.reg))
	if err != nil {
		return fmt.Errorf("export: prometheus exporter: %w", err)
	}
	opts := []sdkmetric.Option{
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(prom),
		sdkmetric.WithCardinalityLimit(cfg.CardinalityLimit),
	}
	if cfg.ExponentialHistograms {
		exp := sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: 20}}
		for _, name := range []string{"db.client.operation.duration", "db.client.connection.create_time",
			"db.client.connection.wait_time", "db.client.connection.use_time", "pgtrace.transaction.duration"} {
			opts = append(opts, sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Name: name}, exp)))
		}
	}
	if target.Off == "" {
		var exp sdkmetric.Exporter
		if target.Protocol == otelenv.ProtocolHTTP {
			var hopts []otlpmetrichttp.Option
			if !target.Custom {
				hopts = append(hopts, otlpmetrichttp.WithEndpointURL(target.URL))
			}
			exp, err = otlpmetrichttp.New(ctx, hopts...)
		} else {
			var gopts []otlpmetricgrpc.Option
			if !target.Custom {
				gopts = append(gopts, otlpmetricgrpc.WithEndpointURL(target.URL))
			}
			exp, err = otlpmetricgrpc.New(ctx, gopts...)
		}
		if err != nil {
			return fmt.Errorf("export: OTLP metric exporter: %w", err)
		}
		exp = deliveredMetrics{Exporter: exp, d: e.metricDelivery}
		opts = append(opts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp,
			sdkmetric.WithInterval(otelenv.MetricInterval(os.Getenv)), sdkmetric.WithTimeout(otelenv.MetricTimeout(os.Getenv)))))
	}
	if cfg.MetricReader != nil {
		opts = append(opts, sdkmetric.WithReader(cfg.MetricReader))
	}
	e.mp = sdkmetric.NewMeterProvider(opts...)
	meter := e.mp.Meter(ScopeName, metric.WithInstrumentationVersion(cfg.Version))
	return e.inst.init(meter, e)
}

// MetricsHandler serves the Prometheus exposition of every metric, from the
// exporter's own registry. A scraper that asks for OpenMetrics (Prometheus
// does, and needs it for exemplars) gets it, with the trace ids of sampled
// statements as exemplars on the duration histograms; others get the
// classic text format.
func (e *Exporter) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{ErrorLog: slogPromLogger{e.log}, EnableOpenMetrics: true})
}

// SpansDropped is the number of spans dropped because the export queue was
// full.
func (e *Exporter) SpansDropped() uint64 {
	if e.drops == nil {
		return 0
	}
	return e.drops.Dropped()
}

// Shutdown ends open transaction spans, flushes spans and metrics while ctx
// allows, and stops the providers. When something could not be sent, the
// error is a *ShutdownError: one line naming what was not sent, and why.
func (e *Exporter) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	for id, cs := range e.conns {
		e.endTxLocked(cs, time.Now(), "closed")
		delete(e.conns, id)
	}
	e.spansOn = false // the processors shut down with the provider
	e.apps.shutdown(ctx)
	e.mu.Unlock()
	// Both flush at once, so that a dead collector's spans do not use up
	// the time the metrics had, and vice versa.
	var errT error
	done := make(chan struct{})
	go func() {
		defer close(done)
		errT = e.shutdownTracing(ctx)
	}()
	errM := e.mp.Shutdown(ctx)
	<-done
	if errT == nil && errM == nil {
		return nil
	}
	return newShutdownError(e.spanDelivery.failed.Load()+e.SpansDropped(), e.metricDelivery.failed.Load(), errT, errM)
}

func (e *Exporter) shutdownTracing(ctx context.Context) error {
	if e.tp == nil {
		return nil
	}
	if err := e.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("export: shut down tracing: %w", err)
	}
	return nil
}

func splitHostPort(addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

type slogPromLogger struct{ l *slog.Logger }

func (l slogPromLogger) Println(v ...any) { l.l.Error("prometheus handler", "err", fmt.Sprint(v...)) }

// errorHandler logs the SDK's errors (failed exports, mostly) through the
// exporter's logger, at most once per errorLogInterval, with a count of the
// ones it held back: a dead collector must not flood the log.
type errorHandler struct {
	log     *slog.Logger
	targets []otelenv.Target // for hints

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

const errorLogInterval = 30 * time.Second

func (h *errorHandler) Handle(err error) {
	h.mu.Lock()
	now := time.Now()
	if !h.last.IsZero() && now.Sub(h.last) < errorLogInterval {
		h.suppressed++
		h.mu.Unlock()
		return
	}
	n := h.suppressed
	h.last, h.suppressed = now, 0
	h.mu.Unlock()
	attrs := []any{"err", err, "suppressed", n}
	if fix := h.hint(err); fix != "" {
		attrs = append(attrs, "fix", fix)
	}
	h.log.Warn("opentelemetry export error", attrs...)
}

// hint says what to do about err when pgtrace can tell: a TLS handshake
// with a collector that speaks plaintext is the usual mistake.
func (h *errorHandler) hint(err error) string {
	msg := err.Error()
	if strings.Contains(msg, "first record does not look like a TLS handshake") ||
		strings.Contains(msg, "tls: ") || strings.Contains(msg, "authentication handshake failed") {
		for _, t := range h.targets {
			if t.Off == "" && !t.Insecure {
				return "the collector at " + t.URL + " may not speak TLS: set OTEL_EXPORTER_OTLP_INSECURE=true or use an http:// endpoint"
			}
		}
	}
	return ""
}
