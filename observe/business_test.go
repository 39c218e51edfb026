package observe_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/dotmac/pgtrace/observe"
)

func TestBusinessMetrics(t *testing.T) {
	tel := newTelemetry(t)
	b := observe.NewBusinessMetrics(tel.options(observe.WithCardinalityLimit(2))...)
	ctx, span := tel.tp.Tracer("test").Start(context.Background(), "request")

	b.RecordPartnerSignup(ctx, observe.PartnerSignup{PartnerID: "p1", Tier: "gold", Territory: "emea", Source: "referral"})
	b.RecordCustomerAcquisition(ctx, observe.CustomerAcquisition{PartnerID: "p1", CustomerID: "c1", Plan: "pro", MRR: 99})
	b.RecordCommission(ctx, observe.Commission{PartnerID: "p2", CustomerID: "c1", Base: 1000, Rate: 0.1, Amount: 100})
	b.RecordCommission(ctx, observe.Commission{PartnerID: "p3", Base: 10, Rate: 0.5, Amount: 5})
	b.RecordRevenue(ctx, observe.RevenueAttribution{PartnerID: "p1", Source: "subscription", Amount: 250.5})
	b.RecordLifecycleEvent(ctx, observe.LifecycleEvent{PartnerID: "p1", CustomerID: "c1", Event: "activated"})
	b.RecordSLAViolation(ctx, observe.SLAViolation{PartnerID: "p2", Metric: "response_time", Severity: "critical", Threshold: 0.5, Actual: 1.2})
	span.End()

	rm := tel.collect(t)
	units := map[string]string{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != observe.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			units[m.Name] = m.Unit
		}
	}
	wantUnits := map[string]string{
		"dotmac.partner.signups":           "{signup}",
		"dotmac.customer.acquisitions":     "{customer}",
		"dotmac.customer.mrr":              "{USD}",
		"dotmac.customer.lifecycle_events": "{event}",
		"dotmac.commission.amount":         "{USD}",
		"dotmac.revenue.attributed":        "{USD}",
		"dotmac.sla.violations":            "{violation}",
	}
	if diff := cmp.Diff(wantUnits, units); diff != "" {
		t.Errorf("instruments and units (-want +got):\n%s", diff)
	}

	if diff := cmp.Diff(map[string]int64{"partner.source=referral,partner.territory=emea,partner.tier=gold": 1},
		int64Sums(t, findMetric(t, rm, observe.PartnerSignupsMetric))); diff != "" {
		t.Errorf("signups (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int64{"partner.id=p2,sla.metric=response_time,sla.severity=critical": 1},
		int64Sums(t, findMetric(t, rm, observe.SLAViolationsMetric))); diff != "" {
		t.Errorf("sla (-want +got):\n%s", diff)
	}
	// Limit 2: p1 and p2 keep their series, p3 overflows.
	hist := findMetric(t, rm, observe.CommissionAmountMetric).Data.(metricdata.Histogram[float64])
	got := map[string]float64{}
	for _, dp := range hist.DataPoints {
		got[dp.Attributes.Encoded(attribute.DefaultEncoder())] = dp.Sum
	}
	if diff := cmp.Diff(map[string]float64{"partner.id=p2": 100, "partner.id=_other": 5}, got); diff != "" {
		t.Errorf("commission sums (-want +got):\n%s", diff)
	}
	rev := findMetric(t, rm, observe.RevenueAttributedMetric).Data.(metricdata.Sum[float64])
	if len(rev.DataPoints) != 1 || rev.DataPoints[0].Value != 250.5 {
		t.Errorf("revenue %+v", rev.DataPoints)
	}

	// The span has the (last) partner id and an event per record.
	s := tel.spans.Ended()[0]
	if v, _ := spanAttr(s, observe.PartnerIDKey); v.AsString() != "p2" {
		t.Errorf("span partner.id %q", v.AsString())
	}
	var events []string
	for _, e := range s.Events() {
		events = append(events, e.Name)
	}
	wantEvents := []string{
		"dotmac.partner.signups", "dotmac.customer.acquisitions", "dotmac.commission.amount",
		"dotmac.commission.amount", "dotmac.revenue.attributed", "dotmac.customer.lifecycle_events",
		"dotmac.sla.violations",
	}
	if diff := cmp.Diff(wantEvents, events); diff != "" {
		t.Errorf("span events (-want +got):\n%s", diff)
	}
}
