package export

import (
	"context"
	"strings"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// connState is what the exporter keeps per open session: the transaction in
// progress, if any. It is deleted on ConnClosed.
type connState struct {
	tx *txState
	// base are the attributes every statement span of the session carries
	// (system, database, server, peer, connection id), built once.
	base       []attribute.KeyValue
	baseApp    string // the application name and schema base was built with
	baseSchema string
}

// txState is one transaction, BEGIN … COMMIT/ROLLBACK.
//
// Its span must parent the transaction's statement spans, and its own
// parent is the first trace context seen in the transaction — usually not
// on BEGIN, which drivers send themselves without a comment. So the span is
// opened lazily, with BEGIN's start time: at the first statement carrying a
// trace context (that context becomes its parent), or as a root when the
// transaction ends, or when maxPending statements without context have
// accumulated. Statements that arrive before the span is opened have their
// metrics recorded at once but their spans held in pending and emitted,
// with their own wire timestamps, when it opens; Statement returns no ids
// for them.
type txState struct {
	start      time.Time
	conn       wire.ConnInfo
	span       trace.Span      // nil until opened
	ctx        context.Context // carries span once opened
	parent     trace.SpanContext
	pending    []pendingStmt
	statements int
	failed     bool      // an error made the transaction fail (status 'E')
	last       time.Time // when its latest statement ended
	// app is the application whose service the span goes under: that of
	// the statement that opened it, else of its BEGIN.
	app *application
}

type pendingStmt struct {
	s    *detector.Statement
	v    detector.Verdict
	base []attribute.KeyValue // the connection's base attributes; immutable
	app  *application
}

// maxPending bounds the statements held while a transaction span waits for
// its parent.
const maxPending = 64

// Statement records the statement's metrics and, unless sampling drops it,
// its span. It returns the span's trace and span ids in hex for log lines,
// or "" when no span is exported (sampled out, or held for a transaction
// span not yet opened). s and the values it points to may be
// kept by the exporter until the statement's transaction ends.
func (e *Exporter) Statement(s *detector.Statement, v detector.Verdict) (traceID, spanID string) {
	sc := e.StatementSpan(s, v)
	if !sc.IsSampled() {
		return "", ""
	}
	return sc.TraceID().String(), sc.SpanID().String()
}

// StatementSpan is Statement returning the span context rather than hex
// strings, for callers that format ids only when they log (the pipeline).
// The context is sampled only when the span is exported.
func (e *Exporter) StatementSpan(s *detector.Statement, v detector.Verdict) trace.SpanContext {
	st, q := s.Stmt, s.Query
	e.mu.Lock()
	defer e.mu.Unlock()
	app := e.apps.of(s.Conn, s.Tags)
	if !e.spansOn {
		// No span goes anywhere, or tracing is shut down: metrics only.
		e.recordLocked(context.Background(), s, v, app)
		return trace.SpanContext{}
	}

	cs := e.connLocked(s.Conn)
	begins, ends := detector.TxBoundary(cs.tx != nil, st, q)
	if begins {
		if cs.tx != nil {
			// A BEGIN that succeeds inside a transaction only warns, but a
			// transaction still open here is far likelier one whose end
			// pgtrace missed (its COMMIT's event dropped by a full queue):
			// end it where its last statement did, rather than glue every
			// later transaction of the connection onto it.
			e.endTxLocked(cs, cs.tx.last, "lost")
		}
		cs.tx = &txState{start: st.Start, last: st.Start, conn: *s.Conn, app: app}
	}
	tx := cs.tx

	var parent, link trace.SpanContext
	if tx != nil {
		tx.statements++
		tx.last = st.End
		switch {
		case st.TxStatus == wire.TxFailed, st.Failed() && (ends || st.TxStatus == 0):
			tx.failed = true
		case st.TxStatus == wire.TxInBlock:
			tx.failed = false // never failed, or recovered by ROLLBACK TO SAVEPOINT
		}
		if tx.span == nil {
			if !s.Parent.IsValid() && !ends && len(tx.pending) < maxPending {
				tx.pending = append(tx.pending, pendingStmt{s, v, cs.base, app})
				e.recordLocked(context.Background(), s, v, app)
				return trace.SpanContext{}
			}
			if app != nil {
				tx.app = app
			}
			e.openTxLocked(tx, s.Parent)
		}
		parent = tx.span.SpanContext()
		if !parent.IsSampled() && tx.parent.IsValid() {
			// The transaction span is not exported: a statement kept all
			// the same (slow, failed, N+1) goes under the transaction's
			// own parent, the application's span.
			parent = tx.parent
		}
		if s.Parent.IsValid() {
			// A statement whose own text brought another parent than its
			// transaction's (a named statement prepared for another
			// request) goes where the pipeline put it, as its findings
			// do, linked to the transaction.
			if sc := remoteSpanContext(s.Parent); !sc.Equal(tx.parent) {
				parent, link = sc, tx.span.SpanContext()
			}
		}
	} else if s.Parent.IsValid() {
		parent = remoteSpanContext(s.Parent)
	}

	sc := e.spanLocked(parent, link, cs.base, s, v, app)
	e.recordLocked(e.spanContext(sc), s, v, app) // sampled spans become exemplars
	if ends {
		e.endTxLocked(cs, st.End, txOutcome(st, q))
		if detector.TxChains(q) && !st.Failed() {
			// COMMIT AND CHAIN, ROLLBACK AND CHAIN: the next transaction
			// starts at once.
			cs.tx = &txState{start: st.End, last: st.End, conn: *s.Conn, app: app}
		}
	}
	return sc
}

// txOutcome is how the transaction that st ended ended.
func txOutcome(st *wire.Statement, q *fingerprint.Query) string {
	var c fingerprint.TxControl
	if q != nil {
		c = q.TxControl
	}
	switch {
	case c.RollsBack(), st.Failed():
		return "rollback"
	case c.Ends():
		return "commit" // endTxLocked makes it rollback for a failed transaction
	}
	return "ended" // the session went idle without a COMMIT or ROLLBACK pgtrace saw
}

func (e *Exporter) connLocked(conn *wire.ConnInfo) *connState {
	cs, ok := e.conns[conn.ID]
	if !ok {
		cs = &connState{}
		e.conns[conn.ID] = cs
	}
	if cs.base == nil || cs.baseApp != conn.Application || cs.baseSchema != conn.Schema {
		addr, port := e.server(conn)
		a := e.appendDB(nil, conn)
		a = appendServer(a, addr, port)
		a = appendClient(a, conn)
		cs.base = append(a, keyConnectionID.Int64(int64(conn.ID)))
		cs.baseApp, cs.baseSchema = conn.Application, conn.Schema
	}
	return cs
}

// openTxLocked starts tx's span at BEGIN's time under parent (a root when
// parent is zero), then emits the statements held for it.
func (e *Exporter) openTxLocked(tx *txState, parent fingerprint.TraceContext) {
	ctx := context.Background()
	if parent.IsValid() {
		tx.parent = remoteSpanContext(parent)
		ctx = trace.ContextWithRemoteSpanContext(ctx, tx.parent)
	}
	addr, port := e.server(&tx.conn)
	attrs := e.appendDB(nil, &tx.conn)
	attrs = append(attrs, keyConnectionID.Int64(int64(tx.conn.ID)))
	attrs = appendServer(attrs, addr, port)
	attrs = appendClient(attrs, &tx.conn)
	if tx.conn.Application != "" {
		attrs = append(attrs, keyApplication.String(tx.conn.Application))
	}
	if e.apps.spanResource(tx.app) != nil {
		attrs = append(attrs, attrPeerService)
	}
	tx.ctx, tx.span = e.apps.txTracer(tx.app, e.tracer).Start(ctx, "transaction",
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithTimestamp(tx.start),
		trace.WithAttributes(attrs...))
	for _, p := range tx.pending {
		e.spanLocked(tx.span.SpanContext(), trace.SpanContext{}, p.base, p.s, p.v, p.app)
	}
	tx.pending = nil
}

// endTxLocked ends the connection's transaction, if any, at end.
func (e *Exporter) endTxLocked(cs *connState, end time.Time, outcome string) {
	tx := cs.tx
	if tx == nil {
		return
	}
	cs.tx = nil
	if tx.span == nil {
		e.openTxLocked(tx, fingerprint.TraceContext{})
	}
	if tx.failed && outcome == "commit" {
		outcome = "rollback" // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK
	}
	tx.span.SetAttributes(keyTxOutcome.String(outcome), keyTxStatements.Int(tx.statements))
	if tx.failed {
		tx.span.SetStatus(codes.Error, "transaction failed")
	}
	tx.span.End(trace.WithTimestamp(end))
	a := []attribute.KeyValue{attrSystem, keyDBNamespace.String(namespace(&tx.conn)), keyTxOutcome.String(outcome)}
	if tx.app != nil {
		a = append(a, tx.app.attr)
	}
	e.inst.txDuration.Record(tx.ctx, end.Sub(tx.start).Seconds(), metricAttrs(a...))
}

// spanLocked builds the span of s under parent (a root when parent is
// invalid) and, unless the sampler drops it, hands it to the span
// processors: through fastspan.Sink on the fast path, the application's
// tracer on the SDK path. It returns the span's context. link, when
// valid, is a span it links to: its transaction's, when it is not its
// parent.
//
// The sampler sees only the keep reason as attributes; the others are
// built only for a span that records, so an unsampled statement costs
// little.
func (e *Exporter) spanLocked(parent, link trace.SpanContext, base []attribute.KeyValue, s *detector.Statement, v detector.Verdict, app *application) trace.SpanContext {
	q := s.Query
	name := systemPostgreSQL
	if q != nil && q.Summary != "" {
		name = q.Summary
	}
	var keep []attribute.KeyValue
	if e.cfg.KeepSlowSpans {
		switch {
		case s.Stmt.Failed():
			keep = attrsKeepError
		case v.Slow:
			keep = attrsKeepSlow
		case v.NPlusOneDetected:
			keep = attrsKeepNPlusOne
		}
	}
	if e.spans == nil {
		return e.sdkSpanLocked(parent, link, name, keep, base, s, v, app)
	}

	var links []trace.Link
	if link.IsValid() {
		links = []trace.Link{{SpanContext: link}}
	}
	sc, res := e.spans.Sample(parent, name, trace.SpanKindClient, keep, links)
	if res.Decision == sdktrace.Drop {
		return sc
	}
	// The SDK's order: the sampler's attributes, the start attributes, the
	// rest.
	span := e.spans.NewSpan()
	d := &span.Data
	a := append(d.Attrs, res.Attributes...)
	a = append(a, keep...)
	d.Attrs = e.spanAttrs(a, parent, base, s, v, app)
	d.Name, d.SpanContext, d.Parent, d.Kind = name, sc, parent, trace.SpanKindClient
	d.Resource = e.apps.spanResource(app) // nil: pgtrace's
	d.Start, d.End = s.Stmt.Start, s.Stmt.End
	d.Status = e.spanStatus(s.Stmt)
	d.Events = e.spanEvents(d.Events, s.Stmt, v)
	for _, l := range links {
		d.Links = append(d.Links, sdktrace.Link{SpanContext: l.SpanContext})
	}
	e.spans.End(span)
	e.waitSpanLocked(parent, sc, keep, s, app)
	return sc
}

// waitSpanLocked emits the span of the wait for a server connection before
// s, whose span sc was exported under parent, when the wait was long
// enough: beside the statement's span, or under it when it is a root.
func (e *Exporter) waitSpanLocked(parent, sc trace.SpanContext, keep []attribute.KeyValue, s *detector.Statement, app *application) {
	if !e.waitedPastThreshold(s) {
		return
	}
	if !parent.IsValid() {
		parent = sc
	}
	e.poolWaitSpanLocked(parent, keep, s, app)
}

// sdkSpanLocked is spanLocked on the SDK path: the same span, through the
// application's tracer (or pgtrace's).
func (e *Exporter) sdkSpanLocked(parent, link trace.SpanContext, name string, keep, base []attribute.KeyValue,
	s *detector.Statement, v detector.Verdict, app *application,
) trace.SpanContext {
	st := s.Stmt
	ctx := context.Background()
	if parent.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, parent)
	}
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(st.Start)}
	if len(keep) > 0 {
		opts = append(opts, trace.WithAttributes(keep...))
	}
	if link.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: link}))
	}
	_, span := e.apps.txTracer(app, e.tracer).Start(ctx, name, opts...)
	sc := span.SpanContext()
	if !span.IsRecording() {
		return sc
	}
	span.SetAttributes(e.spanAttrs(nil, parent, base, s, v, app)...)
	if status := e.spanStatus(st); status.Code != codes.Unset {
		span.SetStatus(status.Code, status.Description)
	}
	for _, ev := range e.spanEvents(nil, st, v) {
		span.AddEvent(ev.Name, trace.WithTimestamp(ev.Time), trace.WithAttributes(ev.Attributes...))
	}
	span.End(trace.WithTimestamp(st.End))
	e.waitSpanLocked(parent, sc, keep, s, app)
	return sc
}

