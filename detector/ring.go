package detector

// findingRing keeps the most recent findings. Each slot carries the
// sequence number of the finding in it, so a group that keeps counting can
// update its finding in place while it is still in the ring and notice when
// it has been dropped.
type findingRing struct {
	slots   []Finding
	seqs    []uint64 // seqs[i] is the sequence of slots[i]; 0 means empty
	next    uint64   // sequence of the next finding; starts at 1
	dropped uint64   // findings overwritten before anyone reset the ring
	n       int      // findings held
}

func newFindingRing(size int) findingRing {
	return findingRing{slots: make([]Finding, size), seqs: make([]uint64, size), next: 1}
}

// add stores f and returns its sequence number, which the stored copy
// carries too.
func (r *findingRing) add(f Finding) uint64 {
	seq := r.next
	f.seq = seq
	r.next++
	i := seq % uint64(len(r.slots))
	if r.seqs[i] != 0 {
		r.dropped++
	} else {
		r.n++
	}
	r.slots[i] = f
	r.seqs[i] = seq
	return seq
}

// get returns the finding with sequence seq, or nil once it was dropped.
// The pointer is valid until the next add or reset.
func (r *findingRing) get(seq uint64) *Finding {
	if seq == 0 {
		return nil
	}
	i := seq % uint64(len(r.slots))
	if r.seqs[i] != seq {
		return nil
	}
	return &r.slots[i]
}

// len reports how many findings the ring holds.
func (r *findingRing) len() int { return r.n }

// newestFirst calls fn on each finding, the most recent first, until fn
// returns false.
func (r *findingRing) newestFirst(fn func(*Finding) bool) {
	size := uint64(len(r.slots))
	for seq := r.next - 1; seq >= 1 && r.next-seq <= size; seq-- {
		i := seq % size
		if r.seqs[i] != seq {
			return
		}
		if !fn(&r.slots[i]) {
			return
		}
	}
}

func (r *findingRing) reset() {
	clear(r.slots)
	clear(r.seqs)
	r.n = 0
}
