package detector

import (
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
)

// Pool findings. In a pooled mode the pools report what they do
// (ObservePool, fed from the pool's hooks and, every tick, from its state),
// and the detector looks for:
//
//   - pool_exhausted: a client waited at least PoolExhaustedThreshold for a
//     server connection, or gave up. One finding per pool and episode: the
//     episode goes on while such waits keep coming, and ends once
//     PoolEpisodeGap passes without one. A client still waiting counts as
//     soon as a tick sees it past the threshold.
//   - pool_churn: more than PoolSize server connections of one pool opened
//     within PoolChurnWindow (a pool that kept its connections opens at
//     most PoolSize in any window: the rest replaced connections that were
//     closed, broken, left in a transaction by a client, or past their
//     lifetime). One finding per episode, which ends once a window passes
//     without an excess.
//
// And, from statements in transaction pool mode (Observe):
//
//   - session_state_in_transaction_pool: a statement that uses a
//     session-level feature (fingerprint.Query.Session) that cannot work
//     when every transaction may run on another server connection. One
//     finding per fingerprint, counting its executions.

// PoolEventKind names the kinds of PoolEvent.
type PoolEventKind uint8

const (
	// PoolWaited: a client got a server connection, or gave up, after
	// waiting Wait from Start (pool.Hooks.Waited).
	PoolWaited PoolEventKind = iota + 1
	// PoolWaiting: Waiting clients wait now, the longest since Start (the
	// pool's state, every tick).
	PoolWaiting
	// PoolOpened: a server connection was opened and logged in
	// (pool.Hooks.Created without error).
	PoolOpened
	// PoolClosed: a server connection was closed for Reason
	// (pool.Hooks.Closed).
	PoolClosed
)

// PoolEvent is something a pool did or is.
type PoolEvent struct {
	Kind PoolEventKind
	Pool string    // the pool's name, database/user
	Time time.Time // when; zero means now (Config.Now)
	// Start and Wait: PoolWaited, PoolWaiting (Start only).
	Start    time.Time
	Wait     time.Duration
	TimedOut bool   // PoolWaited: the client gave up (--pool-max-wait)
	Waiting  int    // PoolWaiting
	Reason   string // PoolClosed
}

// trackedParams are the run-time parameters a transaction pool carries to
// every server connection a client gets (pool/relay.go's trackedParams):
// setting them works in transaction mode. In lower case.
var trackedParams = map[string]bool{
	"application_name": true, "client_encoding": true, "datestyle": true, "intervalstyle": true,
	"timezone": true, "standard_conforming_strings": true,
}

// poolState is what the detector keeps of one pool. Guarded by Detector.mu.
type poolState struct {
	name   string
	active time.Time // latest event, for eviction
	ex     *exhaustion
	opens  []time.Time // the latest PoolSize+1 openings, a ring
	pos    int
	closes []poolClose // the latest closes, a ring of maxPoolCloses
	cpos   int
	churn  *poolChurn
}

type poolClose struct {
	at     time.Time
	reason string
}

// maxPoolCloses bounds the closes a pool keeps for a churn finding's
// detail.
const maxPoolCloses = 256

// exhaustion is a pool_exhausted episode.
type exhaustion struct {
	finding  uint64
	first    time.Time // when its first long waiter began to wait
	last     time.Time // its latest evidence
	clients  int64     // clients that waited past the threshold
	timeouts int64     // of which gave up
	total    time.Duration
	longest  time.Duration
	waiting  int // clients waiting at the latest tick
	// counting are the clients a tick counted while they waited, by the
	// time they began, with the wait counted so far: their PoolWaited
	// completes them rather than counting them again.
	counting map[time.Time]time.Duration
}

// poolChurn is a pool_churn episode.
type poolChurn struct {
	finding uint64
	first   time.Time // the oldest opening of the first excess
	last    time.Time // the latest excess
	opened  int64
}

// maxCounting bounds exhaustion.counting.
const maxCounting = 1024

// ObservePool records what a pool did and returns the findings it made:
// pool_exhausted and pool_churn. It may be called from any goroutine (the
// pool's hooks run on its sessions'); it takes the detector's lock for a
// moment and never blocks otherwise.
func (d *Detector) ObservePool(ev PoolEvent) []Finding {
	now := ev.Time
	if now.IsZero() {
		now = d.cfg.Now()
	}
	var f *Finding
	d.mu.Lock()
	ps := d.poolFor(ev.Pool, now)
	switch ev.Kind {
	case PoolWaited:
		f = d.observeWait(ps, now, ev.Start, ev.Wait, ev.TimedOut)
	case PoolWaiting:
		if ev.Waiting > 0 && !ev.Start.IsZero() && now.Sub(ev.Start) >= d.cfg.PoolExhaustedThreshold {
			f = d.observeWaiting(ps, now, ev.Start, ev.Waiting)
		} else if ps.ex != nil {
			ps.ex.waiting = ev.Waiting
		}
	case PoolOpened:
		f = d.observeOpen(ps, now)
	case PoolClosed:
		if len(ps.closes) < maxPoolCloses {
			ps.closes = append(ps.closes, poolClose{now, ev.Reason})
		} else {
			ps.closes[ps.cpos] = poolClose{now, ev.Reason}
			ps.cpos = (ps.cpos + 1) % maxPoolCloses
		}
	}
	d.mu.Unlock()
	if f == nil {
		return nil
	}
	return []Finding{*f}
}