// spanAttrs appends the attributes of the statement's span after the
// sampler's and the start ones: the statement's, then the marks of where
// it goes.
func (e *Exporter) spanAttrs(a []attribute.KeyValue, parent trace.SpanContext, base []attribute.KeyValue,
	s *detector.Statement, v detector.Verdict, app *application,
) []attribute.KeyValue {
	a = e.statementAttrs(a, base, s, v)
	if e.apps.spanResource(app) != nil {
		a = append(a, attrPeerService) // the database, seen from the application's service
	}
	if parent.IsValid() && !parent.IsSampled() {
		// Kept (pgtrace.keep) though the application did not sample its
		// span: the trace has this span without its parent.
		a = append(a, attrParentUnsampled)
	}
	return a
}

// spanStatus is the status of st's span: an error, with PostgreSQL's
// message (scrubbed unless Config.RawErrors), when it failed.
func (e *Exporter) spanStatus(st *wire.Statement) sdktrace.Status {
	if !st.Failed() {
		return sdktrace.Status{}
	}
	msg := st.ErrorMessage
	if !e.cfg.RawErrors {
		msg = scrubError(msg)
	}
	return sdktrace.Status{Code: codes.Error, Description: msg}
}

// spanEvents appends the events of st's span to evs: the slow query, and
// the execution that crossed the N+1 threshold.
func (e *Exporter) spanEvents(evs []sdktrace.Event, st *wire.Statement, v detector.Verdict) []sdktrace.Event {
	if v.Slow {
		evs = append(evs, sdktrace.Event{Name: "pgtrace.slow_query", Time: st.End, Attributes: []attribute.KeyValue{
			keyDurationMs.Float64(float64(st.Duration()) / float64(time.Millisecond)),
			keySlowThresholdMs.Float64(float64(e.cfg.SlowThreshold) / float64(time.Millisecond))}})
	}
	if v.NPlusOneDetected {
		evs = append(evs, sdktrace.Event{Name: "pgtrace.n_plus_one", Time: st.End, Attributes: []attribute.KeyValue{
			keyNPlusOneCount.Int(v.NPlusOneCount)}})
	}
	return evs
}

