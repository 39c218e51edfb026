package wire

import "testing"

func kinds(q *requestQueue) []pendingKind {
	var out []pendingKind
	for i := 0; q.at(i) != nil; i++ {
		out = append(out, q.at(i).kind)
	}
	return out
}

func TestRequestQueue(t *testing.T) {
	var q requestQueue
	if !q.empty() || q.front() != nil || q.len() != 0 {
		t.Fatal("new queue not empty")
	}
	q.push(pending{kind: pendParse})
	q.push(pending{kind: pendBind})
	q.pushSync()
	if got := kinds(&q); len(got) != 3 || got[0] != pendParse || got[2] != pendSync {
		t.Fatalf("kinds %v", got)
	}
	for i := 0; i < 3; i++ {
		if q.at(i).seq != uint64(i) {
			t.Errorf("request %d has seq %d", i, q.at(i).seq)
		}
	}
	q.pop()
	if q.front().kind != pendBind || q.len() != 2 {
		t.Fatalf("after pop: %v", kinds(&q))
	}
	q.pop()
	q.pop()
	q.pop() // popping an empty queue does nothing
	if !q.empty() {
		t.Fatal("not empty after popping everything")
	}
	// An emptied queue reuses its array; seq keeps counting.
	q.push(pending{kind: pendQuery})
	if q.front().seq != 3 || len(q.q) != 1 {
		t.Errorf("after reuse: seq %d, array %d", q.front().seq, len(q.q))
	}
}

// TestRequestQueueCopyIn: the Syncs that the server ignores in copy-in
// mode are dropped, whether the client's copy end comes before the
// server's CopyInResponse (pgx) or after it (libpq).
func TestRequestQueueCopyIn(t *testing.T) {
	t.Run("copy end after CopyInResponse", func(t *testing.T) {
		var q requestQueue
		q.push(pending{kind: pendExecute}) // COPY … FROM STDIN
		q.pushSync()                       // libpq's Sync behind the Execute
		q.copyInStarted()
		if got := kinds(&q); len(got) != 1 {
			t.Fatalf("the Sync before the copy end stayed: %v", got)
		}
		q.pushSync() // ignored while in copy-in
		if q.len() != 1 {
			t.Fatalf("a Sync in copy-in was queued: %v", kinds(&q))
		}
		q.copyEnd()
		q.pushSync() // answered after CopyDone
		if got := kinds(&q); len(got) != 2 || got[1] != pendSync {
			t.Fatalf("after the copy end: %v", got)
		}
	})
	t.Run("copy end before CopyInResponse", func(t *testing.T) {
		var q requestQueue
		q.push(pending{kind: pendExecute})
		q.pushSync() // skipped by the server
		q.copyEnd()  // pgx streams without waiting
		q.pushSync() // answered
		q.copyInStarted()
		if got := kinds(&q); len(got) != 2 || got[1] != pendSync || q.at(1).seq != 2 {
			t.Fatalf("kept %v, want the Execute and the Sync after the copy end", got)
		}
		if q.copyingIn {
			t.Error("still in copy-in after a matched copy end")
		}
	})
	t.Run("copy ends of failed COPYs are pruned", func(t *testing.T) {
		var q requestQueue
		for range maxCopyEnds + 5 {
			q.copyEnd()
		}
		if len(q.copyEnds) > maxCopyEnds {
			t.Errorf("%d copy ends kept", len(q.copyEnds))
		}
		q.push(pending{kind: pendQuery})
		q.copyEnd()
		q.pruneCopyEnds()
		if len(q.copyEnds) != 1 {
			t.Errorf("%d copy ends after pruning, want the one after the Query", len(q.copyEnds))
		}
	})
}
