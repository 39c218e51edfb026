package export

import (
	"testing"
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/fingerprint"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestSemconvStabilityOptIn: the legacy database attributes go beside the
// stable ones unless OTEL_SEMCONV_STABILITY_OPT_IN asks for the stable
// ones only.
func TestSemconvStabilityOptIn(t *testing.T) {
	legacy := []string{"db.system", "db.name", "db.statement", "db.operation"}
	for optIn, want := range map[string]bool{"": true, "database/dup": true, "http,database": false, "database": false, "database,database/dup": true} {
		t.Run(optIn, func(t *testing.T) {
			clearOTelEnv(t)
			t.Setenv("OTEL_SEMCONV_STABILITY_OPT_IN", optIn)
			h := newHarness(t, Config{})
			h.e.Statement(stmt(qSelect, t0, time.Millisecond, parentTC), detector.Verdict{})
			a := attrMap(h.spans.Ended()[0].Attributes())
			for _, k := range legacy {
				if _, ok := a[k]; ok != want {
					t.Errorf("%s present %v, want %v", k, ok, want)
				}
			}
			for _, k := range []string{"db.system.name", "db.namespace", "db.query.text", "db.operation.name"} {
				if _, ok := a[k]; !ok {
					t.Errorf("stable %s missing", k)
				}
			}
		})
	}
}

// TestSpanSemconv: client.address names the application's side, db.namespace
// is database.schema when the schema is known, a kept span whose parent was
// not sampled says so, and error messages lose their values.
func TestSpanSemconv(t *testing.T) {
	clearOTelEnv(t)
	h := newHarness(t, Config{KeepSlowSpans: true, ServiceNameFrom: ServiceFromApplicationName})
	conn := testConn
	conn.Schema = "sales"
	unsampled := parentTC
	unsampled.Flags = 0
	s := failed(stmt(qInsert, t0, time.Millisecond, unsampled), "22P02", `invalid input syntax for type integer: "4111 1111"`)
	s.Conn = &conn
	h.e.Statement(s, detector.Verdict{})
	ended := h.spans.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans, want the failed statement's, kept", len(ended))
	}
	sp := ended[0]
	a := attrMap(sp.Attributes())
	for k, v := range map[string]any{
		"client.address": "10.1.2.3", "client.port": int64(51000), "db.namespace": "shop.sales", "db.name": "shop",
		"pgtrace.keep": "error", "pgtrace.parent.sampled": false, "peer.service": "postgresql",
	} {
		if a[k] != v {
			t.Errorf("%s = %v, want %v", k, a[k], v)
		}
	}
	if _, ok := a["network.peer.address"]; ok {
		t.Errorf("network.peer.address names the client: %v", a)
	}
	if sp.SpanContext().TraceID() != sp.Parent().TraceID() || sp.Parent().SpanID() != unsampled.SpanID {
		t.Errorf("kept span not in the application's trace under its span: %v", sp.Parent())
	}
	if d := sp.Status().Description; d != `invalid input syntax for type integer: "?"` {
		t.Errorf("status %q, want the value scrubbed", d)
	}

	t.Run("raw errors", func(t *testing.T) {
		clearOTelEnv(t)
		h := newHarness(t, Config{RawErrors: true})
		h.e.Statement(failed(stmt(qInsert, t0, time.Millisecond, parentTC), "22P02", `bad: "x"`), detector.Verdict{})
		if d := h.spans.Ended()[0].Status().Description; d != `bad: "x"` {
			t.Errorf("status %q, want the message as it is", d)
		}
	})
}

// TestDurationHistograms: explicit buckets dense around the alert
// thresholds, or base-2 exponential histograms.
func TestDurationHistograms(t *testing.T) {
	for _, exp := range []bool{false, true} {
		clearOTelEnv(t)
		h := newHarness(t, Config{ExponentialHistograms: exp})
		h.e.Statement(stmt(qSelect, t0, 110*time.Millisecond, fingerprint.TraceContext{}), detector.Verdict{})
		data := h.metrics(t)["db.client.operation.duration"].Data
		switch d := data.(type) {
		case metricdata.Histogram[float64]:
			if exp {
				t.Fatalf("explicit histogram, want exponential")
			}
			b := d.DataPoints[0].Bounds
			for _, want := range []float64{0.1, 0.12, 0.8} {
				found := false
				for _, x := range b {
					found = found || x == want
				}
				if !found {
					t.Errorf("bounds %v lack %v s", b, want)
				}
			}
		case metricdata.ExponentialHistogram[float64]:
			if !exp {
				t.Fatalf("exponential histogram, want explicit buckets")
			}
			if d.DataPoints[0].Count != 1 {
				t.Errorf("count %d", d.DataPoints[0].Count)
			}
		default:
			t.Fatalf("%T", data)
		}
	}
}
