package admin

import (
	"cmp"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/wire"
)

// API limits.
const (
	// DefaultQueryLimit is how many fingerprints /api/queries returns
	// without ?limit=.
	DefaultQueryLimit = 100
	// MaxQueryLimit is the largest ?limit= accepted.
	MaxQueryLimit = 10000
)

// Mux is what RegisterAPI registers its routes on: a *Server, or an
// *http.ServeMux.
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// RegisterAPI adds the query API and the page to mux:
//
//	GET  /api/queries      per-fingerprint statistics (?sort=total|mean|p99|calls&limit=N&empty=true)
//	GET  /api/findings     findings (?type=<a finding type>&since=RFC3339|duration)
//	GET  /api/finding-types the finding types and their titles (detector.FindingTypes)
//	GET  /api/connections  live client connections, from conns
//	GET  /api/stats        the detector's counters
//	POST /api/reset        clears the detector's statistics and findings
//	GET  /                 the page
//
// conns may be nil: /api/connections then lists none. Errors are JSON
// objects {"error": "..."} with a 4xx status.
func RegisterAPI(mux Mux, d *detector.Detector, conns func() []wire.ConnState) {
	a := &api{d: d, conns: conns, now: time.Now}
	mux.Handle("/api/queries", a.get(a.queries))
	mux.Handle("/api/findings", a.get(a.findings))
	mux.Handle("/api/finding-types", a.get(a.findingTypes))
	mux.Handle("/api/connections", a.get(a.connections))
	mux.Handle("/api/stats", a.get(a.stats))
	mux.Handle("/api/reset", http.HandlerFunc(a.reset))
	mux.Handle("/{$}", a.get(servePage))
}

type api struct {
	d     *detector.Detector
	conns func() []wire.ConnState
	now   func() time.Time
}

// get restricts h to GET and HEAD.
func (a *api) get(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use GET", r.Method))
			return
		}
		h(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	if err := enc.Encode(v); err != nil {
		slog.Debug("admin: write response", "err", err)
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (a *api) queries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sort := q.Get("sort")
	if sort == "" {
		sort = detector.SortTotal
	}
	if !detector.ValidSort(sort) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("sort %q: want total, mean, p99 or calls", sort))
		return
	}
	limit := DefaultQueryLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxQueryLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: want an integer from 1 to %d", s, MaxQueryLimit))
			return
		}
		limit = n
	}
	withEmpty := false
	if s := q.Get("empty"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("empty %q: want true or false", s))
			return
		}
		withEmpty = b
	}
	var qs []detector.QueryStats
	if withEmpty {
		qs = a.d.Queries(sort, limit)
		for i := range qs {
			if isEmptyStatement(qs[i]) {
				qs[i].Query = EmptyStatementLabel
			}
		}
	} else {
		// One more than asked: the empty statements have one
		// fingerprint, so at most one entry is left out.
		qs = slices.DeleteFunc(a.d.Queries(sort, limit+1), isEmptyStatement)
		qs = qs[:min(len(qs), limit)]
	}
	writeJSON(w, http.StatusOK, struct {
		Queries []detector.QueryStats `json:"queries"`
	}{qs})
}

// EmptyStatementLabel is the query text /api/queries?empty=true shows for
// statements with nothing to run: only comments or whitespace, such as the
// "-- ping" pgx sends to check a connection (PostgreSQL answers
// EmptyQueryResponse). Without ?empty=true they are left out of the top
// queries: they cost the database nothing and would crowd it.
const EmptyStatementLabel = "(empty statement: only comments or whitespace, such as a driver's \"-- ping\")"

// isEmptyStatement reports whether q is the statistics of empty statements:
// the pipeline gives them the summary and operation EMPTY and no text.
func isEmptyStatement(q detector.QueryStats) bool {
	return q.Summary == "EMPTY" && q.Operation == "EMPTY" && q.Query == ""
}

func (a *api) findings(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	typ := detector.FindingType(q.Get("type"))
	if _, ok := detector.LookupFindingType(typ); typ != "" && !ok {
		var names []string
		for _, fi := range detector.FindingTypes() {
			names = append(names, string(fi.Type))
		}
		writeError(w, http.StatusBadRequest, fmt.Sprintf("type %q: want one of %s", typ, strings.Join(names, ", ")))
		return
	}
	since, err := parseSince(q.Get("since"), a.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Findings []detector.Finding `json:"findings"`
	}{a.d.Findings(typ, since)})
}

