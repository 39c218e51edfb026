package detector

import (
	"encoding/hex"
	"fmt"
	"time"

	"github.com/dotmac/pgtrace/wire"
)

// connStateTTL: a connection with no event for this long is forgotten at
// the next Tick (its ConnClosed may have been dropped by a full queue).
// Should it come back, its state is rebuilt from its next statement.
const connStateTTL = time.Hour

// otherApplication names the applications beyond Config.MaxApplications.
const otherApplication = "(other)"

// connState is what the detector remembers of one client session.
// Guarded by Detector.mu.
type connState struct {
	lru        lruNode[*connState]
	info       wire.ConnInfo
	tx         byte      // last known transaction status; 0 unknown
	txSeq      uint64    // incremented each time the connection enters a transaction
	lastEnd    time.Time // end of the last statement, or of the last status change
	lastActive time.Time
	lastFP     string // the last statement's fingerprint and text, for idle findings
	lastQuery  string
	authFailed bool

	// The current idle-in-transaction episode, once reported.
	idleReported bool
	idleFinding  uint64

	runs [maxRuns]run
}

func (c *connState) node() *lruNode[*connState] { return &c.lru }

func (c *connState) inTx() bool { return c.tx == wire.TxInBlock || c.tx == wire.TxFailed }

func (c *connState) app() string { return c.info.Application }

func (c *connState) describe() string {
	client := "unix socket"
	if c.info.ClientAddr.IsValid() {
		client = c.info.ClientAddr.String()
	}
	return fmt.Sprintf("client %s, user %s, database %s, backend pid %d", client, c.info.User, c.info.Database, c.info.BackendPID)
}

// otherStatement notes, for the connection-fallback runs, that a statement
// of another kind (one with trace context) ran.
func (c *connState) otherStatement(control bool) {
	if control {
		return
	}
	for i := range c.runs {
		if c.runs[i].count > 0 {
			c.runs[i].gap++
		}
	}
}

// connFor returns the state of the connection info names, making it when
// it is new. The caller holds d.mu.
func (d *Detector) connFor(info *wire.ConnInfo, now time.Time) *connState {
	var id uint64
	if info != nil {
		id = info.ID
	}
	c := d.conns[id]
	if c == nil {
		if len(d.conns) >= d.cfg.MaxConnections {
			d.dropConn(d.connLRU.oldest(), now)
			d.connEvictions++
		}
		c = &connState{}
		d.conns[id] = c
	}
	if info != nil {
		c.info = *info
	}
	c.lastActive = now
	d.connLRU.touch(c)
	return c
}

// dropConn forgets c, first accounting for a transaction it left open.
func (d *Detector) dropConn(c *connState, now time.Time) {
	d.endIdle(c, now)
	d.connLRU.remove(c)
	delete(d.conns, c.info.ID)
}

// beforeStatement accounts for the time c sat idle in a transaction before
// st started, ends a reported idle episode, and says whether st started
// inside a transaction.
func (c *connState) beforeStatement(d *Detector, st *wire.Statement) bool {
	in := c.inTx()
	if in {
		d.endIdle(c, st.Start)
	}
	return in
}

// afterStatement records the status st left the connection in.
func (c *connState) afterStatement(s *Statement, st *wire.Statement) {
	if st.TxStatus != 0 {
		c.setTx(st.TxStatus)
	}
	if st.End.After(c.lastEnd) {
		c.lastEnd = st.End
	}
	c.lastFP, c.lastQuery = s.Query.Fingerprint, s.Query.Normalized
}

func (c *connState) setTx(status byte) {
	was := c.inTx()
	c.tx = status
	if !was && c.inTx() {
		c.txSeq++
	}
}

// endIdle closes c's idle stretch at end (a statement starting, the
// connection leaving the transaction or closing): its time counts for the
// application, and a reported episode's finding gets its final duration.
func (d *Detector) endIdle(c *connState, end time.Time) {
	if !c.inTx() || c.lastEnd.IsZero() || !end.After(c.lastEnd) {
		c.idleReported, c.idleFinding = false, 0
		return
	}
	idle := end.Sub(c.lastEnd)
	d.idleByApp[d.appKey(d.idleByApp, c.app())] += idle
	if c.idleReported {
		if f := d.findings.get(c.idleFinding); f != nil {
			f.TotalDurationMs, f.LastSeen = ms(idle), end
			f.Detail = c.idleDetail(idle)
		}
	}
	c.idleReported, c.idleFinding = false, 0
	c.lastEnd = end // the stretch is accounted for
}

