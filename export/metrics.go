package export

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/dotmac/pgtrace/detector"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instruments are the exporter's metric instruments. A failure to create one
// is returned by New; the SDK never fails for valid names.
type instruments struct {
	opDuration   metric.Float64Histogram // db.client.operation.duration
	returnedRows metric.Int64Histogram   // db.client.response.returned_rows
	createTime   metric.Float64Histogram // db.client.connection.create_time
	txDuration   metric.Float64Histogram // pgtrace.transaction.duration
	connsOpened  metric.Int64Counter     // pgtrace.connections.opened
	waitTime     metric.Float64Histogram // db.client.connection.wait_time
	useTime      metric.Float64Histogram // db.client.connection.use_time
	timeouts     metric.Int64Counter     // db.client.connection.timeouts
	// findings counts each finding type in the counter detector.FindingTypes
	// names for it (pgtrace.slow_queries, db.n_plus_one.detected, …), or
	// in otherFindings, by type, when it names none.
	findings      map[detector.FindingType]metric.Int64Counter
	otherFindings metric.Int64Counter // pgtrace.findings

	connCount     metric.Int64ObservableUpDownCounter // db.client.connection.count
	idleMax       metric.Int64ObservableUpDownCounter // db.client.connection.idle.max
	idleMin       metric.Int64ObservableUpDownCounter // db.client.connection.idle.min
	connMax       metric.Int64ObservableUpDownCounter // db.client.connection.max
	pending       metric.Int64ObservableUpDownCounter // db.client.connection.pending_requests
	eventsDropped metric.Int64ObservableCounter       // pgtrace.events.dropped
	forgotten     metric.Int64ObservableCounter       // pgtrace.prepared_statements.forgotten
	spansDropped  metric.Int64ObservableCounter       // pgtrace.spans.dropped
	cacheHits     metric.Int64ObservableCounter       // pgtrace.fingerprint.cache.hits
	cacheMisses   metric.Int64ObservableCounter       // pgtrace.fingerprint.cache.misses
	tpInvalid     metric.Int64ObservableCounter       // pgtrace.traceparent.invalid
}

