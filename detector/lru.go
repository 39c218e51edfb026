package detector

// lruList is an intrusive doubly-linked list ordered by last use: oldest()
// is the least recently touched element. Elements are pointers whose
// struct embeds an lruNode, so linking costs no allocation.
type lruList[T interface {
	comparable
	node() *lruNode[T]
}] struct {
	head, tail T // head is the oldest
	n          int
}

type lruNode[T any] struct {
	prev, next T
	linked     bool
}

// oldest returns the least recently touched element, or the zero T.
func (l *lruList[T]) oldest() T { return l.head }

// pushBack links e, which must not be linked, as the newest.
func (l *lruList[T]) pushBack(e T) {
	var zero T
	n := e.node()
	n.prev, n.next, n.linked = l.tail, zero, true
	if l.tail == zero {
		l.head = e
	} else {
		l.tail.node().next = e
	}
	l.tail = e
	l.n++
}

// remove unlinks e; a no-op when e is not linked.
func (l *lruList[T]) remove(e T) {
	var zero T
	n := e.node()
	if !n.linked {
		return
	}
	if n.prev == zero {
		l.head = n.next
	} else {
		n.prev.node().next = n.next
	}
	if n.next == zero {
		l.tail = n.prev
	} else {
		n.next.node().prev = n.prev
	}
	n.prev, n.next, n.linked = zero, zero, false
	l.n--
}

// touch makes e the newest, linking it if needed.
func (l *lruList[T]) touch(e T) {
	if l.tail == e {
		return
	}
	l.remove(e)
	l.pushBack(e)
}
