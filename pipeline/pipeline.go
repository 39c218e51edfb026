// Package pipeline joins the proxy's stages: it receives the relay's events
// (as a wire.Observer), analyzes each statement's text (fingerprint),
// decides its parent (parent.go), asks the detector for a verdict, and
// hands both to the exporter; connection events go to the detector and the
// exporter. Findings take one route: the detector returns them (in a
// statement's Verdict, from ObserveConn, ObservePool and Tick) and the
// pipeline hands each to the exporter, which counts it, and to the log. In
// a pooled mode the pools' hooks (PoolHooks) and state (WatchPools) reach
// the exporter and the detector through it too (pool.go).
package pipeline

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/export"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"go.opentelemetry.io/otel/trace"
)

// Config names the stages a Pipeline joins.
type Config struct {
	// Analyzer fingerprints statement texts. Required.
	Analyzer *fingerprint.Analyzer
	// Detector judges statements and connections. If nil, no verdicts are
	// made (no slow or N+1 marks).
	Detector *detector.Detector
	// Exporter records spans and metrics. If nil, nothing is exported.
	Exporter *export.Exporter
	// Logger receives the slow-query lines. If nil, slog.Default().
	Logger *slog.Logger
	// TickInterval is how often Run calls Detector.Tick. Default 1s.
	TickInterval time.Duration
}

// Pipeline is a wire.Observer that runs the stages after the relay.
//
// Observe is called from the relay's single dispatcher goroutine; the stages
// it calls keep no reference to the event beyond what the exporter holds for
// an open transaction (see export.Exporter.Statement), and every statement
// gets its own allocation, so nothing is reused under them.
type Pipeline struct {
	cfg Config
	log *slog.Logger

	// sessions is what the pipeline keeps per client connection to decide
	// its statements' parents. Dispatcher goroutine only.
	sessions  map[uint64]*session
	nextSweep time.Time

	// pools is the pools' state in a pooled mode (WatchPools); nil before.
	pools atomic.Pointer[poolStats]
}

var _ wire.Observer = (*Pipeline)(nil)

// New returns a Pipeline over cfg's stages.
func New(cfg Config) *Pipeline {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = time.Second
	}
	return &Pipeline{cfg: cfg, log: cfg.Logger, sessions: make(map[uint64]*session)}
}

// Placeholders for statements without a text to analyze; the detector and
// exporter need a Query. They are shared and must not be modified.
var (
	unknownQuery = &fingerprint.Query{
		Fingerprint: "0000000000000000", Summary: "UNKNOWN", Operation: "UNKNOWN",
		ParseError: "statement text not seen by the proxy",
	}
	// emptyQuery is a text with no statement in it: only comments or
	// whitespace, such as the "-- ping" pgx sends (EmptyQueryResponse).
	emptyQuery = &fingerprint.Query{
		Fingerprint: "0000000000000002", Summary: "EMPTY", Operation: "EMPTY",
	}
	functionCallQuery = &fingerprint.Query{
		Fingerprint: "0000000000000001", Summary: "FUNCTION CALL", Operation: "FUNCTION CALL",
	}
)

// observed is everything a statement's stages keep, in one allocation.
type observed struct {
	ds   detector.Statement
	tags fingerprint.Tags
	conn wire.ConnInfo
}

// Observe handles one relay event.
func (p *Pipeline) Observe(ev wire.Event) {
	switch ev.Kind {
	case wire.StatementDone:
		if ev.Stmt != nil {
			p.statement(&ev)
		}
	case wire.ConnOpened, wire.ConnAuthenticated, wire.ConnAuthFailed, wire.ConnClosed, wire.TxStatus:
		p.connEvent(&ev)
		var found []detector.Finding
		if p.cfg.Detector != nil {
			found = p.cfg.Detector.ObserveConn(ev)
		}
		if p.cfg.Exporter != nil {
			p.cfg.Exporter.Conn(ev)
		}
		p.report(found)
	}
}