// spanContext returns a context carrying sc, for the metric records'
// exemplars: the fast path's reused one, or a new one.
func (e *Exporter) spanContext(sc trace.SpanContext) context.Context {
	if e.spans != nil {
		return e.spans.With(sc)
	}
	return trace.ContextWithSpanContext(context.Background(), sc)
}

// The start attributes the keep sampler reads; shared, never modified.
var (
	attrsKeepError    = []attribute.KeyValue{keyKeep.String("error")}
	attrsKeepSlow     = []attribute.KeyValue{keyKeep.String("slow")}
	attrsKeepNPlusOne = []attribute.KeyValue{keyKeep.String("n_plus_one")}
)

// statementAttrs appends the attributes of the statement's span to a.
func (e *Exporter) statementAttrs(a, base []attribute.KeyValue, s *detector.Statement, v detector.Verdict) []attribute.KeyValue {
	st, q, tags, conn := s.Stmt, s.Query, s.Tags, s.Conn
	a = append(a, base...)
	if q != nil {
		a = append(a, keyDBQueryText.String(q.Normalized), keyFingerprint.String(q.Fingerprint))
		if e.legacy {
			a = append(a, keyLegacyDBStatement.String(q.Normalized))
		}
		if q.Summary != "" {
			a = append(a, keyDBQuerySummary.String(q.Summary))
		}
		if q.Operation != "" {
			a = append(a, keyDBOperationName.String(q.Operation))
			if e.legacy {
				a = append(a, keyLegacyDBOperation.String(q.Operation))
			}
		}
		if q.Collection != "" {
			a = append(a, keyDBCollectionName.String(q.Collection))
		}
		if q.ParseError != "" {
			a = append(a, keyParseError.String(q.ParseError))
		}
		if q.Truncated {
			a = append(a, keyStatementTruncated.Bool(true))
		}
	}
	if rows, ok := returnedRows(st); ok {
		a = append(a, keyDBReturnedRows.Int64(rows))
	}
	if st.PoolWait > 0 {
		a = append(a, keyPoolWaitMs.Float64(float64(st.PoolWait)/float64(time.Millisecond)))
	}
	if st.Fetches > 1 {
		a = append(a, keyFetches.Int(st.Fetches))
	}
	app := conn.Application
	if tags != nil {
		if tags.Application != "" {
			app = tags.Application
		}
		a = appendTags(a, tags)
	}
	if app != "" {
		a = append(a, keyApplication.String(app))
	}
	if st.Failed() {
		code := st.SQLState
		if code == "" {
			code = "_OTHER"
		}
		a = append(a, keyDBStatusCode.String(code), keyErrorType.String(code))
	}
	if v.Slow {
		a = append(a, keySlow.Bool(true))
	}
	if v.NPlusOne {
		a = append(a, keyNPlusOne.Bool(true), keyNPlusOneCount.Int(v.NPlusOneCount))
	}
	return a
}

