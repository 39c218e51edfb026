package export

import (
	"context"
	"errors"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/wire"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Conn records a connection event: the connection span and
// db.client.connection.create_time on ConnAuthenticated and ConnAuthFailed,
// pgtrace.connections.opened (both only with --pool-mode none: in a pooled
// mode they count the pools' server logins), and the end of an open transaction on a
// TxStatus back to idle or on ConnClosed, which also drops the exporter's
// state for the connection.
func (e *Exporter) Conn(ev wire.Event) {
	switch ev.Kind {
	case wire.ConnAuthenticated, wire.ConnAuthFailed:
		e.connectSpan(ev)
	case wire.TxStatus:
		if ev.Conn.TxStatus != wire.TxIdle {
			return
		}
		e.mu.Lock()
		if cs, ok := e.conns[ev.Conn.ID]; ok {
			e.endTxLocked(cs, ev.Time, "ended")
		}
		e.mu.Unlock()
	case wire.ConnClosed:
		e.mu.Lock()
		if cs, ok := e.conns[ev.Conn.ID]; ok {
			e.endTxLocked(cs, ev.Time, "closed")
			delete(e.conns, ev.Conn.ID)
		}
		e.mu.Unlock()
	case wire.ConnOpened:
		e.mu.Lock()
		if len(e.conns) >= e.sweepAt {
			e.sweepLocked(ev.Time)
		}
		e.mu.Unlock()
	}
}

// sweepLocked drops the state of connections that are gone without a
// ConnClosed having arrived (the relay drops events when its queue is full),
// so that per-connection state stays bounded. Live connections come from
// Config.Connections; without it, everything is dropped once the map holds
// maxConnStates entries.
func (e *Exporter) sweepLocked(now time.Time) {
	if e.cfg.Connections != nil {
		live := make(map[uint64]struct{}, len(e.conns))
		for _, c := range e.cfg.Connections() {
			live[c.ID] = struct{}{}
		}
		for id, cs := range e.conns {
			if _, ok := live[id]; !ok {
				e.endTxLocked(cs, now, "lost")
				delete(e.conns, id)
			}
		}
	} else if len(e.conns) >= maxConnStates {
		for id, cs := range e.conns {
			e.endTxLocked(cs, now, "lost")
			delete(e.conns, id)
		}
	}
	e.sweepAt = max(2*len(e.conns), minSweepAt)
}

const (
	minSweepAt    = 1024    // sweep no earlier than this many connection states
	maxConnStates = 1 << 16 // without Config.Connections, the hard bound
)

// connectSpan records one upstream connect + authentication: the span, when
// spans go anywhere, and the metrics.
func (e *Exporter) connectSpan(ev wire.Event) {
	ok := ev.Kind == wire.ConnAuthenticated
	outcome := "success"
	if !ok {
		outcome = "failure"
	}
	conn := &ev.Conn
	addr, port := e.server(conn)
	start := ev.Time.Add(-ev.ConnectDuration)

	a := e.appendDB(nil, conn)
	a = append(a, keyConnectionID.Int64(int64(conn.ID)), keyAuthOutcome.String(outcome))
	a = appendServer(a, addr, port)
	a = appendClient(a, conn)
	if conn.Application != "" {
		a = append(a, keyApplication.String(conn.Application))
	}
	if conn.BackendPID != 0 {
		a = append(a, keyBackendPID.Int64(int64(conn.BackendPID)))
	}
	if conn.User != "" && e.legacy {
		a = append(a, keyLegacyDBUser.String(conn.User))
	}
	var errType string
	if !ok {
		errType = "auth_failed"
		var se interface{ SQLState() string }
		if errors.As(ev.Err, &se) && se.SQLState() != "" {
			errType = se.SQLState()
			a = append(a, keyDBStatusCode.String(errType))
		}
		a = append(a, keyErrorType.String(errType))
		if e.cfg.KeepSlowSpans {
			a = append(a, keyKeep.String("error"))
		}
	}
	ctx, span := e.tracer.Start(context.Background(), "connect",
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithTimestamp(start),
		trace.WithAttributes(a...))
	if !ok {
		msg := "connection failed"
		if ev.Err != nil {
			msg = ev.Err.Error()
			if !e.cfg.RawErrors {
				msg = scrubError(msg)
			}
		}
		span.SetStatus(codes.Error, msg)
	}
	span.End(trace.WithTimestamp(ev.Time))

	e.mu.Lock()
	app := e.apps.get(conn.Application)
	e.mu.Unlock()
	appAttr := keyApplication.String("")
	if app != nil {
		appAttr = app.attr
	}
	if e.cfg.Pooled {
		// The client logged in to pgtrace, which opened no connection
		// for it: the pools count their server logins (PoolHooks).
		return
	}
	ma := []attribute.KeyValue{attrSystem, keyConnPoolName.String(e.poolName(conn)), appAttr}
	ma = appendServer(ma, addr, port)
	if ok {
		e.inst.createTime.Record(ctx, ev.ConnectDuration.Seconds(), metricAttrs(ma...))
	}
	oa := []attribute.KeyValue{attrSystem, keyAuthOutcome.String(outcome), appAttr}
	if errType != "" {
		oa = append(oa, keyErrorType.String(errType))
	}
	e.inst.connsOpened.Add(ctx, 1, metricAttrs(oa...))
}

// poolName names the proxy's "pool" for db.client.connection.* metrics: the
// upstream it connects to.
func (e *Exporter) poolName(conn *wire.ConnInfo) string {
	if e.cfg.UpstreamAddr != "" {
		return e.cfg.UpstreamAddr
	}
	if conn != nil {
		return conn.ServerAddr
	}
	return ""
}

// Finding counts a finding the detector made outside a statement
// (ObserveConn, Tick: idle in transaction, connection churn), by
// application. A statement's findings come in its Verdict to
// StatementSpan, which counts them with the statement's metric attributes.
// It is safe to call from any goroutine.
func (e *Exporter) Finding(f detector.Finding) {
	e.inst.countFinding(context.Background(), f.Type, metricAttrs(attrSystem, keyApplication.String(f.Application)))
}
