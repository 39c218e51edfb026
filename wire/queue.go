package wire

import "slices"

// The request queue.
//
// The frontendCopier pushes a request for every client message that the
// server answers (Query, Parse, Bind, Describe, Execute, Close, Sync,
// FunctionCall), always before it forwards the message, so the
// backendCopier never sees an answer before its request. The backendCopier
// pops the requests in order as the answers arrive:
//
//	Parse→ParseComplete  Bind→BindComplete  Close→CloseComplete
//	Describe→RowDescription|NoData  Execute→CommandComplete|EmptyQueryResponse|PortalSuspended
//	Sync, Query, FunctionCall→ReadyForQuery (which also drops whatever the
//	server skipped after an error, up to that Sync)
//
// An ErrorResponse in the extended protocol ends the first Execute waiting
// before the next Sync (or, failing one, reports the failed Parse); the
// server skips everything else up to the Sync, and those Executes produce no
// event. NoticeResponse, NotificationResponse and ParameterStatus may
// arrive at any time and match nothing.
//
// The server has answered everything the client asked, and the session is
// between requests, exactly when the queue is empty after a ReadyForQuery.

type pendingKind uint8

const (
	pendParse pendingKind = iota + 1
	pendBind
	pendDescribe
	pendClose
	pendSync
	pendQuery
	pendExecute
	pendFunctionCall
)

// pending is a client request awaiting the backend's answer.
type pending struct {
	kind pendingKind
	seq  uint64        // the order in which the client sent it
	ev   *stmtEvent    // Query, Execute, FunctionCall: the event being built; nil once sent
	prep *preparedStmt // Parse: the statement parsed
	// ver is the version of a statement name that a Parse, a Close or a
	// Query (PREPARE, DEALLOCATE) made (see preparedStmt.prev), nil when
	// it changed none; vers are those a DEALLOCATE ALL or DISCARD ALL made.
	ver  *preparedStmt
	vers []*preparedStmt
	// portal is, for a Bind or a Close of a portal (ends set), the portal
	// that its answer replaces or closes.
	portal string
	ends   bool
	// ok is, for a Query, whether its first statement completed: only
	// then did a PREPARE or DEALLOCATE at its head take effect.
	ok bool
}

// requestQueue holds the client's requests that await the server's
// answer, oldest first. It is guarded by session.mu: the frontendCopier
// pushes, the backendCopier pops.
type requestQueue struct {
	q      []pending
	head   int    // q[head:] wait; q[:head] are popped, zeroed
	pushed uint64 // requests pushed so far: the seq of the next one

	// Copy-in (see copyInStarted): the server ignores Sync from its
	// CopyInResponse until the client's CopyDone or CopyFail, which a
	// client may send before it has seen the CopyInResponse.
	copyingIn bool     // in copy-in, and the client has not ended it yet
	copyEnds  []uint64 // the client's copy ends not yet matched: pushed at each
}

// push appends a request and numbers it (seq).
func (q *requestQueue) push(p pending) {
	if q.head == len(q.q) {
		q.q, q.head = q.q[:0], 0
	}
	p.seq = q.pushed
	q.pushed++
	q.q = append(q.q, p)
}

// pushSync queues a Sync, unless the server is in copy-in mode and ignores
// it (see copyInStarted).
func (q *requestQueue) pushSync() {
	if !q.copyingIn {
		q.push(pending{kind: pendSync})
	}
}

// empty reports whether no request awaits an answer.
func (q *requestQueue) empty() bool { return q.head == len(q.q) }

// len is the number of requests awaiting an answer.
func (q *requestQueue) len() int { return len(q.q) - q.head }

// front is the oldest request awaiting an answer, or nil.
func (q *requestQueue) front() *pending { return q.at(0) }

// at is the i-th request awaiting an answer, the oldest at 0, or nil when
// there are not that many.
func (q *requestQueue) at(i int) *pending {
	if i < 0 || q.head+i >= len(q.q) {
		return nil
	}
	return &q.q[q.head+i]
}

// pop consumes the oldest request, if any.
func (q *requestQueue) pop() {
	if q.head < len(q.q) {
		q.q[q.head] = pending{}
		q.head++
	}
}

// maxCopyEnds bounds the copy ends kept unmatched: those of COPYs that
// failed before copy-in, which the server ignores, until they are pruned.
const maxCopyEnds = 16

// copyEnd notes the client's CopyDone or CopyFail.
func (q *requestQueue) copyEnd() {
	if q.copyingIn {
		q.copyingIn = false
		return
	}
	q.pruneCopyEnds()
	if len(q.copyEnds) < maxCopyEnds {
		q.copyEnds = append(q.copyEnds, q.pushed)
	}
}

// pruneCopyEnds drops the copy ends sent before the oldest request
// awaiting its answer: no copy-in can start for them any more.
func (q *requestQueue) pruneCopyEnds() {
	head := q.pushed
	if f := q.front(); f != nil {
		head = f.seq
	}
	for len(q.copyEnds) > 0 && q.copyEnds[0] <= head {
		q.copyEnds = q.copyEnds[1:]
	}
}

// copyInStarted notes that the server entered copy-in mode for the oldest
// request. Until the client's CopyDone or CopyFail the server ignores
// Sync, since drivers such as libpq send one behind an Execute without
// knowing that it runs a COPY, and then another after CopyDone: the Syncs
// the client sent after that request and before its copy end answer
// nothing and must not wait for a ReadyForQuery. The client may have sent
// the copy end already (pgx streams the data without waiting for the
// CopyInResponse); if not, later Syncs are not queued until it comes.
func (q *requestQueue) copyInStarted() {
	if q.empty() {
		return
	}
	q.pruneCopyEnds()
	end := q.pushed // no copy end yet: every Sync queued so far came before it
	if len(q.copyEnds) > 0 {
		end, q.copyEnds = q.copyEnds[0], q.copyEnds[1:]
	} else {
		q.copyingIn = true
	}
	for i := q.head + 1; i < len(q.q) && q.q[i].seq < end; {
		if q.q[i].kind == pendSync {
			q.q = slices.Delete(q.q, i, i+1)
		} else {
			i++
		}
	}
}

// copyFailed notes that an error ended copy-in.
func (q *requestQueue) copyFailed() { q.copyingIn = false }

// push appends a request to the session's queue.
func (s *session) push(p pending) {
	s.mu.Lock()
	s.reqs.push(p)
	s.mu.Unlock()
}

// popIf consumes the oldest request if it is of kind k, confirming what it
// did to the statement names, and returns it.
func (s *session) popIf(k pendingKind) (p pending, ok bool) {
	s.mu.Lock()
	if f := s.reqs.front(); f != nil && f.kind == k {
		p, ok = *f, true
		s.confirmLocked(&p)
		s.reqs.pop()
	}
	s.mu.Unlock()
	return p, ok
}
