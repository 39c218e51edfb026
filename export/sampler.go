package export

import (
	"fmt"
	"os"
	"strconv"
	"strings"

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

// samplerFromEnv reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as the
// SDK does (the SDK's parser is unexported, and a custom Sampler replaces
// it), plus the DotMac guide's OTEL_TRACES_SAMPLING_RATIO, read as
// parentbased_traceidratio with that ratio when OTEL_TRACES_SAMPLER is unset.
// The default is parentbased_always_on.
func samplerFromEnv() (sdktrace.Sampler, error) {
	name := strings.ToLower(strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER")))
	arg := strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER_ARG"))
	if name == "" {
		if r := strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLING_RATIO")); r != "" {
			name, arg = "parentbased_traceidratio", r
		} else {
			name = "parentbased_always_on"
		}
	}
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		f, err := strconv.ParseFloat(arg, 64)
		if err != nil || f < 0 || f > 1 {
			return 0, fmt.Errorf("sampler argument %q: want a ratio in [0,1]", arg)
		}
		return f, nil
	}
	switch name {
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio":
		r, err := ratio()
		return sdktrace.TraceIDRatioBased(r), err
	case "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "parentbased_traceidratio":
		r, err := ratio()
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), err
	}
	return nil, fmt.Errorf("unsupported OTEL_TRACES_SAMPLER %q", name)
}