func (p *Pipeline) statement(ev *wire.Event) {
	st := ev.Stmt
	o := &observed{conn: ev.Conn}
	o.ds = detector.Statement{Stmt: st, Conn: &o.conn, Tags: &o.tags}
	a := p.analyze(st)
	o.ds.Query = a.query
	switch {
	case o.ds.Query != nil:
	case st.Text != "":
		o.ds.Query = emptyQuery
	default:
		o.ds.Query = unknownQuery
	}
	o.tags = a.tags()
	o.ds.Parent = p.session(ev).parent(st, o.ds.Query, &a)

	var v detector.Verdict
	if p.cfg.Detector != nil {
		v = p.cfg.Detector.Observe(&o.ds)
	}
	// The exporter counts the statement's findings (v.Findings) with its
	// metric attributes; the log gets them below.
	var sc trace.SpanContext
	if p.cfg.Exporter != nil {
		sc = p.cfg.Exporter.StatementSpan(&o.ds, v)
	}
	for i := range v.Findings {
		f := &v.Findings[i]
		if sc.IsSampled() {
			// A statement without trace context got a root span: its
			// findings name that trace, as the log line and the span do.
			p.cfg.Detector.SetTraceID(f, sc.TraceID().String())
		}
		if f.Type == detector.FindingSlowQuery {
			p.logSlow(&o.ds, sc)
		} else {
			p.logFinding(f)
		}
	}
}

// report hands findings made outside a statement to the exporter and the
// log.
func (p *Pipeline) report(found []detector.Finding) {
	for i := range found {
		if p.cfg.Exporter != nil {
			p.cfg.Exporter.Finding(found[i])
		}
		p.logFinding(&found[i])
	}
}

// logSlow writes the slow-query line. The ids are those of the exported
// span; without one, the trace id is the application's, from the comment.
func (p *Pipeline) logSlow(s *detector.Statement, sc trace.SpanContext) {
	var traceID, spanID string
	switch {
	case sc.IsSampled():
		traceID, spanID = sc.TraceID().String(), sc.SpanID().String()
	case s.Parent.IsValid():
		traceID = trace.TraceID(s.Parent.TraceID).String()
	}
	app := s.Tags.Application
	if app == "" {
		app = s.Conn.Application
	}
	attrs := []slog.Attr{
		slog.String("trace_id", traceID),
		slog.String("span_id", spanID),
		slog.String("fingerprint", s.Query.Fingerprint),
		slog.String("query", s.Query.Normalized),
		slog.Duration("duration", s.Stmt.Duration()),
		slog.String("application", app),
		slog.String("client_addr", clientAddr(s.Conn)),
		slog.String("database", s.Conn.Database),
		slog.Uint64("conn_id", s.Conn.ID),
	}
	if s.Stmt.Failed() {
		attrs = append(attrs, slog.String("sqlstate", s.Stmt.SQLState))
	}
	fi, _ := detector.LookupFindingType(detector.FindingSlowQuery)
	p.log.LogAttrs(context.Background(), fi.Level, fi.Title, attrs...) // "slow query"
}

// Run calls the detector's Tick every TickInterval until ctx ends, and
// shows it the pools' waiting clients (WatchPools); it returns ctx's
// error. Tick takes the detector's lock, so it runs on its own
// goroutine rather than the dispatcher's.
func (p *Pipeline) Run(ctx context.Context) error {
	if p.cfg.Detector == nil {
		<-ctx.Done()
		return ctx.Err()
	}
	t := time.NewTicker(p.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			p.report(p.cfg.Detector.Tick(now))
			p.tickPools(now)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// logFinding writes a finding's log line, at its type's level
// (detector.FindingTypes).
func (p *Pipeline) logFinding(f *detector.Finding) {
	level := slog.LevelWarn
	if fi, ok := detector.LookupFindingType(f.Type); ok {
		level = fi.Level
	}
	p.log.LogAttrs(context.Background(), level, "finding",
		slog.String("type", string(f.Type)),
		slog.String("trace_id", f.TraceID),
		slog.String("parent_span_id", f.ParentSpanID),
		slog.String("fingerprint", f.Fingerprint),
		slog.String("query", f.Query),
		slog.Int64("count", f.Count),
		slog.Float64("total_duration_ms", f.TotalDurationMs),
		slog.String("application", f.Application),
		slog.String("detail", f.Detail))
}

func clientAddr(c *wire.ConnInfo) string {
	if !c.ClientAddr.IsValid() {
		return ""
	}
	return c.ClientAddr.String()
}
