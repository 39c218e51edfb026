package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/dotmac/pgtrace/admin"
	"github.com/dotmac/pgtrace/internal/otlptest"
	"github.com/dotmac/pgtrace/internal/pgtest"
)

// poolsAnswer is /api/pools.
type poolsAnswer struct {
	Mode  string `json:"mode"`
	Note  string `json:"note"`
	Pools []struct {
		Name          string  `json:"name"`
		Size          int     `json:"size"`
		Used          int     `json:"used"`
		Idle          int     `json:"idle"`
		Waiting       int     `json:"waiting"`
		LongestWaitMs float64 `json:"longest_wait_ms"`
		WaitP95Ms     float64 `json:"wait_p95_ms"`
		Timeouts      int     `json:"timeouts"`
		Created       int     `json:"created"`
		Clients       []struct {
			ConnID     uint64  `json:"conn_id"`
			ServerPID  uint32  `json:"server_pid"`
			ClientAddr string  `json:"client_addr"`
			State      string  `json:"state"`
			HeldMs     float64 `json:"held_ms"`
		} `json:"clients"`
	} `json:"pools"`
}

func getPools(t *testing.T, adminAddr string) poolsAnswer {
	t.Helper()
	code, body := httpGet(t, "http://"+adminAddr+"/api/pools")
	var a poolsAnswer
	if err := json.Unmarshal([]byte(body), &a); code != 200 || err != nil {
		t.Fatalf("GET /api/pools: %d %v\n%s", code, err, body)
	}
	return a
}

// findingsOf is /api/findings?type=typ.
func findingsOf(t *testing.T, adminAddr, typ string) []map[string]any {
	t.Helper()
	code, body := httpGet(t, "http://"+adminAddr+"/api/findings?type="+typ)
	var a struct {
		Findings []map[string]any `json:"findings"`
	}
	if err := json.Unmarshal([]byte(body), &a); code != 200 || err != nil {
		t.Fatalf("GET /api/findings?type=%s: %d %v\n%s", typ, code, err, body)
	}
	return a.Findings
}

