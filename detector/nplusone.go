package detector

import (
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
)

// readdInterval is the least time between two re-insertions of a still
// growing N+1 finding that the ring dropped.
const readdInterval = time.Second

// maxGroupParents bounds the parent span ids a trace group records.
const maxGroupParents = 8

// groupKey identifies an N+1 group with trace context. Parent span ids are
// deliberately not part of it: a driver that makes a span per query gives
// every execution a different parent.
type groupKey struct {
	trace [16]byte
	fp    string
}

// group counts the executions of one fingerprint under one trace.
type group struct {
	lru      lruNode[*group]
	key      groupKey
	query    string
	app      string
	count    int64
	total    time.Duration
	first    time.Time
	last     time.Time
	parents  [maxGroupParents][8]byte // distinct parent span ids, first seen first
	nparents int
	more     bool // more distinct parents than maxGroupParents
	detected bool
	finding  uint64    // ring sequence of the finding once detected
	readded  time.Time // when the finding was last put back after the ring dropped it
}

func (g *group) node() *lruNode[*group] { return &g.lru }

// addParent records a parent span id. It reports whether the recorded list
// (and so the finding's detail) changed: a new id while there is room, or
// the first one beyond it.
func (g *group) addParent(id [8]byte) bool {
	for i := 0; i < g.nparents; i++ {
		if g.parents[i] == id {
			return false
		}
	}
	if g.nparents < maxGroupParents {
		g.parents[g.nparents] = id
		g.nparents++
		return true
	}
	first := !g.more
	g.more = true
	return first
}

func (g *group) detail() string {
	var b strings.Builder
	switch {
	case g.more:
		fmt.Fprintf(&b, "under more than %d parent spans: ", g.nparents)
	case g.nparents == 1:
		b.WriteString("under parent span ")
	default:
		fmt.Fprintf(&b, "under %d parent spans: ", g.nparents)
	}
	for i := 0; i < g.nparents; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(hex.EncodeToString(g.parents[i][:]))
	}
	if g.more {
		b.WriteString(", …")
	}
	return b.String()
}

func (g *group) toFinding() Finding {
	return Finding{
		Type:            FindingNPlusOne,
		TraceID:         hex.EncodeToString(g.key.trace[:]),
		ParentSpanID:    hex.EncodeToString(g.parents[0][:]),
		Fingerprint:     g.key.fp,
		Query:           g.query,
		Count:           g.count,
		TotalDurationMs: ms(g.total),
		FirstSeen:       g.first,
		LastSeen:        g.last,
		Application:     g.app,
		Detail:          g.detail(),
	}
}

// observeTraceGroup counts s in its (trace id, fingerprint) group. The
// caller holds d.mu.
func (d *Detector) observeTraceGroup(s *Statement, dur time.Duration, v *Verdict) {
	st := s.Stmt
	key := groupKey{trace: s.Parent.TraceID, fp: s.Query.Fingerprint}
	g := d.groups[key]
	if g == nil {
		if len(d.groups) >= d.cfg.MaxNPlusOneGroups {
			// Evict the least recently seen group and reuse its memory: at
			// steady state (full) new groups cost no allocation.
			g = d.groupLRU.oldest()
			d.dropGroup(g)
			d.groupEvictions++
			*g = group{}
		} else {
			g = new(group)
		}
		g.key, g.query, g.app, g.first = key, s.Query.Normalized, appOf(s), st.Start
		d.groups[key] = g
	}
	d.groupLRU.touch(g)
	g.count++
	g.total += dur
	if st.End.After(g.last) {
		g.last = st.End
	}
	parentsChanged := g.addParent(s.Parent.SpanID)

	if !g.detected {
		if g.count < int64(d.cfg.NPlusOneThreshold) || g.total < d.cfg.NPlusOneMinDuration {
			return
		}
		g.detected = true
		d.nPlusOneGroups++
		f := g.toFinding()
		g.finding = d.addFinding(&f)
		v.found(&f)
		v.NPlusOneDetected = true
	} else if f := d.findings.get(g.finding); f != nil {
		f.Count, f.TotalDurationMs, f.LastSeen = g.count, ms(g.total), g.last
		if parentsChanged {
			f.Detail = g.detail()
		}
	} else if st.End.Sub(g.readded) >= readdInterval {
		// The ring dropped the finding while the group kept going: put it
		// back, without reporting it again. At most once per
		// readdInterval, so that more live groups than ring slots cannot
		// make every execution build a finding.
		g.readded = st.End
		g.finding = d.findings.add(g.toFinding())
	}
	v.NPlusOne = true
	v.NPlusOneCount = int(g.count)
}

// dropGroup forgets g. The caller holds d.mu.
func (d *Detector) dropGroup(g *group) {
	d.groupLRU.remove(g)
	delete(d.groups, g.key)
}