// recordLocked records the statement's metrics. ctx carries its span, if
// any, so that sampled spans become exemplars.
func (e *Exporter) recordLocked(ctx context.Context, s *detector.Statement, v detector.Verdict, app *application) {
	st, q := s.Stmt, s.Query
	addr, port := e.server(s.Conn)
	k := setKey{namespace: namespace(s.Conn), server: addr, sqlstate: st.SQLState}
	if app != nil {
		k.app = app.name
	}
	var op, coll, summary string
	if q != nil {
		k.fingerprint, op, coll, summary = q.Fingerprint, q.Operation, q.Collection, q.Summary
	}
	if st.Failed() && k.sqlstate == "" {
		k.sqlstate = "_OTHER"
	}
	if s.Tags != nil {
		k.tenant = s.Tags.Tenant
	}
	ms := e.statementSetsLocked(k, op, coll, summary, addr, port)
	e.inst.opDuration.Record(ctx, st.Duration().Seconds(), ms.rec...)
	if rows, ok := returnedRows(st); ok {
		e.inst.returnedRows.Record(ctx, rows, ms.rec...)
	}
	for i := range v.Findings {
		// The statement's findings are counted with its attributes, and
		// its span as exemplar.
		e.inst.countFinding(ctx, v.Findings[i].Type, ms.add...)
	}
}

