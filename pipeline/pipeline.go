// Package pipeline joins the proxy's stages: it receives the relay's events
// (as a wire.Observer), analyzes each statement's text (fingerprint), asks
// the detector for a verdict, and hands both to the exporter; connection
// events go to the detector and the exporter; slow queries and findings are
// logged.
package pipeline

import (
	"context"
	"log/slog"
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
}

var _ wire.Observer = (*Pipeline)(nil)

// New returns a Pipeline over cfg's stages. Wire the detector's findings
// with FindingHandler when creating the detector.
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
		if p.cfg.Detector != nil {
			p.cfg.Detector.ObserveConn(ev)
		}
		if p.cfg.Exporter != nil {
			p.cfg.Exporter.Conn(ev)
		}
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
	var sc trace.SpanContext
	if p.cfg.Exporter != nil {
		sc = p.cfg.Exporter.StatementSpan(&o.ds, v)
	}
	if v.Slow {
		p.logSlow(&o.ds, sc)
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
	p.log.LogAttrs(context.Background(), slog.LevelWarn, "slow query", attrs...)
}

// Run calls the detector's Tick every TickInterval until ctx ends; it
// returns ctx's error. Tick takes the detector's lock, so it runs on its own
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
			p.cfg.Detector.Tick(now)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// FindingHandler returns the detector.Config.OnFinding hook that logs a
// finding and counts it with exp (either may be nil). Slow queries are
// logged per statement by the Pipeline, with their span ids, so their
// findings are not logged again here.
func FindingHandler(log *slog.Logger, exp *export.Exporter) func(detector.Finding) {
	if log == nil {
		log = slog.Default()
	}
	return func(f detector.Finding) {
		if exp != nil {
			exp.Finding(f)
		}
		if f.Type == detector.FindingSlowQuery {
			return
		}
		level := slog.LevelWarn
		if f.Type == detector.FindingConnectionChurn {
			level = slog.LevelInfo
		}
		log.LogAttrs(context.Background(), level, "finding",
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
}

func clientAddr(c *wire.ConnInfo) string {
	if !c.ClientAddr.IsValid() {
		return ""
	}
	return c.ClientAddr.String()
}
