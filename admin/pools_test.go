package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/pool"
)

// fakePools is a pooler's Stats with one busy pool and one idle one.
func fakePools(now time.Time) func() []pool.Stats {
	return func() []pool.Stats {
		return []pool.Stats{
			{Name: "shop/shop", Database: "shop", User: "shop", Size: 4, MinIdle: 1, Used: 4, Idle: 0, Waiting: 3,
				WaitingSince: now.Add(-2500 * time.Millisecond), LongestWaitMs: 2500, WaitP95Ms: 812.5, Timeouts: 2, Created: 9,
				Clients: []pool.HolderStats{
					{ConnID: 7, ServerPID: 5101, Since: now.Add(-3 * time.Second), ClientAddr: "10.1.2.3:51000"},
					{ConnID: 9, ServerPID: 5102, Since: now.Add(-40 * time.Millisecond), ClientAddr: "10.1.2.4:40000"},
				}},
			{Name: "warehouse/etl", Database: "warehouse", User: "etl", Size: 4, Idle: 2, Created: 2, Clients: []pool.HolderStats{}},
		}
	}
}

func TestPoolsAPI(t *testing.T) {
	now := time.Now()
	mux := http.NewServeMux()
	RegisterPools(mux, "transaction", fakePools(now), fakeConns(now))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	status, _, m := call(t, "GET", srv.URL+"/api/pools")
	if status != 200 || m["mode"] != "transaction" || m["note"] != nil {
		t.Fatalf("GET /api/pools: %d %v", status, m)
	}
	pools := list(t, m, "pools")
	if len(pools) != 2 {
		t.Fatalf("%d pools, want 2", len(pools))
	}
	p := pools[0]
	for k, want := range map[string]any{"name": "shop/shop", "size": 4.0, "used": 4.0, "idle": 0.0, "waiting": 3.0,
		"longest_wait_ms": 2500.0, "wait_p95_ms": 812.5, "timeouts": 2.0, "created": 9.0, "min_idle": 1.0} {
		if p[k] != want {
			t.Errorf("%s = %v, want %v", k, p[k], want)
		}
	}
	holders := list(t, p, "clients")
	if len(holders) != 2 {
		t.Fatalf("holders %v", holders)
	}
	h := holders[0]
	if h["conn_id"] != 7.0 || h["server_pid"] != 5101.0 || h["client_addr"] != "10.1.2.3:51000" ||
		h["application"] != "storefront" || h["state"] != "idle" || h["held_ms"].(float64) < 2900 {
		t.Errorf("holder %v, want conn 7 of storefront, held about 3s", h)
	}
	if len(list(t, pools[1], "clients")) != 0 {
		t.Errorf("idle pool's holders: %v", pools[1]["clients"])
	}
	if status, _, _ := call(t, "POST", srv.URL+"/api/pools"); status != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/pools: %d", status)
	}
}

func TestPoolsAPINoneMode(t *testing.T) {
	mux := http.NewServeMux()
	RegisterPools(mux, "none", nil, nil)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	status, _, m := call(t, "GET", srv.URL+"/api/pools")
	if status != 200 || m["mode"] != "none" || m["note"] != NoPoolsNote {
		t.Fatalf("GET /api/pools: %d %v", status, m)
	}
	if pools := list(t, m, "pools"); len(pools) != 0 {
		t.Errorf("pools %v, want an empty list", pools)
	}
}
