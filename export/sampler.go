package export

import (
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// keepSampler samples every span whose start attributes carry keyKeep (a
// reason: "slow", "error", "n_plus_one") and asks base about the others.
//
// The proxy creates a span only after the statement finished, so it knows
// the outcome when the sampler runs (DESIGN.md decision 7). The kept span's
// sampled flag is set because it is in fact recorded and exported; the
// pgtrace.keep attribute it carries says why, so a reader can tell such
// spans from ones the head sampler chose. Its parent may be unsampled and
// then absent from the backend: the span still names the app's trace id.
type keepSampler struct {
	base sdktrace.Sampler
}

func (s keepSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	for _, kv := range p.Attributes {
		if kv.Key == keyKeep {
			return sdktrace.SamplingResult{
				Decision:   sdktrace.RecordAndSample,
				Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState(),
			}
		}
	}
	return s.base.ShouldSample(p)
}

func (s keepSampler) Description() string {
	return "KeepSlowAndFailed{" + s.base.Description() + "}"
}