// poolFor returns the state of the pool named name, making it when new;
// beyond MaxApplications pools the least recently active is forgotten.
// The caller holds d.mu.
func (d *Detector) poolFor(name string, now time.Time) *poolState {
	ps := d.pools[name]
	if ps == nil {
		if len(d.pools) >= d.cfg.MaxApplications {
			var oldest *poolState
			for _, p := range d.pools {
				if oldest == nil || p.active.Before(oldest.active) {
					oldest = p
				}
			}
			delete(d.pools, oldest.name)
		}
		ps = &poolState{name: name}
		d.pools[name] = ps
	}
	ps.active = now
	return ps
}

// observeWait handles a wait that ended.
func (d *Detector) observeWait(ps *poolState, now, start time.Time, wait time.Duration, timedOut bool) *Finding {
	if !timedOut && wait < d.cfg.PoolExhaustedThreshold {
		if ps.ex != nil {
			delete(ps.ex.counting, start)
		}
		return nil
	}
	ex, f := d.exhaustionAt(ps, now, start)
	if counted, ok := ex.counting[start]; ok {
		delete(ex.counting, start)
		ex.total += wait - counted // counted by a tick while it waited
	} else {
		ex.clients++
		ex.total += wait
	}
	if timedOut {
		ex.timeouts++
	}
	ex.longest = max(ex.longest, wait)
	return d.updateExhaustion(ps, f)
}

// observeWaiting handles a tick that saw a client waiting past the
// threshold since start.
func (d *Detector) observeWaiting(ps *poolState, now, start time.Time, waiting int) *Finding {
	ex, f := d.exhaustionAt(ps, now, start)
	wait := now.Sub(start)
	if counted, ok := ex.counting[start]; ok {
		ex.total += wait - counted
	} else {
		if ex.counting == nil {
			ex.counting = make(map[time.Time]time.Duration)
		}
		if len(ex.counting) >= maxCounting {
			clear(ex.counting) // their waits end without a tick's help
		}
		ex.clients++
		ex.total += wait
	}
	ex.counting[start] = wait
	ex.longest = max(ex.longest, wait)
	ex.waiting = waiting
	return d.updateExhaustion(ps, f)
}

// exhaustionAt returns the pool's episode at now, a new one when there is
// none or the last ended (PoolEpisodeGap without evidence); f is its new
// finding, not yet stored, when it is new.
func (d *Detector) exhaustionAt(ps *poolState, now, start time.Time) (*exhaustion, *Finding) {
	ex := ps.ex
	if ex != nil && now.Sub(ex.last) <= d.cfg.PoolEpisodeGap {
		ex.last = now
		return ex, nil
	}
	ex = &exhaustion{first: start, last: now}
	ps.ex = ex
	return ex, &Finding{Type: FindingPoolExhausted, FirstSeen: start}
}

// updateExhaustion stores the episode's finding: new (f), or updated in
// the ring. It returns f when new.
func (d *Detector) updateExhaustion(ps *poolState, f *Finding) *Finding {
	ex := ps.ex
	fill := func(x *Finding) {
		x.Count, x.LastSeen, x.TotalDurationMs = ex.clients, ex.last, ms(ex.total)
		x.Detail = d.exhaustedDetail(ps.name, ex)
	}
	if f != nil {
		fill(f)
		ex.finding = d.addFinding(f)
		return f
	}
	if x := d.findings.get(ex.finding); x != nil {
		fill(x)
	} else {
		// Pushed out of the ring while the episode went on: back in, as
		// the same finding (not counted again).
		x := Finding{Type: FindingPoolExhausted, FirstSeen: ex.first}
		fill(&x)
		ex.finding = d.findings.add(x)
	}
	return nil
}

func (d *Detector) exhaustedDetail(pool string, ex *exhaustion) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pool %s: %d client(s) waited %s or longer for a server connection (pool size %d)", pool, ex.clients,
		d.cfg.PoolExhaustedThreshold, d.cfg.PoolSize)
	if ex.timeouts > 0 {
		fmt.Fprintf(&b, ", %d gave up (SQLSTATE 53300)", ex.timeouts)
	}
	fmt.Fprintf(&b, "; longest wait %s", ex.longest.Round(time.Millisecond))
	if ex.waiting > 0 {
		fmt.Fprintf(&b, "; %d waiting at the latest check", ex.waiting)
	}
	b.WriteString(": raise --pool-size, or shorten the transactions that hold server connections")
	return b.String()
}

