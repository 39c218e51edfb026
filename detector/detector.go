package detector

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// Detector finds slow queries, N+1 patterns, transactions left idle,
// connection churn and, in pooled modes, exhausted and churning pools and
// session-level features a transaction pool cannot keep (pool.go), and
// keeps per-fingerprint statistics.
//
// Observe and ObserveConn must be called from one goroutine, in wire order
// per connection; Tick from another (a ticker); ObservePool and the
// readers from any. One
// mutex guards everything: Observe holds it for well under a microsecond,
// readers for a copy (and, in Queries, a sort) of the state.
type Detector struct {
	cfg Config

	mu sync.Mutex

	// Per-fingerprint statistics, bounded by cfg.MaxFingerprints.
	stats       map[string]*fpStats
	scratch     []*fpStats // reused by evictFingerprints
	fpEvictions uint64

	// N+1 groups with trace context, bounded by cfg.MaxNPlusOneGroups and
	// aged by cfg.NPlusOneGroupTTL; groupLRU orders them by last execution.
	groups         map[groupKey]*group
	groupLRU       lruList[*group]
	groupEvictions uint64
	groupExpiries  uint64
	nPlusOneGroups uint64 // groups that reached the threshold
	connNPlusOnes  uint64 // connection-fallback runs that reached it

	// Connections, bounded by cfg.MaxConnections.
	conns         map[uint64]*connState
	connLRU       lruList[*connState]
	connEvictions uint64
	idleByApp     map[string]time.Duration
	churn         map[string]*churnState
	idleEpisodes  uint64
	churnDetected uint64

	// Pools (pool.go), bounded by cfg.MaxApplications, and the findings
	// of session-level features by fingerprint, bounded by cfg.MaxFindings.
	pools        map[string]*poolState
	sessionState map[string]uint64

	findings   findingRing
	byType     map[FindingType]uint64
	statements uint64
	resetAt    time.Time
}

// Stats are the detector's counters and sizes.
type Stats struct {
	Statements           uint64 // statements observed since New
	Fingerprints         int    // fingerprints with statistics now
	FingerprintEvictions uint64 // fingerprints evicted (least total time) to stay within MaxFingerprints

	NPlusOneGroups         int    // trace groups tracked now
	NPlusOneGroupEvictions uint64 // trace groups evicted to stay within MaxNPlusOneGroups
	NPlusOneGroupExpiries  uint64 // trace groups forgotten after NPlusOneGroupTTL
	NPlusOneDetected       uint64 // N+1 groups detected (trace and connection fallback)

	Connections         int    // connections tracked now
	ConnectionEvictions uint64 // connections dropped to stay within MaxConnections

	Findings        int                    // findings in the ring now
	FindingsDropped uint64                 // findings pushed out of the full ring
	FindingsByType  map[FindingType]uint64 // findings created, by type, since New

	// IdleInTransaction is the time connections spent idle inside a
	// transaction, per application ("" when unknown), since the last Reset.
	IdleInTransaction map[string]time.Duration
	ResetAt           time.Time // last Reset, or New
}

// New returns a Detector with cfg's zero fields set to their defaults.
func New(cfg Config) *Detector {
	cfg = cfg.withDefaults()
	d := &Detector{
		cfg:          cfg,
		stats:        make(map[string]*fpStats),
		groups:       make(map[groupKey]*group),
		conns:        make(map[uint64]*connState),
		idleByApp:    make(map[string]time.Duration),
		churn:        make(map[string]*churnState),
		pools:        make(map[string]*poolState),
		sessionState: make(map[string]uint64),
		findings:     newFindingRing(cfg.MaxFindings),
		byType:       make(map[FindingType]uint64),
		resetAt:      cfg.Now(),
	}
	return d
}

// Config returns the configuration in use, defaults filled in.
func (d *Detector) Config() Config { return d.cfg }

// found adds f to the statement's findings, allocating their slice on the
// first: a statement makes at most a slow and an N+1 finding.
func (v *Verdict) found(f *Finding) {
	if v.Findings == nil {
		v.Findings = make([]Finding, 0, 2)
	}
	v.Findings = append(v.Findings, *f)
}