func (in *instruments) init(m metric.Meter, e *Exporter) error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	var err error

	in.opDuration, err = m.Float64Histogram("db.client.operation.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of database client operations."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	add(err)
	in.returnedRows, err = m.Int64Histogram("db.client.response.returned_rows",
		metric.WithUnit("{row}"), metric.WithDescription("The actual number of records returned by the database operation."),
		metric.WithExplicitBucketBoundaries(rowBuckets...))
	add(err)
	in.createTime, err = m.Float64Histogram("db.client.connection.create_time",
		metric.WithUnit("s"), metric.WithDescription("The time it took to create a new connection (upstream connect and authentication)."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	add(err)
	in.waitTime, err = m.Float64Histogram("db.client.connection.wait_time",
		metric.WithUnit("s"), metric.WithDescription("The time it took to obtain an open connection from the pool."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	add(err)
	in.useTime, err = m.Float64Histogram("db.client.connection.use_time",
		metric.WithUnit("s"), metric.WithDescription("The time between borrowing a connection and returning it to the pool."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	add(err)
	in.timeouts, err = m.Int64Counter("db.client.connection.timeouts",
		metric.WithUnit("{timeout}"), metric.WithDescription("The number of connection timeouts that have occurred trying to obtain a connection from the pool."))
	add(err)
	in.txDuration, err = m.Float64Histogram("pgtrace.transaction.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of transactions, BEGIN to COMMIT or ROLLBACK."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	add(err)
	in.connsOpened, err = m.Int64Counter("pgtrace.connections.opened",
		metric.WithUnit("{connection}"), metric.WithDescription("Upstream connections opened, by application and authentication outcome."))
	add(err)
	in.findings = make(map[detector.FindingType]metric.Int64Counter)
	for _, fi := range detector.FindingTypes() {
		if fi.Counter.Name == "" {
			continue
		}
		in.findings[fi.Type], err = m.Int64Counter(fi.Counter.Name,
			metric.WithUnit(fi.Counter.Unit), metric.WithDescription(fi.Counter.Description))
		add(err)
	}
	in.otherFindings, err = m.Int64Counter("pgtrace.findings",
		metric.WithUnit("{finding}"), metric.WithDescription("Findings of the types without a counter of their own, by pgtrace.finding.type."))
	add(err)

	in.connCount, err = m.Int64ObservableUpDownCounter("db.client.connection.count",
		metric.WithUnit("{connection}"), metric.WithDescription("The number of connections that are currently in state described by the state attribute."))
	add(err)
	in.idleMax, err = m.Int64ObservableUpDownCounter("db.client.connection.idle.max",
		metric.WithUnit("{connection}"), metric.WithDescription("The maximum number of idle open connections allowed."))
	add(err)
	in.idleMin, err = m.Int64ObservableUpDownCounter("db.client.connection.idle.min",
		metric.WithUnit("{connection}"), metric.WithDescription("The minimum number of idle open connections allowed."))
	add(err)
	in.connMax, err = m.Int64ObservableUpDownCounter("db.client.connection.max",
		metric.WithUnit("{connection}"), metric.WithDescription("The maximum number of open connections allowed."))
	add(err)
	in.pending, err = m.Int64ObservableUpDownCounter("db.client.connection.pending_requests",
		metric.WithUnit("{request}"), metric.WithDescription("The number of current pending requests for an open connection."))
	add(err)
	in.eventsDropped, err = m.Int64ObservableCounter("pgtrace.events.dropped",
		metric.WithUnit("{event}"), metric.WithDescription("Relay events dropped because the observer queue was full."))
	add(err)
	in.forgotten, err = m.Int64ObservableCounter("pgtrace.prepared_statements.forgotten",
		metric.WithUnit("{statement}"), metric.WithDescription("Prepared statement names forgotten because a session prepared more than the relay keeps; their executions are reported without text or trace context."))
	add(err)
	in.spansDropped, err = m.Int64ObservableCounter("pgtrace.spans.dropped",
		metric.WithUnit("{span}"), metric.WithDescription("Spans dropped because the export queue was full."))
	add(err)
	in.cacheHits, err = m.Int64ObservableCounter("pgtrace.fingerprint.cache.hits",
		metric.WithUnit("{lookup}"), metric.WithDescription("Fingerprint cache hits."))
	add(err)
	in.cacheMisses, err = m.Int64ObservableCounter("pgtrace.fingerprint.cache.misses",
		metric.WithUnit("{lookup}"), metric.WithDescription("Fingerprint cache misses."))
	add(err)
	in.tpInvalid, err = m.Int64ObservableCounter("pgtrace.traceparent.invalid",
		metric.WithUnit("{comment}"), metric.WithDescription("traceparent tags that were present but invalid."))
	add(err)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("export: instruments: %w", err)
	}

	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		e.observe(o)
		return nil
	}, in.connCount, in.idleMax, in.idleMin, in.connMax, in.pending,
		in.eventsDropped, in.forgotten, in.spansDropped, in.cacheHits, in.cacheMisses, in.tpInvalid)
	if err != nil {
		return fmt.Errorf("export: register callback: %w", err)
	}
	return nil
}

// countFinding counts one finding of type typ with opts: in its own
// counter, or in pgtrace.findings with the type as an attribute.
func (in *instruments) countFinding(ctx context.Context, typ detector.FindingType, opts ...metric.AddOption) {
	if c, ok := in.findings[typ]; ok {
		c.Add(ctx, 1, opts...)
		return
	}
	// Attribute options merge: the statement's or the application's set,
	// then the type.
	in.otherFindings.Add(ctx, 1, append(opts[:len(opts):len(opts)], metric.WithAttributes(keyFindingType.String(string(typ))))...)
}

// observe reports the observable instruments; the SDK calls it on each
// collection (Prometheus scrape or periodic export).
func (e *Exporter) observe(o metric.Observer) {
	in := &e.inst
	e.poolMu.Lock()
	pools := e.pools
	e.poolMu.Unlock()
	if pools != nil {
		e.observePools(o, pools)
	}
	if e.cfg.Connections != nil && !e.cfg.Pooled {
		// --pool-mode none: the client sessions, each with its own
		// upstream connection.
		// By state and application; both states are reported for every
		// application seen, so that a count that drops to 0 says so.
		type key struct {
			used bool
			app  string
		}
		counts := map[key]int64{{false, ""}: 0, {true, ""}: 0}
		conns := e.cfg.Connections()
		e.mu.Lock()
		for _, c := range conns {
			var name string
			if app := e.apps.get(c.Application); app != nil {
				name = app.name
			}
			counts[key{false, name}] += 0
			counts[key{true, name}] += 0
			counts[key{c.State != "idle", name}]++
		}
		e.mu.Unlock()
		for k, n := range counts {
			opt := e.connStateIdle
			if k.used {
				opt = e.connStateUsed
			}
			if k.app != "" {
				state := "idle"
				if k.used {
					state = "used"
				}
				opt = metric.WithAttributeSet(attribute.NewSet(attrSystem, keyConnPoolName.String(e.cfg.UpstreamAddr),
					keyConnState.String(state), keyApplication.String(k.app)))
			}
			o.ObserveInt64(in.connCount, n, opt)
		}
	}
	if e.cfg.DroppedEvents != nil {
		o.ObserveInt64(in.eventsDropped, int64(e.cfg.DroppedEvents()))
	}
	if e.cfg.ForgottenStatements != nil {
		o.ObserveInt64(in.forgotten, int64(e.cfg.ForgottenStatements()))
	}
	o.ObserveInt64(in.spansDropped, int64(e.SpansDropped()))
	if e.cfg.AnalyzerStats != nil {
		st := e.cfg.AnalyzerStats()
		o.ObserveInt64(in.cacheHits, int64(st.Hits))
		o.ObserveInt64(in.cacheMisses, int64(st.Misses))
		o.ObserveInt64(in.tpInvalid, int64(st.InvalidTraceparents))
	}
}

// setKey identifies the attribute set of one statement's metrics. The
// fingerprint stands for operation, collection and summary.
type setKey struct {
	fingerprint string
	namespace   string
	server      string
	sqlstate    string
	tenant      string
	app         string // bounded (applications)
}

// metricSets are the cached, immutable measurement options for one setKey:
// building an attribute.Set sorts and allocates, so it is done once per
// distinct key, not per statement.
type metricSets struct {
	// Variadic option slices are built once: passing a single option
	// literal would allocate a slice on every call.
	rec []metric.RecordOption
	add []metric.AddOption
}

// maxCachedSets bounds e.sets; when full it is cleared and refilled. The
// metric SDK's cardinality limit bounds the exported sets separately.
const maxCachedSets = 8192

// statementSets returns the cached options for the statement's metric
// attributes. e.mu must be held.
func (e *Exporter) statementSetsLocked(k setKey, op, collection, summary string, serverAddr string, serverPort int) *metricSets {
	if ms, ok := e.sets[k]; ok {
		return ms
	}
	if len(e.sets) >= maxCachedSets {
		clear(e.sets)
	}
	// The tenant may point into the statement text (fingerprint.Analyze):
	// the cache keeps a copy, not the text.
	k.tenant = strings.Clone(k.tenant)
	attrs := make([]attribute.KeyValue, 0, 10)
	attrs = append(attrs, attrSystem, keyDBNamespace.String(k.namespace))
	if op != "" {
		attrs = append(attrs, keyDBOperationName.String(op))
	}
	if collection != "" {
		attrs = append(attrs, keyDBCollectionName.String(collection))
	}
	if summary != "" {
		attrs = append(attrs, keyDBQuerySummary.String(summary))
	}
	if k.sqlstate != "" {
		attrs = append(attrs, keyDBStatusCode.String(k.sqlstate), keyErrorType.String(k.sqlstate))
	}
	if serverAddr != "" {
		attrs = append(attrs, keyServerAddress.String(serverAddr))
	}
	if serverPort != 0 {
		attrs = append(attrs, keyServerPort.Int(serverPort))
	}
	if k.tenant != "" {
		attrs = append(attrs, keyTenantID.String(k.tenant))
	}
	if k.app != "" {
		attrs = append(attrs, keyApplication.String(k.app))
	}
	opt := metricAttrs(attrs...)
	ms := &metricSets{rec: []metric.RecordOption{opt}, add: []metric.AddOption{opt}}
	e.sets[k] = ms
	return ms
}
