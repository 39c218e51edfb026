package detector

import (
	"cmp"
	"encoding/hex"
	"slices"
	"strings"
	"time"

	"github.com/dotmac/pgtrace/fingerprint"
)

const (
	maxSlowest      = 5  // trace ids of the slowest executions kept per fingerprint
	maxApplications = 8  // applications kept per fingerprint
	maxTenants      = 16 // tenants kept per fingerprint
)

// QueryStats are the statistics of one fingerprint: the JSON form of an
// /api/queries entry. Durations are milliseconds; percentiles come from a
// sketch with SketchRelativeAccuracy.
type QueryStats struct {
	Fingerprint     string    `json:"fingerprint"`
	Query           string    `json:"query"` // normalized text
	Summary         string    `json:"summary"`
	Operation       string    `json:"operation"`
	Calls           int64     `json:"calls"`
	Errors          int64     `json:"errors"`
	Rows            int64     `json:"rows"`
	TotalMs         float64   `json:"total_ms"`
	MeanMs          float64   `json:"mean_ms"`
	MinMs           float64   `json:"min_ms"`
	MaxMs           float64   `json:"max_ms"`
	P50Ms           float64   `json:"p50_ms"`
	P95Ms           float64   `json:"p95_ms"`
	P99Ms           float64   `json:"p99_ms"`
	FirstSeen       time.Time `json:"first_seen"`
	LastSeen        time.Time `json:"last_seen"`
	SlowestTraceIDs []string  `json:"slowest_trace_ids"` // most expensive first; executions with trace context only
	Applications    []string  `json:"applications"`      // at most 8
	Tenants         []string  `json:"tenants"`           // at most 16
}

// Sort orders accepted by Queries.
const (
	SortTotal = "total"
	SortMean  = "mean"
	SortP99   = "p99"
	SortCalls = "calls"
)

// ValidSort reports whether s is a sort order Queries knows.
func ValidSort(s string) bool {
	switch s {
	case SortTotal, SortMean, SortP99, SortCalls:
		return true
	}
	return false
}

type slowExec struct {
	dur   time.Duration
	trace [16]byte
}

// fpStats accumulates one fingerprint. Guarded by Detector.mu.
type fpStats struct {
	fingerprint, query, summary, operation string

	calls, errors, rows int64
	total, min, max     time.Duration
	first, last         time.Time
	sketch              sketch

	slowest [maxSlowest]slowExec // descending by dur; the first nslow are set
	nslow   int
	apps    []string
	tenants []string
}

func newFPStats(q *fingerprint.Query) *fpStats {
	return &fpStats{
		fingerprint: q.Fingerprint,
		query:       q.Normalized,
		summary:     q.Summary,
		operation:   q.Operation,
	}
}

func (f *fpStats) observe(s *Statement, dur time.Duration) {
	st := s.Stmt
	if f.calls == 0 || dur < f.min {
		f.min = dur
	}
	if dur > f.max {
		f.max = dur
	}
	if f.calls == 0 {
		f.first = st.End
	}
	f.calls++
	f.total += dur
	if st.Failed() {
		f.errors++
	}
	f.rows += st.Rows
	if st.End.After(f.last) {
		f.last = st.End
	}
	f.sketch.add(float64(dur))
	if s.Parent.IsValid() {
		f.addSlow(dur, s.Parent.TraceID)
	}
	app := s.Tags.Application
	if app == "" && s.Conn != nil {
		app = s.Conn.Application
	}
	f.apps = addBounded(f.apps, app, maxApplications)
	f.tenants = addBounded(f.tenants, s.Tags.Tenant, maxTenants)
}

// addSlow keeps the maxSlowest most expensive executions, one per trace.
func (f *fpStats) addSlow(dur time.Duration, trace [16]byte) {
	if f.nslow == maxSlowest && dur <= f.slowest[maxSlowest-1].dur {
		return
	}
	// One entry per trace: drop the trace's earlier entry if this one is slower.
	pos := f.nslow
	for i := 0; i < f.nslow; i++ {
		if f.slowest[i].trace == trace {
			if f.slowest[i].dur >= dur {
				return
			}
			pos = i
			break
		}
	}
	if pos == f.nslow {
		if f.nslow < maxSlowest {
			f.nslow++
		} else {
			pos = maxSlowest - 1
		}
	}
	// Insert at pos, then bubble up to keep descending order.
	f.slowest[pos] = slowExec{dur: dur, trace: trace}
	for i := pos; i > 0 && f.slowest[i].dur > f.slowest[i-1].dur; i-- {
		f.slowest[i], f.slowest[i-1] = f.slowest[i-1], f.slowest[i]
	}
}

// addBounded adds v to the small set set unless it is empty, present, or
// the set is full.
func addBounded(set []string, v string, max int) []string {
	if v == "" || len(set) >= max {
		return set
	}
	for _, x := range set {
		if x == v {
			return set
		}
	}
	return append(set, strings.Clone(v)) // v may point into a statement text
}

