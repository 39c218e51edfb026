package export

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/pool"
	"github.com/dotmac/pgtrace/wire"
	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/trace"
)

// TestPoolMetrics: in a pooled mode the hooks record the waits, timeouts,
// server logins and uses per pool, and each collection reports the pools'
// state; the client sessions no longer count as connections, and a
// client's login to pgtrace is no connection created.
func TestPoolMetrics(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{
		Pooled: true,
		Connections: func() []wire.ConnState {
			return []wire.ConnState{{State: "idle"}, {State: "active"}} // client sessions: not the pool's
		},
	})
	shop := pool.Key{Database: "shop", User: "app"}
	crm := pool.Key{Database: "crm", User: "app"}
	hooks := h.e.PoolHooks()
	now := time.Now()
	hooks.Waited(shop, now, 0, false)
	hooks.Waited(shop, now, 2*time.Millisecond, false)
	hooks.Waited(shop, now, 3*time.Second, true)
	hooks.Created(shop, 4*time.Millisecond, nil)
	hooks.Created(crm, time.Millisecond, fmt.Errorf("log in: %w", sqlStateErr("28P01")))
	hooks.Used(shop, 50*time.Millisecond)
	hooks.Used(shop, 150*time.Millisecond)
	// A client logs in to pgtrace: no server connection is made for it.
	h.e.Conn(wire.Event{Kind: wire.ConnAuthenticated, Time: now, Conn: testConn, ConnectDuration: time.Millisecond})
	h.e.ObservePools(func() []pool.Stats {
		return []pool.Stats{
			{Name: shop.Name(), Size: 4, MinIdle: 1, Used: 3, Idle: 1, Waiting: 5},
			{Name: crm.Name(), Size: 4},
		}
	})

	m := h.metrics(t)
	hist := func(name string) map[string]metricdata.HistogramDataPoint[float64] {
		t.Helper()
		out := map[string]metricdata.HistogramDataPoint[float64]{}
		d, ok := m[name].Data.(metricdata.Histogram[float64])
		if !ok {
			t.Fatalf("%s: %T, want a histogram", name, m[name].Data)
		}
		for _, dp := range d.DataPoints {
			a := setMap(dp.Attributes)
			if a["db.system.name"] != "postgresql" {
				t.Errorf("%s: attributes %v", name, a)
			}
			out[fmt.Sprint(a["db.client.connection.pool.name"])] = dp
		}
		return out
	}
	if w := hist("db.client.connection.wait_time")["shop/app"]; w.Count != 3 || w.Sum != 3.002 {
		t.Errorf("wait_time %+v, want 3 waits, 3.002s in all", w)
	}
	ct := hist("db.client.connection.create_time")
	if len(ct) != 1 || ct["shop/app"].Count != 1 || ct["shop/app"].Sum != 0.004 {
		t.Errorf("create_time %+v, want the one server login of shop/app (not the client's login, not the failure)", ct)
	}
	if a := setMap(ct["shop/app"].Attributes); a["server.address"] != "db.internal" || a["server.port"] != int64(5432) {
		t.Errorf("create_time attributes %v, want the upstream", a)
	}
	if u := hist("db.client.connection.use_time")["shop/app"]; u.Count != 2 || u.Sum != 0.2 {
		t.Errorf("use_time %+v, want 2 uses, 0.2s", u)
	}

	sums := map[string]int64{}
	for _, name := range []string{"db.client.connection.timeouts", "db.client.connection.count", "db.client.connection.idle.max",
		"db.client.connection.idle.min", "db.client.connection.max", "db.client.connection.pending_requests", "pgtrace.connections.opened"} {
		d, ok := m[name].Data.(metricdata.Sum[int64])
		if !ok {
			t.Fatalf("%s: %T", name, m[name].Data)
		}
		for _, dp := range d.DataPoints {
			a := setMap(dp.Attributes)
			key := fmt.Sprintf("%s %v", name, a["db.client.connection.pool.name"])
			if st, ok := a["db.client.connection.state"]; ok {
				key += fmt.Sprint(" ", st)
			}
			if o, ok := a["pgtrace.auth.outcome"]; ok {
				key += fmt.Sprint(" ", o, " ", a["error.type"])
			}
			sums[key] = dp.Value
		}
	}
	want := map[string]int64{
		"db.client.connection.timeouts shop/app":   1,
		"db.client.connection.count shop/app idle": 1, "db.client.connection.count shop/app used": 3,
		"db.client.connection.count crm/app idle": 0, "db.client.connection.count crm/app used": 0,
		"db.client.connection.idle.max shop/app": 4, "db.client.connection.idle.max crm/app": 4,
		"db.client.connection.idle.min shop/app": 1, "db.client.connection.idle.min crm/app": 0,
		"db.client.connection.max shop/app": 4, "db.client.connection.max crm/app": 4,
		"db.client.connection.pending_requests shop/app": 5, "db.client.connection.pending_requests crm/app": 0,
		"pgtrace.connections.opened <nil> success <nil>": 1, "pgtrace.connections.opened <nil> failure 28P01": 1,
	}
	if diff := cmp.Diff(want, sums); diff != "" {
		t.Errorf("pool counters (-want +got):\n%s", diff)
	}

	body := scrape(t, h.e)
	for _, want := range []string{
		`db_client_connection_wait_time_seconds_bucket{`, `db_client_connection_use_time_seconds_bucket{`,
		`db_client_connection_create_time_seconds_bucket{`, `db_client_connection_timeouts_total{`,
		`db_client_connection_idle_max{`, `db_client_connection_idle_min{`, `db_client_connection_max{`,
		`db_client_connection_pending_requests{`, `db_client_connection_pool_name="shop/app"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestPoolMetricsNoneMode: without pools, db.client.connection.count
// keeps counting the client sessions, and nothing of the pools shows.
func TestPoolMetricsNoneMode(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{Connections: func() []wire.ConnState { return []wire.ConnState{{State: "idle"}} }})
	m := h.metrics(t)
	for _, name := range []string{"db.client.connection.max", "db.client.connection.pending_requests", "db.client.connection.wait_time"} {
		if _, ok := m[name]; ok {
			t.Errorf("%s reported with no pools", name)
		}
	}
	dps := m["db.client.connection.count"].Data.(metricdata.Sum[int64]).DataPoints
	for _, dp := range dps {
		if a := setMap(dp.Attributes); a["db.client.connection.pool.name"] != "db.internal:5432" {
			t.Errorf("count attributes %v, want the upstream as the pool", a)
		}
	}
}

// waited is a statement whose client waited d for a server connection,
// from start.
func waited(s *detector.Statement, start time.Time, d time.Duration) *detector.Statement {
	s.Stmt.PoolWait, s.Stmt.PoolWaitStart = d, start
	return s
}

// TestPoolWaitSpan: a wait past the threshold gets an INTERNAL
// pgtrace.pool.wait span beside the statement's (its parent's child), or
// under the statement's span when the statement is a root; every wait is
// an attribute of the statement's span. Both span paths alike.
func TestPoolWaitSpan(t *testing.T) {
	for _, path := range []string{SpanPathFast, SpanPathSDK} {
		t.Run(path, func(t *testing.T) {
			clearOTelEnv(t)
			h := newHarness(t, Config{PoolWaitSpanThreshold: time.Millisecond, SpanPath: path})
			waitStart := t0.Add(-40 * time.Millisecond)
			h.e.Statement(waited(stmt(qSelect, t0, time.Millisecond, parentTC), waitStart, 40*time.Millisecond), detector.Verdict{})
			ended := h.spans.Ended()
			if len(ended) != 2 {
				t.Fatalf("%d spans, want the statement's and the wait's", len(ended))
			}
			st, w := ended[0], ended[1]
			if st.Name() != "SELECT users" || attrMap(st.Attributes())["pgtrace.pool.wait_ms"] != 40.0 {
				t.Errorf("statement span %s attributes %v, want pgtrace.pool.wait_ms 40", st.Name(), attrMap(st.Attributes()))
			}
			if w.Name() != "pgtrace.pool.wait" || w.SpanKind() != trace.SpanKindInternal ||
				!w.StartTime().Equal(waitStart) || !w.EndTime().Equal(waitStart.Add(40*time.Millisecond)) {
				t.Errorf("wait span %s %v %v…%v", w.Name(), w.SpanKind(), w.StartTime(), w.EndTime())
			}
			if w.Parent().SpanID() != st.Parent().SpanID() || w.SpanContext().TraceID() != st.SpanContext().TraceID() ||
				w.Parent().SpanID() != parentTC.SpanID {
				t.Errorf("wait span parent %v, want the statement's parent %v", w.Parent(), st.Parent())
			}
			want := map[string]any{"db.system.name": "postgresql", "db.client.connection.pool.name": "shop/app",
				"pgtrace.connection.id": int64(7), "pgtrace.application": "api"}
			if diff := cmp.Diff(want, attrMap(w.Attributes())); diff != "" {
				t.Errorf("wait span attributes (-want +got):\n%s", diff)
			}

			// A root statement: the wait goes under its span.
			h.e.Statement(waited(stmt(qSelect, t0.Add(time.Second), time.Millisecond, fingerprint.TraceContext{}),
				t0.Add(time.Second-5*time.Millisecond), 5*time.Millisecond), detector.Verdict{})
			ended = h.spans.Ended()[2:]
			if len(ended) != 2 || ended[1].Parent().SpanID() != ended[0].SpanContext().SpanID() ||
				ended[1].SpanContext().TraceID() != ended[0].SpanContext().TraceID() {
				t.Errorf("root statement's wait: %d spans, want the wait under the statement", len(ended))
			}

			// Under the threshold: the attribute, no span.
			h.e.Statement(waited(stmt(qSelect, t0.Add(2*time.Second), time.Millisecond, parentTC),
				t0.Add(2*time.Second-500*time.Microsecond), 500*time.Microsecond), detector.Verdict{})
			ended = h.spans.Ended()[4:]
			if len(ended) != 1 || attrMap(ended[0].Attributes())["pgtrace.pool.wait_ms"] != 0.5 {
				t.Errorf("a short wait: %d spans, want the statement's with pgtrace.pool.wait_ms 0.5", len(ended))
			}
			// No wait: neither.
			h.e.Statement(stmt(qSelect, t0.Add(3*time.Second), time.Millisecond, parentTC), detector.Verdict{})
			ended = h.spans.Ended()[5:]
			if _, ok := attrMap(ended[0].Attributes())["pgtrace.pool.wait_ms"]; len(ended) != 1 || ok {
				t.Errorf("no wait: %d spans, attributes %v", len(ended), attrMap(ended[0].Attributes()))
			}
		})
	}
}

// TestPoolWaitSpanSampling: the wait span is sampled as its statement is:
// dropped with it under an unsampled parent, kept with it when the
// statement is kept (failed) anyway.
func TestPoolWaitSpanSampling(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{KeepSlowSpans: true})
	unsampled := parentTC
	unsampled.Flags = 0
	h.e.Statement(waited(stmt(qSelect, t0, time.Millisecond, unsampled), t0.Add(-time.Second), time.Second), detector.Verdict{})
	if n := len(h.spans.Ended()); n != 0 {
		t.Errorf("%d spans under an unsampled parent, want none", n)
	}
	h.e.Statement(waited(failed(stmt(qInsert, t0, time.Millisecond, unsampled), "23505", "duplicate key"), t0.Add(-time.Second), time.Second),
		detector.Verdict{})
	ended := h.spans.Ended()
	if len(ended) != 2 || ended[1].Name() != "pgtrace.pool.wait" {
		t.Fatalf("%d spans, want the kept statement's and its wait", len(ended))
	}
	if a := attrMap(ended[1].Attributes()); a["pgtrace.keep"] != "error" || a["pgtrace.parent.sampled"] != false {
		t.Errorf("kept wait span attributes %v", a)
	}
}