// waitFindings polls /api/findings?type=typ until it lists n findings or
// ten seconds pass, and returns the last answer: statements reach the
// detector through the relay's event queue, after the client had its
// answer.
func waitFindings(t *testing.T, adminAddr, typ string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fs := findingsOf(t, adminAddr, typ)
		if len(fs) >= n || time.Now().After(deadline) {
			return fs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pointsOf returns the attributes of an OTLP metric's data points and
// their values (the count for a histogram), by data point.
func pointsOf(m otlptest.Metric) []map[string]any {
	var out []map[string]any
	add := func(attrs map[string]any, v any) {
		attrs["_value"] = v
		out = append(out, attrs)
	}
	switch d := m.GetData().(type) {
	case *metricpb.Metric_Sum:
		for _, dp := range d.Sum.GetDataPoints() {
			add(otlptest.Attrs(dp.GetAttributes()), dp.GetAsInt())
		}
	case *metricpb.Metric_Gauge:
		for _, dp := range d.Gauge.GetDataPoints() {
			add(otlptest.Attrs(dp.GetAttributes()), dp.GetAsInt())
		}
	case *metricpb.Metric_Histogram:
		for _, dp := range d.Histogram.GetDataPoints() {
			a := otlptest.Attrs(dp.GetAttributes())
			a["_sum"] = dp.GetSum()
			add(a, int64(dp.GetCount()))
		}
	}
	return out
}

// TestPoolObservability runs the command in transaction mode with one
// server connection and an in-process OTLP receiver. A client holding a
// transaction makes another wait: /api/pools shows the waiter and the
// holder, the wait becomes a pgtrace.pool.wait span under the waiting
// statement's parent, the pool metrics reach the receiver and /metrics,
// and the pool_exhausted finding is made. A client that waits past
// --pool-max-wait is a timeout; session-level features make
// session_state_in_transaction_pool findings; a client killed inside a
// transaction makes the pool open a connection again, pool_churn.
func TestPoolObservability(t *testing.T) {
	pg := pgtest.Managed(t)
	rcv := otlptest.Start(t)
	otlpTestEnv(t, rcv.Endpoint(), "grpc")
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(authFile, []byte(fmt.Sprintf("%q %q\n", pg.User, pg.Password)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startPgtrace(t, "--upstream", pg.Addr(), "--pool-mode", "transaction", "--pool-size", "1",
		"--pool-max-wait", "4s", "--pool-exhausted-threshold", "500ms", "--auth-file", authFile, "--slow-query-threshold", "1h")
	listen, adminAddr := p.ready.str("listen"), p.ready.str("admin")
	poolName := pg.Database + "/" + pg.User
	ctx := context.Background()
	connect := func() *pgx.Conn {
		t.Helper()
		c, err := pgx.Connect(ctx, pgtest.DSNAt(listen, pg.User, pg.Password, pg.Database))
		if err != nil {
			t.Fatalf("connect through pgtrace: %v", err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}

	// One client holds the server connection in a transaction; another
	// waits for it, under a trace of its own.
	holder, waiter := connect(), connect()
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	var ids [24]byte
	rand.Read(ids[:])
	traceID, parentID := hex.EncodeToString(ids[:16]), hex.EncodeToString(ids[16:])
	done := make(chan error, 1)
	asked := time.Now()
	go func() {
		_, err := waiter.Exec(ctx, "SELECT 2 /*traceparent='00-"+traceID+"-"+parentID+"-01'*/", pgx.QueryExecModeSimpleProtocol)
		done <- err
	}()
	// A tick (every second) sees the client waiting past the threshold:
	// the finding is made before the wait ends.
	time.Sleep(1200 * time.Millisecond)
	var exhausted []map[string]any
	for time.Since(asked) < 3*time.Second {
		if exhausted = findingsOf(t, adminAddr, "pool_exhausted"); len(exhausted) > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(exhausted) != 1 || !strings.Contains(exhausted[0]["detail"].(string), "pool "+poolName) {
		t.Errorf("pool_exhausted while the client waits: %v", exhausted)
	}
	a := getPools(t, adminAddr)
	if a.Mode != "transaction" || len(a.Pools) != 1 {
		t.Fatalf("/api/pools while a client waits: %+v", a)
	}
	pl := a.Pools[0]
	if pl.Name != poolName || pl.Size != 1 || pl.Used != 1 || pl.Waiting != 1 || pl.LongestWaitMs < 1000 ||
		len(pl.Clients) != 1 || pl.Clients[0].ServerPID == 0 || pl.Clients[0].State != "idle in transaction" || pl.Clients[0].HeldMs < 1000 {
		t.Errorf("/api/pools while a client waits: %+v", pl)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the waiting client: %v", err)
	}

	// The wait span beside the statement's, under the application's span.
	spans := rcv.WaitSpans(t, 20*time.Second, 2, func(s otlptest.Span) bool {
		return s.TraceID() == traceID && s.ParentSpanID() == parentID
	})
	var wait, stmt *otlptest.Span
	for i := range spans {
		switch spans[i].GetName() {
		case "pgtrace.pool.wait":
			wait = &spans[i]
		case "SELECT":
			stmt = &spans[i]
		}
	}
	if wait == nil || stmt == nil {
		t.Fatalf("spans under the parent: %v", spans)
	}
	if d := time.Duration(wait.GetEndTimeUnixNano() - wait.GetStartTimeUnixNano()); wait.GetKind() != tracepb.Span_SPAN_KIND_INTERNAL || d < 1100*time.Millisecond {
		t.Errorf("wait span %v lasting %v, want INTERNAL and over 1.2s", wait.GetKind(), d)
	}
	if name, _ := otlptest.Attr(wait.GetAttributes(), "db.client.connection.pool.name"); name != poolName {
		t.Errorf("wait span pool %v, want %s", name, poolName)
	}
	if ms, _ := otlptest.Attr(stmt.GetAttributes(), "pgtrace.pool.wait_ms"); ms == nil || ms.(float64) < 1100 {
		t.Errorf("statement span pgtrace.pool.wait_ms = %v, want over 1200", ms)
	}

	// Past --pool-max-wait: 53300, a timeout.
	tx, err = holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	late := connect()
	_, err = late.Exec(ctx, "SELECT 3")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Errorf("past --pool-max-wait: %v, want 53300", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if a := getPools(t, adminAddr); a.Pools[0].Timeouts != 1 || a.Pools[0].Waiting != 0 {
		t.Errorf("/api/pools after the timeout: %+v", a.Pools[0])
	}
	fs := findingsOf(t, adminAddr, "pool_exhausted")
	if len(fs) != 1 || fs[0]["count"] != 2.0 || !strings.Contains(fs[0]["detail"].(string), "1 gave up") {
		t.Errorf("pool_exhausted: %v, want one episode of two clients, one of which gave up", fs)
	}

	// Session-level features in transaction mode; what works is left out.
	user := connect()
	for _, q := range []string{
		"SET search_path TO public", "SELECT pg_advisory_lock(4242)", "SELECT pg_advisory_unlock(4242)",
		"SET application_name = 'reports'", "BEGIN", "SELECT pg_advisory_xact_lock(1)", "SET LOCAL work_mem = '8MB'", "COMMIT",
	} {
		if _, err := user.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var session []string
	for _, f := range waitFindings(t, adminAddr, "session_state_in_transaction_pool", 2) {
		session = append(session, f["query"].(string))
		if f["fingerprint"] == "" || !strings.Contains(f["detail"].(string), "transaction pool mode") {
			t.Errorf("finding %v", f)
		}
	}
	if len(session) != 2 || !strings.Contains(strings.Join(session, "|"), "SET search_path") ||
		!strings.Contains(strings.Join(session, "|"), "pg_advisory_lock(") {
		t.Errorf("session_state_in_transaction_pool for %q, want SET search_path and pg_advisory_lock", session)
	}

	// A client killed in a transaction: its server connection is closed,
	// the next client gets a new one, the second opened within a minute
	// for a pool of one.
	raw, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	pcfg, _ := pgconn.ParseConfig(pgtest.DSNAt(listen, pg.User, pg.Password, pg.Database))
	pcfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return raw, nil }
	victim, err := pgconn.ConnectConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if _, err := connect().Exec(ctx, "SELECT 4"); err != nil {
		t.Fatal(err)
	}
	if fs := waitFindings(t, adminAddr, "pool_churn", 1); len(fs) != 1 || !strings.Contains(fs[0]["detail"].(string), "broken 1") {
		t.Errorf("pool_churn: %v, want one naming the broken connection", fs)
	}
	// Each finding is logged once it is in the ring (from the pool's
	// hook, or the dispatcher).
	for _, typ := range []string{"pool_exhausted", "pool_churn", "session_state_in_transaction_pool"} {
		logged := func() bool {
			for _, r := range p.logs.find("finding") {
				if r.str("type") == typ {
					return true
				}
			}
			return false
		}
		deadline := time.Now().Add(5 * time.Second)
		for !logged() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !logged() {
			t.Errorf("no finding log line of type %s", typ)
		}
	}
	created := getPools(t, adminAddr).Pools[0].Created
	if created < 2 {
		t.Errorf("the pool opened %d server connections, want 2", created)
	}

	// The pool metrics over OTLP, by pool.
	ofPool := func(m otlptest.Metric, match func(map[string]any) bool) bool {
		for _, a := range pointsOf(m) {
			if a["db.client.connection.pool.name"] == poolName && match(a) {
				return true
			}
		}
		return false
	}
	wait20 := 20 * time.Second
	rcv.WaitMetric(t, wait20, "db.client.connection.wait_time", func(m otlptest.Metric) bool {
		return ofPool(m, func(a map[string]any) bool { return a["_value"].(int64) >= 3 && a["_sum"].(float64) >= 5 })
	})
	rcv.WaitMetric(t, wait20, "db.client.connection.timeouts", func(m otlptest.Metric) bool {
		return ofPool(m, func(a map[string]any) bool { return a["_value"] == int64(1) })
	})
	rcv.WaitMetric(t, wait20, "db.client.connection.create_time", func(m otlptest.Metric) bool {
		return ofPool(m, func(a map[string]any) bool { return a["_value"] == int64(created) })
	})
	rcv.WaitMetric(t, wait20, "db.client.connection.use_time", func(m otlptest.Metric) bool {
		return ofPool(m, func(a map[string]any) bool { return a["_value"].(int64) >= 3 })
	})
	for name, want := range map[string]int64{"db.client.connection.max": 1, "db.client.connection.idle.max": 1,
		"db.client.connection.idle.min": 0, "db.client.connection.pending_requests": 0} {
		rcv.WaitMetric(t, wait20, name, func(m otlptest.Metric) bool {
			return ofPool(m, func(a map[string]any) bool { return a["_value"] == want })
		})
	}
	rcv.WaitMetric(t, wait20, "db.client.connection.count", func(m otlptest.Metric) bool {
		return ofPool(m, func(a map[string]any) bool {
			return a["db.client.connection.state"] == "idle" && a["_value"] == int64(1)
		}) &&
			ofPool(m, func(a map[string]any) bool {
				return a["db.client.connection.state"] == "used" && a["_value"] == int64(0)
			})
	})
	rcv.WaitMetric(t, wait20, "pgtrace.findings", func(m otlptest.Metric) bool {
		seen := map[any]bool{}
		for _, a := range pointsOf(m) {
			seen[a["pgtrace.finding.type"]] = true
		}
		return seen["pool_exhausted"] && seen["pool_churn"] && seen["session_state_in_transaction_pool"]
	})

	// And on /metrics, under their Prometheus names.
	code, body := httpGet(t, "http://"+adminAddr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	label := `db_client_connection_pool_name="` + poolName + `"`
	for _, family := range []string{"db_client_connection_wait_time_seconds_bucket", "db_client_connection_use_time_seconds_count",
		"db_client_connection_create_time_seconds_count", "db_client_connection_timeouts_total", "db_client_connection_count",
		"db_client_connection_max", "db_client_connection_idle_max", "db_client_connection_idle_min",
		"db_client_connection_pending_requests"} {
		found := false
		for _, line := range strings.Split(body, "\n") {
			found = found || strings.HasPrefix(line, family+"{") && strings.Contains(line, label)
		}
		if !found {
			t.Errorf("/metrics has no %s for pool %s", family, poolName)
		}
	}
	if !strings.Contains(body, `pgtrace_finding_type="pool_exhausted"`) {
		t.Errorf("/metrics does not count pool_exhausted in pgtrace_findings_total")
	}
}

// TestPoolsAPINoneMode: without pools, /api/pools says so.
func TestPoolsAPINoneMode(t *testing.T) {
	pg := pgtest.Start(t)
	p := startPgtrace(t, "--upstream", pg.Addr())
	a := getPools(t, p.ready.str("admin"))
	if a.Mode != "none" || len(a.Pools) != 0 || a.Note != admin.NoPoolsNote {
		t.Errorf("/api/pools with --pool-mode none: %+v", a)
	}
}