// Observe records one executed statement and returns what the exporter
// should mark on its span and metrics, with the findings it made
// (Verdict.Findings). s and what it points to are not kept.
func (d *Detector) Observe(s *Statement) Verdict {
	st := s.Stmt
	if st == nil || s.Query == nil {
		return Verdict{}
	}
	dur := st.Duration()
	if dur < 0 {
		dur = 0
	}
	var v Verdict

	d.mu.Lock()
	d.statements++

	// Statistics.
	fp := s.Query.Fingerprint
	f := d.stats[fp]
	if f == nil {
		if len(d.stats) >= d.cfg.MaxFingerprints {
			d.evictFingerprints()
		}
		f = newFPStats(s.Query)
		d.stats[fp] = f
	}
	f.observe(s, dur)

	// Connection state: transaction status, idle time, the fallback runs.
	c := d.connFor(s.Conn, st.End)
	inTx := c.beforeStatement(d, st)

	// Slow query.
	if dur >= d.cfg.SlowThreshold {
		v.Slow = true
		fd := d.slowFinding(s, dur)
		d.addFinding(fd)
		v.found(fd)
	}

	// N+1.
	control := isTxControl(s.Query)
	if s.Parent.IsValid() {
		if !control {
			d.observeTraceGroup(s, dur, &v)
		}
		c.otherStatement(control)
	} else {
		// Without trace context the signal is weaker: a statement that reads
		// no table (a pool's "SELECT 1" ping, "SELECT now()") is neither a
		// candidate nor a statement in between.
		d.observeConnRun(c, s, dur, control || len(s.Query.Tables) == 0, inTx, &v)
	}
	c.afterStatement(s, st)

	// Session-level features in transaction pool mode.
	if s.Query.Session != nil && d.cfg.PoolMode == "transaction" && !st.Failed() {
		d.observeSessionState(s, &v)
	}
	d.mu.Unlock()
	return v
}

// addFinding stores f in the ring, counts it, and returns its sequence,
// which f carries too. The caller holds d.mu.
func (d *Detector) addFinding(f *Finding) uint64 {
	d.byType[f.Type]++
	f.seq = d.findings.add(*f)
	return f.seq
}

// Tick runs the time-based checks: transactions left idle past the
// threshold, and the aging of N+1 groups and connection state. It returns
// the findings it made. The pipeline calls it about once a second.
func (d *Detector) Tick(now time.Time) []Finding {
	var found []Finding
	d.mu.Lock()
	found = d.checkIdle(now, found)
	cutoff := now.Add(-d.cfg.NPlusOneGroupTTL)
	for g := d.groupLRU.oldest(); g != nil && g.last.Before(cutoff); g = d.groupLRU.oldest() {
		d.dropGroup(g)
		d.groupExpiries++
	}
	d.expireConns(now)
	d.mu.Unlock()
	return found
}

// Findings returns the findings in the ring of type typ ("" for all) last
// seen at or after since (zero for all), most recently seen first.
func (d *Detector) Findings(typ FindingType, since time.Time) []Finding {
	out := []Finding{}
	d.mu.Lock()
	d.findings.newestFirst(func(f *Finding) bool {
		if (typ == "" || f.Type == typ) && !f.LastSeen.Before(since) {
			out = append(out, *f)
		}
		return true
	})
	d.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Finding) int { return cmp.Compare(b.LastSeen.UnixNano(), a.LastSeen.UnixNano()) })
	return out
}

// Reset clears the statistics, the findings, the N+1 groups and the churn
// and idle-time accounting. The state of live connections (transaction
// status) is kept, so an open transaction is still watched; their N+1 runs
// start over. Counters in Stats that say "since New" are kept.
func (d *Detector) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.stats)
	d.scratch = nil
	for g := d.groupLRU.oldest(); g != nil; g = d.groupLRU.oldest() {
		d.dropGroup(g)
	}
	for _, c := range d.conns {
		c.resetRuns()
		c.idleFinding = 0
	}
	clear(d.idleByApp)
	clear(d.churn)
	for _, ps := range d.pools {
		ps.ex, ps.churn = nil, nil
	}
	clear(d.sessionState)
	d.findings.reset()
	d.resetAt = d.cfg.Now()
}

// Stats returns the detector's counters.
func (d *Detector) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := Stats{
		Statements:             d.statements,
		Fingerprints:           len(d.stats),
		FingerprintEvictions:   d.fpEvictions,
		NPlusOneGroups:         len(d.groups),
		NPlusOneGroupEvictions: d.groupEvictions,
		NPlusOneGroupExpiries:  d.groupExpiries,
		NPlusOneDetected:       d.nPlusOneGroups + d.connNPlusOnes,
		Connections:            len(d.conns),
		ConnectionEvictions:    d.connEvictions,
		Findings:               d.findings.len(),
		FindingsDropped:        d.findings.dropped,
		FindingsByType:         make(map[FindingType]uint64, len(d.byType)),
		IdleInTransaction:      make(map[string]time.Duration, len(d.idleByApp)),
		ResetAt:                d.resetAt,
	}
	for k, v := range d.byType {
		s.FindingsByType[k] = v
	}
	for k, v := range d.idleByApp {
		s.IdleInTransaction[k] = v
	}
	return s
}

// IdleInTransaction returns the time connections of app spent idle inside
// a transaction since the last Reset, including the current idle stretch
// of connections still idle in one at now.
func (d *Detector) IdleInTransaction(app string, now time.Time) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.idleByApp[app]
	for _, c := range d.conns {
		if c.app() == app && c.inTx() && now.After(c.lastEnd) {
			t += now.Sub(c.lastEnd)
		}
	}
	return t
}