// observeOpen handles a server connection opened.
func (d *Detector) observeOpen(ps *poolState, now time.Time) *Finding {
	size := d.cfg.PoolSize + 1
	if len(ps.opens) < size {
		ps.opens = append(ps.opens, now)
	} else {
		ps.opens[ps.pos] = now
		ps.pos = (ps.pos + 1) % size
	}
	window := d.cfg.PoolChurnWindow
	ch := ps.churn
	if ch != nil && now.Sub(ch.last) > window {
		ps.churn, ch = nil, nil // the episode ended
	}
	oldest := ps.opens[ps.pos%len(ps.opens)]
	excess := len(ps.opens) == size && now.Sub(oldest) <= window
	switch {
	case ch == nil && !excess:
		return nil
	case ch == nil:
		ch = &poolChurn{first: oldest, last: now, opened: int64(size)}
		ps.churn = ch
		f := Finding{Type: FindingPoolChurn, Count: ch.opened, FirstSeen: ch.first, LastSeen: now, Detail: d.churnDetail(ps, ch)}
		ch.finding = d.addFinding(&f)
		return &f
	}
	ch.opened++
	if excess {
		ch.last = now
	}
	if x := d.findings.get(ch.finding); x != nil {
		x.Count, x.LastSeen, x.Detail = ch.opened, now, d.churnDetail(ps, ch)
	} else {
		ch.finding = d.findings.add(Finding{Type: FindingPoolChurn, Count: ch.opened, FirstSeen: ch.first, LastSeen: now, Detail: d.churnDetail(ps, ch)})
	}
	return nil
}

func (d *Detector) churnDetail(ps *poolState, ch *poolChurn) string {
	reasons := map[string]int{}
	for _, c := range ps.closes {
		if !c.at.Before(ch.first) {
			reasons[c.reason]++
		}
	}
	var closed []string
	for _, r := range slices.Sorted(maps.Keys(reasons)) {
		closed = append(closed, fmt.Sprintf("%s %d", r, reasons[r]))
	}
	why := "none seen"
	if len(closed) > 0 {
		why = strings.Join(closed, ", ")
	}
	return fmt.Sprintf("pool %s: %d server connections opened since %s, more than the pool's %d within %s: connections are closed and opened again (closed meanwhile, by reason: %s)",
		ps.name, ch.opened, ch.first.Format(time.RFC3339), d.cfg.PoolSize, d.cfg.PoolChurnWindow, why)
}

// sessionAdvice says, per feature, why it fails in transaction mode and
// what works instead.
var sessionAdvice = map[string]string{
	fingerprint.SessionSet: "the setting stays on the server connection, which other clients get next, " +
		"while this client's next transaction may run on another: use SET LOCAL inside a transaction, or ALTER ROLE/DATABASE … SET",
	fingerprint.SessionListen: "notifications go to the server connection, which returns to the pool after the transaction: " +
		"LISTEN on a direct connection or through --pool-mode session",
	fingerprint.SessionAdvisoryLock: "the lock stays with the server connection, not the client: " +
		"use pg_advisory_xact_lock inside a transaction",
	fingerprint.SessionHoldCursor: "the cursor stays on the server connection, which the client's next transaction may not get: " +
		"FETCH within the transaction that declared it",
	fingerprint.SessionTempTable: "the table stays on the server connection, which the client's next transaction may not get: " +
		"create it inside the transaction with ON COMMIT DROP",
	fingerprint.SessionPrepare: "the statement exists on one server connection only: " +
		"use the protocol's prepared statements (the driver's), which pgtrace carries across server connections",
}

// observeSessionState reports a statement's session-level features in
// transaction pool mode: a new finding per fingerprint, whose count the
// later executions raise. The caller holds d.mu.
func (d *Detector) observeSessionState(s *Statement, v *Verdict) {
	var uses []string
	for _, u := range s.Query.Session {
		if u.Feature == fingerprint.SessionSet && trackedParams[u.Name] {
			continue // carried to every server connection by the pool
		}
		what := u.Feature
		if u.Name != "" {
			what += " " + u.Name
		}
		uses = append(uses, what+": "+sessionAdvice[u.Feature])
	}
	if len(uses) == 0 {
		return
	}
	st := s.Stmt
	fp := s.Query.Fingerprint
	if seq, ok := d.sessionState[fp]; ok {
		if f := d.findings.get(seq); f != nil {
			f.Count++
			f.LastSeen = st.End
			return
		}
	}
	f := &Finding{
		Type:        FindingSessionState,
		Fingerprint: fp,
		Query:       s.Query.Normalized,
		Count:       1,
		FirstSeen:   st.Start,
		LastSeen:    st.End,
		Application: appOf(s),
		Detail:      "in transaction pool mode, " + strings.Join(uses, "; "),
	}
	if s.Parent.IsValid() {
		f.TraceID = hex.EncodeToString(s.Parent.TraceID[:])
		f.ParentSpanID = hex.EncodeToString(s.Parent.SpanID[:])
	}
	if _, ok := d.sessionState[fp]; !ok && len(d.sessionState) >= d.cfg.MaxFindings {
		clear(d.sessionState)
	}
	d.sessionState[fp] = d.addFinding(f)
	v.found(f)
}