// appKey returns app, or otherApplication when m is full and lacks app.
func (d *Detector) appKey(m map[string]time.Duration, app string) string {
	if _, ok := m[app]; ok || len(m) < d.cfg.MaxApplications {
		return app
	}
	return otherApplication
}

func (c *connState) idleDetail(idle time.Duration) string {
	status := "in a transaction"
	if c.tx == wire.TxFailed {
		status = "in a failed transaction"
	}
	return fmt.Sprintf("idle %s for %s (%s)", status, idle.Round(time.Millisecond), c.describe())
}

// checkIdle reports connections idle in a transaction past the threshold,
// once per episode, and keeps reported episodes' durations current. It
// appends the new findings to found. The caller holds d.mu.
func (d *Detector) checkIdle(now time.Time, found []Finding) []Finding {
	for _, c := range d.conns {
		if !c.inTx() || c.lastEnd.IsZero() {
			continue
		}
		idle := now.Sub(c.lastEnd)
		if idle < d.cfg.IdleInTxThreshold {
			continue
		}
		if c.idleReported {
			if f := d.findings.get(c.idleFinding); f != nil {
				f.TotalDurationMs, f.LastSeen, f.Detail = ms(idle), now, c.idleDetail(idle)
			}
			continue
		}
		f := Finding{
			Type:            FindingIdleInTransaction,
			Fingerprint:     c.lastFP,
			Query:           c.lastQuery,
			Count:           1,
			TotalDurationMs: ms(idle),
			FirstSeen:       c.lastEnd,
			LastSeen:        now,
			Application:     c.app(),
			Detail:          c.idleDetail(idle),
		}
		c.idleReported = true
		c.idleFinding = d.addFinding(&f)
		d.idleEpisodes++
		found = append(found, f)
	}
	return found
}

// expireConns forgets connections with no event for connStateTTL.
func (d *Detector) expireConns(now time.Time) {
	cutoff := now.Add(-connStateTTL)
	for c := d.connLRU.oldest(); c != nil && c.lastActive.Before(cutoff); c = d.connLRU.oldest() {
		d.dropConn(c, now)
	}
}

// churnState watches one application's short-lived connections.
type churnState struct {
	times    []time.Time // close times of the latest short-lived connections, a ring
	pos      int
	count    int64 // short-lived connections since detection (or in the ring, before)
	first    time.Time
	last     time.Time
	detected bool
	finding  uint64
	example  string // describe() of the latest one
}

// ObserveConn records a connection event: ConnOpened, ConnAuthenticated,
// ConnAuthFailed, ConnClosed and TxStatus. Other kinds are ignored. It
// returns the findings it made: connection churn, detected on a
// ConnClosed.
func (d *Detector) ObserveConn(e wire.Event) []Finding {
	now := e.Time
	if now.IsZero() {
		now = d.cfg.Now()
	}
	var found *Finding
	d.mu.Lock()
	switch e.Kind {
	case wire.ConnOpened, wire.ConnAuthenticated:
		d.connFor(&e.Conn, now)
	case wire.ConnAuthFailed:
		d.connFor(&e.Conn, now).authFailed = true
	case wire.TxStatus:
		c := d.connFor(&e.Conn, now)
		if e.Conn.TxStatus != 0 && e.Conn.TxStatus != c.tx {
			if c.inTx() {
				d.endIdle(c, now)
			}
			c.setTx(e.Conn.TxStatus)
			if c.inTx() {
				c.lastEnd = now
			}
		}
	case wire.ConnClosed:
		failed := false
		if c := d.conns[e.Conn.ID]; c != nil {
			failed = c.authFailed
			d.dropConn(c, now)
		}
		if !failed && e.Statements <= int64(d.cfg.ChurnMaxStatements) {
			found = d.observeChurn(&e, now)
		}
	}
	d.mu.Unlock()
	if found == nil {
		return nil
	}
	return []Finding{*found}
}

