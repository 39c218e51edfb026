package export

import (
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func serviceOf(s sdktrace.ReadOnlySpan) string {
	v, _ := s.Resource().Set().Value("service.name")
	return v.AsString()
}

// TestServicePerApplication: statement and transaction spans go under a
// resource named for the client application, by ServiceNameFrom; connect
// spans stay pgtrace's; past MaxApplications, applications share "other";
// metrics name the application.
func TestServicePerApplication(t *testing.T) {
	none := fingerprint.TraceContext{}
	tests := []struct {
		from string
		// the service of a statement of a session with application_name
		// appName and a sqlcommenter tag application=tag (or db_driver=
		// driver)
		appName, tag, driver string
		want                 string
	}{
		{ServiceFromApplicationName, "billing", "web", "", "billing"},
		{ServiceFromApplicationName, "", "web", "", "web"},
		{ServiceFromApplicationName, "", "", "pgx", "pgx"},
		{ServiceFromApplicationName, "", "", "", "pgtrace"},
		{ServiceFromSQLCommenter, "billing", "web", "", "web"},
		{ServiceFromSQLCommenter, "billing", "", "", "billing"},
		{ServiceFromNone, "billing", "web", "", "pgtrace"},
	}
	for _, tt := range tests {
		t.Run(tt.from+"/"+tt.appName+"/"+tt.tag+"/"+tt.driver, func(t *testing.T) {
			clearOTelEnv(t)
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging")
			h := newHarness(t, Config{ServiceNameFrom: tt.from, Version: "9.9.9"})
			conn := testConn
			conn.Application = tt.appName
			s := stmt(qSelect, t0, time.Millisecond, parentTC)
			s.Conn = &conn
			s.Tags = &fingerprint.Tags{Application: tt.tag, DBDriver: tt.driver}
			h.e.Statement(s, detector.Verdict{})
			ended := h.spans.Ended()
			if len(ended) != 1 {
				t.Fatalf("%d spans", len(ended))
			}
			if got := serviceOf(ended[0]); got != tt.want {
				t.Errorf("service.name = %q, want %q", got, tt.want)
			}
			res := ended[0].Resource().Set()
			if env, _ := res.Value("deployment.environment.name"); env.AsString() != "staging" {
				t.Errorf("the application's resource lost OTEL_RESOURCE_ATTRIBUTES: %v", res)
			}
			if tt.want != "pgtrace" {
				if d, _ := res.Value("telemetry.distro.name"); d.AsString() != "pgtrace" {
					t.Errorf("telemetry.distro.name = %q, want pgtrace", d.AsString())
				}
				if v, ok := res.Value("service.version"); ok {
					t.Errorf("the application's resource has pgtrace's service.version %q", v.AsString())
				}
			}
		})
	}

	t.Run("transactions, connects, the bound and the metrics", func(t *testing.T) {
		clearOTelEnv(t)
		h := newHarness(t, Config{ServiceNameFrom: ServiceFromApplicationName, MaxApplications: 2})
		for i, app := range []string{"billing", "shipping", "reports", "audit"} {
			conn := testConn
			conn.ID, conn.Application = uint64(10+i), app
			h.e.Conn(wire.Event{Kind: wire.ConnAuthenticated, Time: t0, Conn: conn, ConnectDuration: time.Millisecond})
			begin := stmt(qBegin, t0, time.Millisecond, none)
			sel := stmt(qSelect, t0.Add(2*time.Millisecond), time.Millisecond, parentTC)
			commit := stmt(qCommit, t0.Add(4*time.Millisecond), time.Millisecond, none)
			for _, s := range []*detector.Statement{begin, sel, commit} {
				s.Conn = &conn
				if s != commit {
					s.Stmt.TxStatus = wire.TxInBlock
				}
				h.e.Statement(s, detector.Verdict{})
			}
		}
		byService := map[string]map[string]int{}
		for _, s := range h.spans.Ended() {
			svc := serviceOf(s)
			if byService[svc] == nil {
				byService[svc] = map[string]int{}
			}
			byService[svc][s.Name()]++
		}
		want := map[string]map[string]int{
			"pgtrace":  {"connect": 4},
			"billing":  {"transaction": 1, "BEGIN": 1, "SELECT users": 1, "COMMIT": 1},
			"shipping": {"transaction": 1, "BEGIN": 1, "SELECT users": 1, "COMMIT": 1},
			"other":    {"transaction": 2, "BEGIN": 2, "SELECT users": 2, "COMMIT": 2},
		}
		for svc, names := range want {
			for n, c := range names {
				if byService[svc][n] != c {
					t.Errorf("%s: %d %q spans, want %d (all: %v)", svc, byService[svc][n], n, c, byService)
				}
			}
		}
		apps := map[string]uint64{}
		for _, dp := range h.metrics(t)["db.client.operation.duration"].Data.(metricdata.Histogram[float64]).DataPoints {
			a := setMap(dp.Attributes)
			if a["db.query.summary"] == "SELECT users" {
				apps[a["pgtrace.application"].(string)] += dp.Count
			}
		}
		if apps["billing"] != 1 || apps["shipping"] != 1 || apps["other"] != 2 || len(apps) != 3 {
			t.Errorf("SELECT users by pgtrace.application: %v, want billing 1, shipping 1, other 2", apps)
		}
	})
}
