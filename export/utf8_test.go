package export

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
)

// TestMetricsInvalidUTF8 records statements whose summary, collection,
// database, tenant and application carry bytes that are not UTF-8 (a
// SQL_ASCII database, or a query PostgreSQL then rejects): /metrics must
// still serve every series, with U+FFFD for the bad bytes.
func TestMetricsInvalidUTF8(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{Version: "1.2.3"})
	h.e.Statement(stmt(qSelect, t0, 2*time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
	bad := stmt(query("SELECT", "caf\xe9", "SELECT caf\xe9", "00000000000000aa"), t0, time.Millisecond, fingerprint.TraceContext{})
	conn := *bad.Conn
	conn.Database, conn.Application = "d\xffb", "app\xfe"
	bad.Conn = &conn
	bad.Tags = &fingerprint.Tags{Tenant: "t\xff"}
	h.e.Statement(bad, detector.Verdict{Slow: true})
	h.e.Statement(failed(stmt(query("SELECT", "caf\xe9", "SELECT caf\xe9", "00000000000000aa"), t0, time.Millisecond, fingerprint.TraceContext{}), "22021", "invalid byte sequence"), detector.Verdict{})
	h.e.Conn(wire.Event{Kind: wire.ConnAuthenticated, Time: t0, Conn: conn, ConnectDuration: time.Millisecond})

	rec := httptest.NewRecorder()
	h.e.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, body)
	}
	for _, want := range []string{
		`db_query_summary="SELECT users"`,
		`db_query_summary="SELECT caf` + "\uFFFD" + `"`,
		`db_collection_name="caf` + "\uFFFD" + `"`,
		`db_namespace="d` + "\uFFFD" + `b"`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), "\xff") || strings.Contains(string(body), "\xe9") {
		t.Errorf("/metrics carries invalid UTF-8")
	}
}
