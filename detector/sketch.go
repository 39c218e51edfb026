package detector

import "math"

// SketchRelativeAccuracy is the relative error of the quantiles a sketch
// returns: for any q, the estimate e of the exact sample value v of
// nearest rank ⌈q·n⌉ (1-based; the smallest for q = 0) satisfies
// |e−v| ≤ SketchRelativeAccuracy·v, as long as no buckets were collapsed
// (see sketchMaxBuckets).
const SketchRelativeAccuracy = 0.01

// sketchMaxBuckets bounds a sketch's memory (4 bytes a bucket). With a 1%
// accuracy 1024 buckets span a ratio of about 7·10⁸ between the smallest
// and the largest value, e.g. 1 µs to 12 minutes; beyond that the lowest
// buckets are merged, which costs accuracy only at the low quantiles.
const sketchMaxBuckets = 1024

var (
	sketchGamma       = (1 + SketchRelativeAccuracy) / (1 - SketchRelativeAccuracy)
	sketchInvLogGamma = 1 / math.Log(sketchGamma)
)

// sketch is a DDSketch-like quantile sketch over positive values (here
// nanoseconds): value v lands in bucket ⌈log_γ v⌉ with γ = (1+α)/(1−α), and a
// bucket's representative 2γⁱ/(γ+1) is within α of every value in it.
// Buckets are a dense slice of counts starting at index offset, grown as
// values arrive and capped at maxBuckets by merging the lowest ones.
//
// The zero value is an empty sketch with the default bucket cap.
type sketch struct {
	counts     []uint32
	offset     int    // bucket index of counts[0]
	zero       uint64 // values ≤ 1 (sub-nanosecond or zero durations)
	n          uint64
	maxBuckets int // 0 means sketchMaxBuckets
	collapsed  bool
}

func sketchIndex(v float64) int {
	return int(math.Ceil(math.Log(v) * sketchInvLogGamma))
}

func sketchValue(i int) float64 {
	return 2 * math.Pow(sketchGamma, float64(i)) / (sketchGamma + 1)
}

func (s *sketch) limit() int {
	if s.maxBuckets > 0 {
		return s.maxBuckets
	}
	return sketchMaxBuckets
}

// add records one value.
func (s *sketch) add(v float64) {
	s.n++
	if v <= 1 {
		s.zero++
		return
	}
	i := sketchIndex(v)
	if len(s.counts) == 0 {
		s.counts = make([]uint32, 1, 16)
		s.offset = i
		s.counts[0] = 1
		return
	}
	hi := s.offset + len(s.counts) - 1
	switch {
	case i >= s.offset && i <= hi:
		// The common case: no growth.
	case i < s.offset:
		lo := i
		if hi-lo+1 > s.limit() {
			// Too wide: the value joins the lowest bucket we may keep.
			lo = hi - s.limit() + 1
			s.collapsed = true
			if i < lo {
				i = lo
			}
		}
		if lo < s.offset {
			grown := make([]uint32, hi-lo+1, hi-lo+1+16)
			copy(grown[s.offset-lo:], s.counts)
			s.counts = grown
			s.offset = lo
		}
	default: // i > hi
		lo := s.offset
		if i-lo+1 > s.limit() {
			// Merge the lowest buckets into the new lowest one.
			newLo := i - s.limit() + 1
			var merged uint32
			for j := lo; j < newLo && j <= hi; j++ {
				merged += s.counts[j-lo]
			}
			if newLo > hi {
				s.counts = s.counts[:0]
			} else {
				s.counts = s.counts[newLo-lo:]
			}
			s.offset = newLo
			if len(s.counts) == 0 {
				s.counts = append(s.counts, 0)
			}
			s.counts[0] += merged
			s.collapsed = true
			lo = newLo
		}
		for s.offset+len(s.counts)-1 < i {
			s.counts = append(s.counts, 0)
		}
	}
	s.counts[i-s.offset]++
}

// quantile returns the estimated value at quantile q in [0,1], or 0 for an
// empty sketch.
func (s *sketch) quantile(q float64) float64 {
	if s.n == 0 {
		return 0
	}
	rank := s.rank(q)
	if rank < s.zero {
		return 0
	}
	seen := s.zero
	for j, c := range s.counts {
		seen += uint64(c)
		if seen > rank {
			return sketchValue(s.offset + j)
		}
	}
	return sketchValue(s.offset + len(s.counts) - 1)
}

// rank is the 0-based nearest rank of quantile q: ⌈q·n⌉−1, within [0, n−1].
func (s *sketch) rank(q float64) uint64 {
	r := math.Ceil(q*float64(s.n)) - 1
	if r < 0 || math.IsNaN(r) {
		return 0
	}
	if r > float64(s.n-1) {
		return s.n - 1
	}
	return uint64(r)
}

// quantiles fills out[k] with the estimate at qs[k]; qs must be ascending.
// One pass over the buckets.
func (s *sketch) quantiles(qs []float64, out []float64) {
	for k := range out {
		out[k] = 0
	}
	if s.n == 0 {
		return
	}
	k := 0
	seen := s.zero
	for k < len(qs) && s.rank(qs[k]) < seen {
		k++ // in the zero bucket: 0
	}
	for j, c := range s.counts {
		seen += uint64(c)
		for k < len(qs) && s.rank(qs[k]) < seen {
			out[k] = sketchValue(s.offset + j)
			k++
		}
		if k == len(qs) {
			return
		}
	}
	for ; k < len(qs); k++ {
		out[k] = sketchValue(s.offset + len(s.counts) - 1)
	}
}

// reset empties the sketch, keeping its buckets' memory.
func (s *sketch) reset() {
	clear(s.counts)
	s.counts = s.counts[:0]
	s.offset, s.zero, s.n, s.collapsed = 0, 0, 0, false
}
