package admin

import (
	"net/http"
	"time"

	"github.com/dotmac/pgtrace/pool"
	"github.com/dotmac/pgtrace/wire"
)

// NoPoolsNote is what /api/pools says with --pool-mode none.
const NoPoolsNote = "pgtrace runs with --pool-mode none: every client has a server connection of its own, " +
	"so there are no pools; --pool-mode transaction or session makes pgtrace pool server connections"

// RegisterPools adds the pools to mux:
//
//	GET /api/pools  each pool of a pooled mode, by database/user: size,
//	                used, idle, waiting, the longest wait now, the p95
//	                wait, timeouts, server connections opened, and the
//	                client sessions that hold server connections
//
// mode is the --pool-mode. pools is the pooler's Stats; nil with
// --pool-mode none, when the answer is an empty list and a note saying
// why. conns, when set, names the holders' applications and states.
func RegisterPools(mux Mux, mode string, pools func() []pool.Stats, conns func() []wire.ConnState) {
	a := &api{conns: conns, now: time.Now}
	mux.Handle("/api/pools", a.get(func(w http.ResponseWriter, r *http.Request) { a.pools(w, mode, pools) }))
}

// poolJSON is an /api/pools entry: pool.Stats with its holders described.
type poolJSON struct {
	pool.Stats
	Clients []holderJSON `json:"clients"`
}

// holderJSON is a client session that holds a server connection.
type holderJSON struct {
	pool.HolderStats
	Application string  `json:"application"`
	State       string  `json:"state"`   // as pg_stat_activity.state
	HeldMs      float64 `json:"held_ms"` // how long it has held the server connection
}

func (a *api) pools(w http.ResponseWriter, mode string, pools func() []pool.Stats) {
	out := struct {
		Mode  string     `json:"mode"`
		Pools []poolJSON `json:"pools"`
		Note  string     `json:"note,omitempty"`
	}{Mode: mode, Pools: []poolJSON{}}
	if pools == nil {
		out.Note = NoPoolsNote
		writeJSON(w, http.StatusOK, out)
		return
	}
	byID := map[uint64]wire.ConnState{}
	if a.conns != nil {
		for _, c := range a.conns() {
			byID[c.ID] = c
		}
	}
	now := a.now()
	for _, st := range pools() {
		p := poolJSON{Stats: st, Clients: make([]holderJSON, 0, len(st.Clients))}
		for _, h := range st.Clients {
			hj := holderJSON{HolderStats: h}
			if c, ok := byID[h.ConnID]; ok {
				hj.Application, hj.State = c.Application, c.State
			}
			if !h.Since.IsZero() && now.After(h.Since) {
				hj.HeldMs = float64(now.Sub(h.Since)) / float64(time.Millisecond)
			}
			p.Clients = append(p.Clients, hj)
		}
		out.Pools = append(out.Pools, p)
	}
	writeJSON(w, http.StatusOK, out)
}
