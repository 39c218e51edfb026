package detector

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// nearestRank is the 0-based index of quantile q in n sorted values.
func nearestRank(q float64, n int) int {
	return max(0, int(math.Ceil(q*float64(n)))-1)
}

// TestSketchQuantilesWithinStatedError checks the sketch against exact
// quantiles of known distributions: every estimate must be within
// SketchRelativeAccuracy of the exact sample value at the same rank.
func TestSketchQuantilesWithinStatedError(t *testing.T) {
	const n = 50_000
	// Durations in nanoseconds, as the detector feeds them.
	dists := []struct {
		name string
		gen  func(r *rand.Rand) float64
	}{
		{"uniform 1-100ms", func(r *rand.Rand) float64 { return 1e6 + r.Float64()*99e6 }},
		{"exponential mean 5ms", func(r *rand.Rand) float64 { return r.ExpFloat64() * 5e6 }},
		{"lognormal median 2ms sigma 1.5", func(r *rand.Rand) float64 { return 2e6 * math.Exp(1.5*r.NormFloat64()) }},
		{"bimodal 0.3ms and 250ms", func(r *rand.Rand) float64 {
			if r.IntN(10) == 0 {
				return 250e6 * (1 + 0.1*r.NormFloat64())
			}
			return 0.3e6 * (1 + 0.05*r.NormFloat64())
		}},
		{"constant 42ms", func(*rand.Rand) float64 { return 42e6 }},
	}
	qs := []float64{0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1}
	for _, dist := range dists {
		t.Run(dist.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var s sketch
			vals := make([]float64, n)
			for i := range vals {
				vals[i] = dist.gen(r)
				s.add(vals[i])
			}
			slices.Sort(vals)
			for _, q := range qs {
				exact := vals[nearestRank(q, n)]
				got := s.quantile(q)
				if rel := math.Abs(got-exact) / exact; rel > SketchRelativeAccuracy {
					t.Errorf("q%.3f: got %.0f, exact %.0f, relative error %.4f > %.2f", q, got, exact, rel, SketchRelativeAccuracy)
				}
			}
			// The one-pass form agrees with quantile.
			many := make([]float64, len(qs))
			s.quantiles(qs, many)
			for i, q := range qs {
				if many[i] != s.quantile(q) {
					t.Errorf("quantiles[%v] = %v, quantile = %v", q, many[i], s.quantile(q))
				}
			}
			if len(s.counts) > sketchMaxBuckets {
				t.Errorf("%d buckets", len(s.counts))
			}
		})
	}
}

func TestSketchBoundedBuckets(t *testing.T) {
	s := sketch{maxBuckets: 64}
	// Spread values over 12 decades: far more than 64 buckets at 1%.
	r := rand.New(rand.NewPCG(3, 4))
	vals := make([]float64, 10_000)
	for i := range vals {
		vals[i] = math.Pow(10, 1+12*r.Float64())
		s.add(vals[i])
	}
	if len(s.counts) > 64 || !s.collapsed {
		t.Fatalf("%d buckets (collapsed %v), want ≤ 64 and collapsed", len(s.counts), s.collapsed)
	}
	slices.Sort(vals)
	// The top buckets are kept: high quantiles stay accurate.
	for _, q := range []float64{0.999, 1} {
		exact := vals[nearestRank(q, len(vals))]
		if got := s.quantile(q); math.Abs(got-exact)/exact > SketchRelativeAccuracy {
			t.Errorf("q%v: got %.4g, exact %.4g", q, got, exact)
		}
	}
	// Values arriving below the kept range join its lowest bucket.
	s.add(1.5)
	if len(s.counts) > 64 || s.n != 10_001 {
		t.Errorf("%d buckets, n=%d", len(s.counts), s.n)
	}
}

func TestSketchEdgeCases(t *testing.T) {
	var s sketch
	if s.quantile(0.5) != 0 {
		t.Error("empty sketch: want 0")
	}
	s.add(0)
	s.add(0.5)
	s.add(1000)
	if got := s.quantile(0.5); got != 0 {
		t.Errorf("median of 0, 0.5, 1000 = %v, want 0 (zero bucket)", got)
	}
	if got := s.quantile(1); math.Abs(got-1000)/1000 > SketchRelativeAccuracy {
		t.Errorf("max = %v", got)
	}
	// Growing downwards, then upwards.
	s.reset()
	for _, v := range []float64{1e6, 1e3, 1e9, 2, 5e8} {
		s.add(v)
	}
	for i, want := range []float64{2, 1e3, 1e6, 5e8, 1e9} {
		q := float64(i) / 4
		if got := s.quantile(q); math.Abs(got-want)/want > SketchRelativeAccuracy {
			t.Errorf("q%v = %v, want %v", q, got, want)
		}
	}
}
