package observe

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
)

// Names of the business instruments, after the guide's
// dotmac.{domain}.{metric}.
const (
	PartnerSignupsMetric       = "dotmac.partner.signups"
	CustomerAcquisitionsMetric = "dotmac.customer.acquisitions"
	CustomerMRRMetric          = "dotmac.customer.mrr"
	CustomerLifecycleMetric    = "dotmac.customer.lifecycle_events"
	CommissionAmountMetric     = "dotmac.commission.amount"
	RevenueAttributedMetric    = "dotmac.revenue.attributed"
	SLAViolationsMetric        = "dotmac.sla.violations"
)

// Attribute keys of the business metrics and span events, besides
// PartnerIDKey.
const (
	CustomerIDKey       = attribute.Key("customer.id")
	CustomerPlanKey     = attribute.Key("customer.plan")
	CustomerMRRKey      = attribute.Key("customer.mrr")
	LifecycleEventKey   = attribute.Key("customer.lifecycle.event")
	PartnerTierKey      = attribute.Key("partner.tier")
	PartnerTerritoryKey = attribute.Key("partner.territory")
	PartnerSourceKey    = attribute.Key("partner.source")
	CommissionAmountKey = attribute.Key("commission.amount")
	CommissionBaseKey   = attribute.Key("commission.base")
	CommissionRateKey   = attribute.Key("commission.rate")
	RevenueSourceKey    = attribute.Key("revenue.source")
	RevenueAmountKey    = attribute.Key("revenue.amount")
	SLAMetricKey        = attribute.Key("sla.metric")
	SLASeverityKey      = attribute.Key("sla.severity")
	SLAThresholdKey     = attribute.Key("sla.threshold")
	SLAActualKey        = attribute.Key("sla.actual")
	CurrencyKey         = attribute.Key("currency")
)

// PartnerSignup is a partner joining the program.
type PartnerSignup struct {
	PartnerID string
	Tier      string // e.g. "gold"
	Territory string // e.g. "emea"
	Source    string // e.g. "referral"
}

// CustomerAcquisition is a partner bringing in a customer.
type CustomerAcquisition struct {
	PartnerID  string
	CustomerID string
	Plan       string
	MRR        float64 // monthly recurring revenue, in the recorder's currency
}

// Commission is a commission calculated for a partner: Amount = Base × Rate.
type Commission struct {
	PartnerID  string
	CustomerID string
	Base       float64
	Rate       float64
	Amount     float64
}

// RevenueAttribution is revenue attributed to a partner.
type RevenueAttribution struct {
	PartnerID  string
	CustomerID string
	Source     string // e.g. "subscription", "one_time"
	Amount     float64
}

// LifecycleEvent is a customer moving through its lifecycle.
type LifecycleEvent struct {
	PartnerID  string
	CustomerID string
	Event      string // e.g. "activated", "upgraded", "churned"
}

// SLAViolation is a service level missed for a partner or its customers.
type SLAViolation struct {
	PartnerID string
	Metric    string // e.g. "response_time", "uptime"
	Severity  string // e.g. "warning", "critical"
	Threshold float64
	Actual    float64
}

// BusinessMetrics records the guide's business events as metrics, and as
// events on the current span, which also gets partner.id. On metrics the
// partner id is bounded by WithCardinalityLimit (later ids become
// OverflowValue); the customer id is never a metric attribute. Monetary
// instruments have the unit "{USD}" (see WithCurrency).
//
// A BusinessMetrics is safe for concurrent use. A failure to create an
// instrument is reported to otel.Handle and its recordings are dropped.
type BusinessMetrics struct {
	partners *limiter
	currency attribute.KeyValue

	signups      metric.Int64Counter
	acquisitions metric.Int64Counter
	mrr          metric.Float64Histogram
	lifecycle    metric.Int64Counter
	commission   metric.Float64Histogram
	revenue      metric.Float64Counter
	sla          metric.Int64Counter
}

// NewBusinessMetrics creates the business instruments with the meter
// provider of the options (the global one by default).
func NewBusinessMetrics(opts ...Option) *BusinessMetrics {
	c := newConfig(opts...)
	m := c.meter()
	money := "{" + c.Currency + "}"
	b := &BusinessMetrics{
		partners: newLimiter(PartnerIDKey, c.CardinalityLimit),
		currency: CurrencyKey.String(c.Currency),
	}
	var err error
	b.signups, err = m.Int64Counter(PartnerSignupsMetric, metric.WithUnit("{signup}"),
		metric.WithDescription("Partners signed up, by tier, territory and source."))
	b.signups = orNoop[metric.Int64Counter](b.signups, err, noop.Int64Counter{})
	b.acquisitions, err = m.Int64Counter(CustomerAcquisitionsMetric, metric.WithUnit("{customer}"),
		metric.WithDescription("Customers acquired, by partner and plan."))
	b.acquisitions = orNoop[metric.Int64Counter](b.acquisitions, err, noop.Int64Counter{})
	b.mrr, err = m.Float64Histogram(CustomerMRRMetric, metric.WithUnit(money),
		metric.WithDescription("Monthly recurring revenue of acquired customers, by partner and plan."))
	b.mrr = orNoop[metric.Float64Histogram](b.mrr, err, noop.Float64Histogram{})
	b.lifecycle, err = m.Int64Counter(CustomerLifecycleMetric, metric.WithUnit("{event}"),
		metric.WithDescription("Customer lifecycle events, by event and partner."))
	b.lifecycle = orNoop[metric.Int64Counter](b.lifecycle, err, noop.Int64Counter{})
	b.commission, err = m.Float64Histogram(CommissionAmountMetric, metric.WithUnit(money),
		metric.WithDescription("Commissions calculated, by partner."))
	b.commission = orNoop[metric.Float64Histogram](b.commission, err, noop.Float64Histogram{})
	b.revenue, err = m.Float64Counter(RevenueAttributedMetric, metric.WithUnit(money),
		metric.WithDescription("Revenue attributed to partners, by partner and source."))
	b.revenue = orNoop[metric.Float64Counter](b.revenue, err, noop.Float64Counter{})
	b.sla, err = m.Int64Counter(SLAViolationsMetric, metric.WithUnit("{violation}"),
		metric.WithDescription("SLA violations, by metric, severity and partner."))
	b.sla = orNoop[metric.Int64Counter](b.sla, err, noop.Int64Counter{})
	return b
}

