package export

import (
	"context"
	"errors"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/pool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Pools (pooled modes, Config.Pooled). The db.client.connection.* metrics
// then describe pgtrace's pools of server connections, each named by
// db.client.connection.pool.name = database/user:
//
//   - from the pool's hooks (PoolHooks): wait_time (every acquisition),
//     timeouts, create_time (server logins), use_time, and
//     pgtrace.connections.opened (server logins, by outcome);
//   - from the pools' state on each collection (ObservePools): count by
//     state idle|used (the pool's server connections, not the client
//     sessions), idle.max, idle.min, max and pending_requests.
//
// A statement that waited for a server connection carries the wait
// (pgtrace.pool.wait_ms on its span) and, past
// Config.PoolWaitSpanThreshold, gets a pgtrace.pool.wait span beside it.

// poolWaitSpanName is the name of the span of a client's wait for a
// server connection.
const poolWaitSpanName = "pgtrace.pool.wait"

// poolSets are the cached measurement options of one pool's metrics.
type poolSets struct {
	rec    []metric.RecordOption // system, pool name
	add    []metric.AddOption    // the same
	create []metric.RecordOption // system, pool name, server address and port
}

// maxPoolSets bounds Exporter.poolSets; when full it is cleared.
const maxPoolSets = 1024

// poolSetsFor returns the cached options of pool key. Safe from any
// goroutine: the hooks of every session call it, without a lock or an
// allocation once the pool's sets are made.
func (e *Exporter) poolSetsFor(key pool.Key) *poolSets {
	if ps, ok := e.poolSets.Load(key); ok {
		return ps.(*poolSets)
	}
	e.poolMu.Lock()
	defer e.poolMu.Unlock()
	if ps, ok := e.poolSets.Load(key); ok {
		return ps.(*poolSets)
	}
	name := key.Name()
	if e.poolSetCount >= maxPoolSets {
		e.poolSets.Clear()
		e.poolSetCount = 0
	}
	opt := metricAttrs(attrSystem, keyConnPoolName.String(name))
	a := []attribute.KeyValue{attrSystem, keyConnPoolName.String(name)}
	a = appendServer(a, e.serverAddr, e.serverPort)
	ps := &poolSets{
		rec:    []metric.RecordOption{opt},
		add:    []metric.AddOption{opt},
		create: []metric.RecordOption{metricAttrs(a...)},
	}
	e.poolSets.Store(key, ps)
	e.poolSetCount++
	return ps
}

// PoolHooks returns the hooks a pooler calls (pool.Config.Hooks) for the
// pool metrics. They may run on any goroutine and never block.
func (e *Exporter) PoolHooks() pool.Hooks {
	ctx := context.Background()
	return pool.Hooks{
		Waited: func(key pool.Key, _ time.Time, d time.Duration, timedOut bool) {
			ps := e.poolSetsFor(key)
			e.inst.waitTime.Record(ctx, d.Seconds(), ps.rec...)
			if timedOut {
				e.inst.timeouts.Add(ctx, 1, ps.add...)
			}
		},
		Created: func(key pool.Key, d time.Duration, err error) {
			outcome, errType := "success", ""
			if err != nil {
				outcome, errType = "failure", "connect_failed"
				var se interface{ SQLState() string }
				if errors.As(err, &se) && se.SQLState() != "" {
					errType = se.SQLState()
				}
			} else {
				e.inst.createTime.Record(ctx, d.Seconds(), e.poolSetsFor(key).create...)
			}
			a := []attribute.KeyValue{attrSystem, keyAuthOutcome.String(outcome), keyApplication.String("")}
			if errType != "" {
				a = append(a, keyErrorType.String(errType))
			}
			e.inst.connsOpened.Add(ctx, 1, metricAttrs(a...))
		},
		Used: func(key pool.Key, d time.Duration) {
			e.inst.useTime.Record(ctx, d.Seconds(), e.poolSetsFor(key).rec...)
		},
	}
}

// ObservePools makes each metric collection report the pools' state from
// stats (pool.Pooler.Stats), which may be called on any goroutine.
func (e *Exporter) ObservePools(stats func() []pool.Stats) {
	e.poolMu.Lock()
	e.pools = stats
	e.poolMu.Unlock()
}

// observePools reports the pools' state; the metric collection calls it.
func (e *Exporter) observePools(o metric.Observer, stats func() []pool.Stats) {
	in := &e.inst
	for _, st := range stats() {
		name := keyConnPoolName.String(st.Name)
		set := metric.WithAttributeSet(attribute.NewSet(attrSystem, name))
		o.ObserveInt64(in.connCount, int64(st.Idle), metricAttrs(attrSystem, name, keyConnState.String("idle")))
		o.ObserveInt64(in.connCount, int64(st.Used), metricAttrs(attrSystem, name, keyConnState.String("used")))
		o.ObserveInt64(in.idleMax, int64(st.Size), set) // any of its connections may be idle
		o.ObserveInt64(in.idleMin, int64(st.MinIdle), set)
		o.ObserveInt64(in.connMax, int64(st.Size), set)
		o.ObserveInt64(in.pending, int64(st.Waiting), set)
	}
}

// poolWaitAttrs are the attributes of s's wait span.
func (e *Exporter) poolWaitAttrs(a []attribute.KeyValue, parent trace.SpanContext, s *detector.Statement, app *application) []attribute.KeyValue {
	conn := s.Conn
	a = append(a, attrSystem, keyConnPoolName.String(pool.Key{Database: conn.Database, User: conn.User}.Name()),
		keyConnectionID.Int64(int64(conn.ID)))
	if conn.Application != "" {
		a = append(a, keyApplication.String(conn.Application))
	}
	if e.apps.spanResource(app) != nil {
		a = append(a, attrPeerService)
	}
	if parent.IsValid() && !parent.IsSampled() {
		a = append(a, attrParentUnsampled)
	}
	return a
}

// poolWaitSpanLocked emits the span of the client's wait for a server
// connection before s could run, under parent (the statement's parent, or
// the statement's own span when it has none), sampled as the statement
// was (the same parent and keep reason). The caller checked that s waited
// past the threshold.
func (e *Exporter) poolWaitSpanLocked(parent trace.SpanContext, keep []attribute.KeyValue, s *detector.Statement, app *application) {
	st := s.Stmt
	start, end := st.PoolWaitStart, st.PoolWaitStart.Add(st.PoolWait)
	if e.spans == nil {
		ctx := context.Background()
		if parent.IsValid() {
			ctx = trace.ContextWithSpanContext(ctx, parent)
		}
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal), trace.WithTimestamp(start)}
		if len(keep) > 0 {
			opts = append(opts, trace.WithAttributes(keep...))
		}
		_, span := e.apps.txTracer(app, e.tracer).Start(ctx, poolWaitSpanName, opts...)
		if span.IsRecording() {
			span.SetAttributes(e.poolWaitAttrs(nil, parent, s, app)...)
			span.End(trace.WithTimestamp(end))
		}
		return
	}
	sc, res := e.spans.Sample(parent, poolWaitSpanName, trace.SpanKindInternal, keep, nil)
	if res.Decision == sdktrace.Drop {
		return
	}
	span := e.spans.NewSpan()
	d := &span.Data
	a := append(d.Attrs, res.Attributes...)
	a = append(a, keep...)
	d.Attrs = e.poolWaitAttrs(a, parent, s, app)
	d.Name, d.SpanContext, d.Parent, d.Kind = poolWaitSpanName, sc, parent, trace.SpanKindInternal
	d.Resource = e.apps.spanResource(app)
	d.Start, d.End = start, end
	e.spans.End(span)
}

// waitedPastThreshold reports whether s waited for a server connection
// long enough for a wait span.
func (e *Exporter) waitedPastThreshold(s *detector.Statement) bool {
	st := s.Stmt
	return st.PoolWait > 0 && st.PoolWait > e.cfg.PoolWaitSpanThreshold && !st.PoolWaitStart.IsZero()
}