// findingTypes lists the finding types with their titles, in the
// detector's order: what ?type= of /api/findings takes, and the page's
// filter.
func (a *api) findingTypes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, struct {
		FindingTypes []detector.FindingInfo `json:"finding_types"`
	}{detector.FindingTypes()})
}

// parseSince reads ?since=: an RFC 3339 time, or a duration (5m, 1h30m)
// meaning that long before now. "" is the zero time: everything.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("since %q: want an RFC 3339 time (2006-01-02T15:04:05Z) or a positive duration (5m)", s)
	}
	return now.Add(-d), nil
}

// connection is an /api/connections entry.
type connection struct {
	ID          uint64    `json:"id"`
	ClientAddr  string    `json:"client_addr"` // "" for a Unix socket
	Application string    `json:"application"`
	User        string    `json:"user"`
	Database    string    `json:"database"`
	State       string    `json:"state"` // as pg_stat_activity.state
	BackendPID  uint32    `json:"backend_pid"`
	OpenedAt    time.Time `json:"opened_at"`
	Statements  int64     `json:"statements"`
	// StatementAgeMs is how long the current statement has been running;
	// 0 when the connection is idle.
	StatementAgeMs float64 `json:"statement_age_ms"`
}

func (a *api) connections(w http.ResponseWriter, r *http.Request) {
	out := []connection{}
	if a.conns != nil {
		now := a.now()
		for _, c := range a.conns() {
			e := connection{
				ID:          c.ID,
				Application: c.Application,
				User:        c.User,
				Database:    c.Database,
				State:       c.State,
				BackendPID:  c.BackendPID,
				OpenedAt:    c.OpenedAt,
				Statements:  c.Statements,
			}
			if c.ClientAddr.IsValid() {
				e.ClientAddr = c.ClientAddr.String()
			}
			if !c.StatementStart.IsZero() && now.After(c.StatementStart) {
				e.StatementAgeMs = float64(now.Sub(c.StatementStart)) / float64(time.Millisecond)
			}
			out = append(out, e)
		}
	}
	// The longest-running statements first, then the oldest connections.
	slices.SortFunc(out, func(x, y connection) int {
		return cmp.Or(cmp.Compare(y.StatementAgeMs, x.StatementAgeMs), cmp.Compare(x.ID, y.ID))
	})
	writeJSON(w, http.StatusOK, struct {
		Connections []connection `json:"connections"`
	}{out})
}

// statsJSON is the /api/stats form of detector.Stats.
type statsJSON struct {
	Statements             uint64                          `json:"statements"`
	Fingerprints           int                             `json:"fingerprints"`
	FingerprintEvictions   uint64                          `json:"fingerprint_evictions"`
	NPlusOneGroups         int                             `json:"n_plus_one_groups"`
	NPlusOneGroupEvictions uint64                          `json:"n_plus_one_group_evictions"`
	NPlusOneDetected       uint64                          `json:"n_plus_one_detected"`
	Findings               int                             `json:"findings"`
	FindingsDropped        uint64                          `json:"findings_dropped"`
	FindingsByType         map[detector.FindingType]uint64 `json:"findings_by_type"`
	IdleInTransactionMs    map[string]float64              `json:"idle_in_transaction_ms"` // by application
	ResetAt                time.Time                       `json:"reset_at"`
}

func (a *api) stats(w http.ResponseWriter, r *http.Request) {
	s := a.d.Stats()
	out := statsJSON{
		Statements:             s.Statements,
		Fingerprints:           s.Fingerprints,
		FingerprintEvictions:   s.FingerprintEvictions,
		NPlusOneGroups:         s.NPlusOneGroups,
		NPlusOneGroupEvictions: s.NPlusOneGroupEvictions,
		NPlusOneDetected:       s.NPlusOneDetected,
		Findings:               s.Findings,
		FindingsDropped:        s.FindingsDropped,
		FindingsByType:         s.FindingsByType,
		IdleInTransactionMs:    make(map[string]float64, len(s.IdleInTransaction)),
		ResetAt:                s.ResetAt,
	}
	for app, d := range s.IdleInTransaction {
		out.IdleInTransactionMs[app] = float64(d) / float64(time.Millisecond)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) reset(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed; use POST", r.Method))
		return
	}
	a.d.Reset()
	writeJSON(w, http.StatusOK, map[string]string{"status": "reset"})
}