var snapshotQuantiles = []float64{0.5, 0.95, 0.99}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// snapshot converts f to its exported form. The caller holds Detector.mu.
func (f *fpStats) snapshot() QueryStats {
	var p [3]float64
	f.sketch.quantiles(snapshotQuantiles, p[:])
	clamp := func(v float64) float64 {
		return min(max(v, float64(f.min)), float64(f.max)) / float64(time.Millisecond)
	}
	q := QueryStats{
		Fingerprint:     f.fingerprint,
		Query:           f.query,
		Summary:         f.summary,
		Operation:       f.operation,
		Calls:           f.calls,
		Errors:          f.errors,
		Rows:            f.rows,
		TotalMs:         ms(f.total),
		MinMs:           ms(f.min),
		MaxMs:           ms(f.max),
		P50Ms:           clamp(p[0]),
		P95Ms:           clamp(p[1]),
		P99Ms:           clamp(p[2]),
		FirstSeen:       f.first,
		LastSeen:        f.last,
		SlowestTraceIDs: make([]string, f.nslow),
		Applications:    slices.Clone(f.apps),
		Tenants:         slices.Clone(f.tenants),
	}
	if q.Applications == nil {
		q.Applications = []string{}
	}
	if q.Tenants == nil {
		q.Tenants = []string{}
	}
	if f.calls > 0 {
		q.MeanMs = q.TotalMs / float64(f.calls)
	}
	for i := 0; i < f.nslow; i++ {
		q.SlowestTraceIDs[i] = hex.EncodeToString(f.slowest[i].trace[:])
	}
	return q
}

// evictFingerprints removes the batch of entries with the least total time
// so that one more fits. It runs only when the table is full, and removes
// 1/16th of it at once, so that its O(n) cost is amortized over many new
// fingerprints. The caller holds d.mu.
func (d *Detector) evictFingerprints() {
	batch := max(1, d.cfg.MaxFingerprints/16)
	all := d.scratch[:0]
	for _, f := range d.stats {
		all = append(all, f)
	}
	if batch >= len(all) {
		batch = len(all)
	} else {
		selectLeast(all, batch)
	}
	for _, f := range all[:batch] {
		delete(d.stats, f.fingerprint)
	}
	d.fpEvictions += uint64(batch)
	clear(all) // do not keep evicted entries alive through the scratch slice
	d.scratch = all[:0]
}

// selectLeast reorders a so that its k entries with the least total time
// come first (in no particular order): quickselect, O(len(a)) expected.
func selectLeast(a []*fpStats, k int) {
	lo, hi := 0, len(a)-1
	for lo < hi {
		// Median of three as the pivot.
		mid := lo + (hi-lo)/2
		if a[mid].total < a[lo].total {
			a[mid], a[lo] = a[lo], a[mid]
		}
		if a[hi].total < a[lo].total {
			a[hi], a[lo] = a[lo], a[hi]
		}
		if a[hi].total < a[mid].total {
			a[hi], a[mid] = a[mid], a[hi]
		}
		pivot := a[mid].total
		i, j := lo, hi
		for i <= j {
			for a[i].total < pivot {
				i++
			}
			for a[j].total > pivot {
				j--
			}
			if i <= j {
				a[i], a[j] = a[j], a[i]
				i++
				j--
			}
		}
		// Now a[lo..j] ≤ pivot ≤ a[i..hi].
		switch {
		case k-1 <= j:
			hi = j
		case k-1 >= i:
			lo = i
		default:
			return
		}
	}
}

// Queries returns the statistics of up to limit fingerprints (all when
// limit ≤ 0), ordered by sort, descending: SortTotal (also for an unknown
// sort), SortMean, SortP99 or SortCalls.
func (d *Detector) Queries(sort string, limit int) []QueryStats {
	d.mu.Lock()
	entries := make([]*fpStats, 0, len(d.stats))
	for _, f := range d.stats {
		entries = append(entries, f)
	}
	var out []QueryStats
	if sort == SortP99 {
		// The order needs every p99: snapshot all, then sort the copies.
		out = make([]QueryStats, len(entries))
		for i, f := range entries {
			out[i] = f.snapshot()
		}
		d.mu.Unlock()
		slices.SortFunc(out, func(a, b QueryStats) int {
			return cmp.Or(cmp.Compare(b.P99Ms, a.P99Ms), cmp.Compare(b.TotalMs, a.TotalMs), cmp.Compare(a.Fingerprint, b.Fingerprint))
		})
		if limit > 0 && len(out) > limit {
			out = out[:limit]
		}
		return out
	}
	key := func(f *fpStats) float64 {
		switch sort {
		case SortMean:
			return float64(f.total) / float64(max(f.calls, 1))
		case SortCalls:
			return float64(f.calls)
		}
		return float64(f.total)
	}
	slices.SortFunc(entries, func(a, b *fpStats) int {
		return cmp.Or(cmp.Compare(key(b), key(a)), cmp.Compare(b.total, a.total), cmp.Compare(a.fingerprint, b.fingerprint))
	})
	if limit > 0 && len(entries) > limit {
		entries = entries[:limit]
	}
	out = make([]QueryStats, len(entries))
	for i, f := range entries {
		out[i] = f.snapshot()
	}
	d.mu.Unlock()
	return out
}