// orNoop reports err to otel.Handle and returns inst, or fallback when the
// meter returned no instrument: a failure to create an instrument never
// breaks the host.
func orNoop[T any](inst T, err error, fallback T) T {
	if err != nil {
		otel.Handle(err)
	}
	if any(inst) == nil {
		return fallback
	}
	return inst
}

// annotate puts partner.id on the current span and adds an event.
func annotate(ctx context.Context, partnerID, event string, attrs ...attribute.KeyValue) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	if partnerID != "" {
		span.SetAttributes(PartnerIDKey.String(partnerID))
		attrs = append(attrs, PartnerIDKey.String(partnerID))
	}
	span.AddEvent(event, trace.WithAttributes(attrs...))
}

func (b *BusinessMetrics) partner(id string) attribute.KeyValue {
	return b.partners.attr(id)
}

// RecordPartnerSignup counts a signup in dotmac.partner.signups.
func (b *BusinessMetrics) RecordPartnerSignup(ctx context.Context, s PartnerSignup) {
	attrs := []attribute.KeyValue{
		PartnerTierKey.String(s.Tier),
		PartnerTerritoryKey.String(s.Territory),
		PartnerSourceKey.String(s.Source),
	}
	annotate(ctx, s.PartnerID, PartnerSignupsMetric, attrs...)
	b.signups.Add(ctx, 1, metric.WithAttributes(attrs...))
}

// RecordCustomerAcquisition counts the customer in
// dotmac.customer.acquisitions and its MRR in dotmac.customer.mrr.
func (b *BusinessMetrics) RecordCustomerAcquisition(ctx context.Context, a CustomerAcquisition) {
	annotate(ctx, a.PartnerID, CustomerAcquisitionsMetric,
		CustomerIDKey.String(a.CustomerID), CustomerPlanKey.String(a.Plan), CustomerMRRKey.Float64(a.MRR))
	set := metric.WithAttributes(b.partner(a.PartnerID), CustomerPlanKey.String(a.Plan))
	b.acquisitions.Add(ctx, 1, set)
	b.mrr.Record(ctx, a.MRR, set)
}

// RecordCommission records the amount in dotmac.commission.amount; base and
// rate go on the span event.
func (b *BusinessMetrics) RecordCommission(ctx context.Context, c Commission) {
	annotate(ctx, c.PartnerID, CommissionAmountMetric,
		CustomerIDKey.String(c.CustomerID), CommissionAmountKey.Float64(c.Amount),
		CommissionBaseKey.Float64(c.Base), CommissionRateKey.Float64(c.Rate), b.currency)
	b.commission.Record(ctx, c.Amount, metric.WithAttributes(b.partner(c.PartnerID)))
}

// RecordRevenue adds the amount to dotmac.revenue.attributed.
func (b *BusinessMetrics) RecordRevenue(ctx context.Context, r RevenueAttribution) {
	annotate(ctx, r.PartnerID, RevenueAttributedMetric,
		CustomerIDKey.String(r.CustomerID), RevenueSourceKey.String(r.Source),
		RevenueAmountKey.Float64(r.Amount), b.currency)
	b.revenue.Add(ctx, r.Amount, metric.WithAttributes(b.partner(r.PartnerID), RevenueSourceKey.String(r.Source)))
}

// RecordLifecycleEvent counts the event in dotmac.customer.lifecycle_events.
func (b *BusinessMetrics) RecordLifecycleEvent(ctx context.Context, e LifecycleEvent) {
	annotate(ctx, e.PartnerID, CustomerLifecycleMetric,
		CustomerIDKey.String(e.CustomerID), LifecycleEventKey.String(e.Event))
	b.lifecycle.Add(ctx, 1, metric.WithAttributes(b.partner(e.PartnerID), LifecycleEventKey.String(e.Event)))
}

// RecordSLAViolation counts the violation in dotmac.sla.violations;
// threshold and actual value go on the span event.
func (b *BusinessMetrics) RecordSLAViolation(ctx context.Context, v SLAViolation) {
	annotate(ctx, v.PartnerID, SLAViolationsMetric,
		SLAMetricKey.String(v.Metric), SLASeverityKey.String(v.Severity),
		SLAThresholdKey.Float64(v.Threshold), SLAActualKey.Float64(v.Actual))
	b.sla.Add(ctx, 1, metric.WithAttributes(
		SLAMetricKey.String(v.Metric), SLASeverityKey.String(v.Severity), b.partner(v.PartnerID)))
}