// observeChurn counts a short-lived connection for its application and
// returns the finding when this one made the application a churner. The
// caller holds d.mu.
func (d *Detector) observeChurn(e *wire.Event, now time.Time) *Finding {
	app := e.Conn.Application
	ch := d.churn[app]
	if ch == nil {
		if len(d.churn) >= d.cfg.MaxApplications {
			app = otherApplication
			ch = d.churn[app]
		}
		if ch == nil {
			ch = &churnState{times: make([]time.Time, 0, d.cfg.ChurnThreshold)}
			d.churn[app] = ch
		}
	}
	tmp := connState{info: e.Conn}
	ch.example = tmp.describe()
	ch.last = now
	if ch.detected {
		ch.count++
		if f := d.findings.get(ch.finding); f != nil {
			f.Count, f.LastSeen, f.Detail = ch.count, now, ch.detail(d.cfg)
		} else {
			ch.finding = d.findings.add(ch.toFinding(app, d.cfg))
		}
		return nil
	}
	// The ring holds the latest ChurnThreshold close times; the oldest is
	// at pos once it is full.
	if len(ch.times) < cap(ch.times) {
		ch.times = append(ch.times, now)
	} else {
		ch.times[ch.pos] = now
		ch.pos = (ch.pos + 1) % len(ch.times)
	}
	if len(ch.times) < d.cfg.ChurnThreshold {
		return nil
	}
	oldest := ch.times[ch.pos%len(ch.times)]
	if now.Sub(oldest) > d.cfg.ChurnWindow {
		return nil
	}
	ch.detected = true
	ch.count = int64(len(ch.times))
	ch.first = oldest
	d.churnDetected++
	f := ch.toFinding(app, d.cfg)
	ch.finding = d.addFinding(&f)
	return &f
}

func (ch *churnState) detail(cfg Config) string {
	return fmt.Sprintf("%d connections closed after at most %d statements (at least %d within %s): the application seems to use no connection pool; latest: %s",
		ch.count, cfg.ChurnMaxStatements, cfg.ChurnThreshold, cfg.ChurnWindow, ch.example)
}

func (ch *churnState) toFinding(app string, cfg Config) Finding {
	return Finding{
		Type:        FindingConnectionChurn,
		Count:       ch.count,
		FirstSeen:   ch.first,
		LastSeen:    ch.last,
		Application: app,
		Detail:      ch.detail(cfg),
	}
}

// appOf is the application a statement belongs to: its sqlcommenter tag,
// else the session's application_name.
func appOf(s *Statement) string {
	if s.Tags != nil && s.Tags.Application != "" {
		return s.Tags.Application
	}
	if s.Conn != nil {
		return s.Conn.Application
	}
	return ""
}

// slowFinding describes one slow execution.
func (d *Detector) slowFinding(s *Statement, dur time.Duration) *Finding {
	st := s.Stmt
	f := &Finding{
		Type:            FindingSlowQuery,
		Fingerprint:     s.Query.Fingerprint,
		Query:           s.Query.Normalized,
		Count:           1,
		TotalDurationMs: ms(dur),
		FirstSeen:       st.Start,
		LastSeen:        st.End,
		Application:     appOf(s),
	}
	if s.Parent.IsValid() {
		f.TraceID = hex.EncodeToString(s.Parent.TraceID[:])
		f.ParentSpanID = hex.EncodeToString(s.Parent.SpanID[:])
	}
	where := "unknown connection"
	if s.Conn != nil {
		tmp := connState{info: *s.Conn}
		where = tmp.describe()
	}
	f.Detail = fmt.Sprintf("%.1f ms, threshold %s; %d rows; %s", ms(dur), d.cfg.SlowThreshold, st.Rows, where)
	if st.Failed() {
		// SQLSTATE only: an error message can quote values (DESIGN.md decision 10).
		f.Detail += "; failed with SQLSTATE " + st.SQLState
	}
	return f
}
