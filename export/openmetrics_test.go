package export

import (
	"encoding/hex"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
)

// prometheusAccept is the Accept header Prometheus 3 sends with its
// default scrape_protocols (OpenMetrics first): Prometheus asks for
// OpenMetrics, and with it exemplars.
const prometheusAccept = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5," +
	"application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3," +
	"text/plain;version=0.0.4;q=0.2,*/*;q=0.1"

// TestMetricsOpenMetricsExemplars: /metrics answers a scraper that asks
// for OpenMetrics with OpenMetrics, whose duration buckets carry the trace
// id of a sampled statement as an exemplar; a scraper that does not ask
// gets the classic text format.
func TestMetricsOpenMetricsExemplars(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{})
	h.e.Statement(stmt(qSelect, t0, 2*time.Millisecond, parentTC), detector.Verdict{})
	h.e.Statement(stmt(qInsert, t0, time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
	srv := httptest.NewServer(h.e.MetricsHandler())
	defer srv.Close()

	scrape := func(accept string) (string, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /metrics (Accept %q): %d %s", accept, resp.StatusCode, body)
		}
		mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if err != nil {
			t.Fatalf("Content-Type %q: %v", resp.Header.Get("Content-Type"), err)
		}
		return mt, string(body)
	}
	// What expfmt's negotiation, which Prometheus' client library and
	// scrapers agree on, picks for an Accept header.
	negotiated := func(accept string) string {
		h := http.Header{}
		h.Set("Accept", accept)
		mt, _, _ := mime.ParseMediaType(string(expfmt.NegotiateIncludingOpenMetrics(h)))
		return mt
	}

	// As Prometheus scrapes.
	format, body := scrape(prometheusAccept)
	if format != "application/openmetrics-text" || format != negotiated(prometheusAccept) {
		t.Fatalf("Prometheus' Accept got %q, want OpenMetrics (negotiated: %q)", format, negotiated(prometheusAccept))
	}
	if !strings.HasSuffix(body, "# EOF\n") {
		t.Errorf("OpenMetrics body does not end with # EOF")
	}
	// A bucket line with an exemplar: … 1 # {span_id="…",trace_id="…"} 0.002 <timestamp>
	exemplar := regexp.MustCompile(`(?m)^db_client_operation_duration_seconds_bucket\{[^}]*db_query_summary="SELECT users"[^}]*\} \d+ # \{([^}]*)\} ([0-9.e-]+)`)
	ms := exemplar.FindAllStringSubmatch(body, -1)
	if len(ms) == 0 {
		t.Fatalf("no exemplar on the SELECT users duration buckets:\n%s", grepLines(body, "db_client_operation_duration_seconds_bucket"))
	}
	wantTrace := `trace_id="` + hex.EncodeToString(parentTC.TraceID[:]) + `"`
	for _, m := range ms {
		if !strings.Contains(m[1], wantTrace) || m[2] != "0.002" {
			t.Errorf("exemplar {%s} %s, want %s and the value 0.002", m[1], m[2], wantTrace)
		}
	}
	// Every exemplar names a real trace id.
	for _, m := range regexp.MustCompile(`trace_id="([0-9a-f]*)"`).FindAllStringSubmatch(body, -1) {
		if len(m[1]) != 32 || m[1] == strings.Repeat("0", 32) {
			t.Errorf("exemplar trace id %q is not a trace id", m[1])
		}
	}

	// A plain scrape (curl): the classic format, no exemplars.
	format, body = scrape("")
	if format != "text/plain" {
		t.Errorf("no Accept got %q, want text/plain", format)
	}
	if strings.Contains(body, " # {") || !strings.Contains(body, "db_client_operation_duration_seconds_bucket") {
		t.Errorf("text format has exemplars or lacks the histogram")
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