// returnedRows is the number of rows the statement returned to the client,
// when it returns rows.
func returnedRows(st *wire.Statement) (int64, bool) {
	switch {
	case st.Outcome == wire.OutcomeSuspended:
		return st.Rows, true
	case st.Outcome != wire.OutcomeComplete:
		return 0, false
	case strings.HasPrefix(st.CommandTag, "SELECT"), strings.HasPrefix(st.CommandTag, "FETCH"),
		strings.HasPrefix(st.CommandTag, "COPY") && st.Copy:
		return st.Rows, true
	}
	return 0, false
}

// appendDB appends db.system.name and db.namespace of conn, and, unless
// OTEL_SEMCONV_STABILITY_OPT_IN says database only, the legacy db.system
// and db.name.
func (e *Exporter) appendDB(a []attribute.KeyValue, conn *wire.ConnInfo) []attribute.KeyValue {
	a = append(a, attrSystem, keyDBNamespace.String(namespace(conn)))
	if e.legacy {
		a = append(a, attrLegacySystem, keyLegacyDBName.String(conn.Database))
	}
	return a
}

// namespace is db.namespace of conn: for PostgreSQL, the schema qualified
// by the database name when the schema is known (database.schema), else
// the database.
func namespace(conn *wire.ConnInfo) string {
	if conn.Schema == "" {
		return conn.Database
	}
	return conn.Database + "." + conn.Schema
}