// run is a candidate N+1 on one connection without trace context: the
// same fingerprint repeated with few other statements in between.
type run struct {
	fp, query string
	count     int64
	total     time.Duration
	first     time.Time // start of the first execution
	last      time.Time // end of the latest execution
	gap       int       // other statements since the latest execution
	inTx      bool      // the first execution ran inside a transaction…
	txSeq     uint64    // …this one (connState.txSeq)
	detected  bool
	finding   uint64
	readded   time.Time
}

// maxRuns is how many interleaved fingerprints one connection tracks: a loop
// body may run a few statements per iteration.
const maxRuns = 4

// observeConnRun counts s in its connection's runs. inTx says whether s
// started inside a transaction. The caller holds d.mu.
func (d *Detector) observeConnRun(c *connState, s *Statement, dur time.Duration, control, inTx bool, v *Verdict) {
	if control {
		return // neither a candidate nor a statement "in between"
	}
	st := s.Stmt
	fp := s.Query.Fingerprint
	var r *run
	for i := range c.runs {
		x := &c.runs[i]
		if x.count == 0 {
			continue
		}
		if x.fp == fp {
			r = x
			continue
		}
		x.gap++
		if x.gap > d.cfg.NPlusOneMaxGap {
			*x = run{}
		}
	}
	if r != nil {
		sameTx := inTx && r.inTx && r.txSeq == c.txSeq
		switch {
		case sameTx:
		case r.detected && st.Start.Sub(r.last) <= d.cfg.NPlusOneWindow:
			// A detected run goes on while repetitions keep coming.
		case !r.detected && st.Start.Sub(r.first) <= d.cfg.NPlusOneWindow:
		default:
			*r = run{} // too slow to be a loop: start over with this one
		}
	}
	if r == nil || r.count == 0 {
		if r == nil {
			r = c.freeRun()
		}
		*r = run{fp: fp, query: s.Query.Normalized, first: st.Start, inTx: inTx, txSeq: c.txSeq}
	}
	r.count++
	r.total += dur
	r.gap = 0
	if st.End.After(r.last) {
		r.last = st.End
	}

	if !r.detected {
		if r.count < int64(d.cfg.NPlusOneThreshold) || r.total < d.cfg.NPlusOneMinDuration {
			return
		}
		r.detected = true
		d.connNPlusOnes++
		f := c.runFinding(r, d.cfg.NPlusOneWindow)
		r.finding = d.addFinding(&f)
		v.found(&f)
		v.NPlusOneDetected = true
	} else if f := d.findings.get(r.finding); f != nil {
		f.Count, f.TotalDurationMs, f.LastSeen = r.count, ms(r.total), r.last
	} else if st.End.Sub(r.readded) >= readdInterval {
		r.readded = st.End
		r.finding = d.findings.add(c.runFinding(r, d.cfg.NPlusOneWindow))
	}
	v.NPlusOne = true
	v.NPlusOneCount = int(r.count)
}

// freeRun returns an unused run slot, or the one idle the longest.
func (c *connState) freeRun() *run {
	oldest := &c.runs[0]
	for i := range c.runs {
		if c.runs[i].count == 0 {
			return &c.runs[i]
		}
		if c.runs[i].last.Before(oldest.last) {
			oldest = &c.runs[i]
		}
	}
	return oldest
}

func (c *connState) resetRuns() { c.runs = [maxRuns]run{} }

func (c *connState) runFinding(r *run, window time.Duration) Finding {
	where := fmt.Sprintf("within %s", window)
	if r.inTx && r.txSeq == c.txSeq && c.inTx() {
		where = "within one transaction"
	}
	return Finding{
		Type:            FindingNPlusOne,
		Fingerprint:     r.fp,
		Query:           r.query,
		Count:           r.count,
		TotalDurationMs: ms(r.total),
		FirstSeen:       r.first,
		LastSeen:        r.last,
		Application:     c.app(),
		Detail:          fmt.Sprintf("no trace context: repeated on one connection %s (%s)", where, c.describe()),
	}
}

// isTxControl reports whether q is transaction or session control (BEGIN,
// COMMIT, SET, …): never an N+1 candidate, and not counted as a statement
// between repetitions. Transaction control is what the fingerprint stage
// classified (Query.TxControl); session control is read from the
// operation.
func isTxControl(q *fingerprint.Query) bool {
	return q.TxControl != fingerprint.TxNone || sessionControl[q.Operation]
}

// sessionControl are the operations (db.operation.name) that set up or
// look at the session rather than touch data.
var sessionControl = map[string]bool{
	"SET": true, "RESET": true, "SHOW": true, "DISCARD": true, "DEALLOCATE": true,
	"LISTEN": true, "UNLISTEN": true, "PREPARE": true,
	"COMMIT PREPARED": true, "ROLLBACK PREPARED": true,
}