// server is the upstream address reported for conn.
func (e *Exporter) server(conn *wire.ConnInfo) (string, int) {
	if e.serverAddr != "" || conn == nil || conn.ServerAddr == "" {
		return e.serverAddr, e.serverPort
	}
	return splitHostPort(conn.ServerAddr)
}

func appendServer(a []attribute.KeyValue, addr string, port int) []attribute.KeyValue {
	if addr != "" {
		a = append(a, keyServerAddress.String(addr))
	}
	if port != 0 {
		a = append(a, keyServerPort.Int(port))
	}
	return a
}

func appendClient(a []attribute.KeyValue, conn *wire.ConnInfo) []attribute.KeyValue {
	if conn.ClientAddr.IsValid() {
		a = append(a, keyClientAddress.String(conn.ClientAddr.Addr().String()),
			keyClientPort.Int(int(conn.ClientAddr.Port())))
	}
	return a
}

func appendTags(a []attribute.KeyValue, t *fingerprint.Tags) []attribute.KeyValue {
	if t.Tenant != "" {
		a = append(a, keyTenantID.String(t.Tenant))
	}
	if t.Route != "" {
		a = append(a, keyRoute.String(t.Route))
	}
	if t.Controller != "" {
		a = append(a, keyController.String(t.Controller))
	}
	if t.Action != "" {
		a = append(a, keyAction.String(t.Action))
	}
	if t.Framework != "" {
		a = append(a, keyFramework.String(t.Framework))
	}
	return a
}

// remoteSpanContext turns a traceparent read from a comment into the remote
// parent of a span.
func remoteSpanContext(tc fingerprint.TraceContext) trace.SpanContext {
	cfg := trace.SpanContextConfig{
		TraceID:    tc.TraceID,
		SpanID:     tc.SpanID,
		TraceFlags: trace.TraceFlags(tc.Flags) & trace.FlagsSampled,
		Remote:     true,
	}
	if tc.TraceState != "" {
		if ts, err := trace.ParseTraceState(tc.TraceState); err == nil {
			cfg.TraceState = ts
		}
	}
	return trace.NewSpanContext(cfg)
}
