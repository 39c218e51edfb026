package pool

import (
	"bufio"
	"container/list"
	"errors"
	"maps"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// serverConn is one logged-in connection to PostgreSQL, idle in its pool
// or lent to one client session. Only the holder reads and writes it; the
// pool touches it only while it is idle.
type serverConn struct {
	conn    net.Conn
	mr      *msgReader
	w       *bufio.Writer
	pl      *Pool
	key     []byte // its BackendKeyData body, for CancelRequest
	pid     uint32
	created time.Time
	// lastUsed is when it last went back to the pool; lentAt when it was
	// lent (under Pool.mu).
	lastUsed, lentAt time.Time
	holder           atomic.Pointer[holder]

	// params are the server's ParameterStatus values as the connection
	// has them now.
	params paramSet
	// prepared are the statements prepared on it for clients in
	// transaction mode (prepared.go), by server-side name; unnamed is the
	// text and types of its unnamed statement, "" when it has none the
	// relay knows of.
	prepared *stmtLRU
	unnamed  string

	closeOnce sync.Once
}

// holder is the client session a server connection is lent to.
type holder struct {
	connID uint64
	addr   string
}

// serverWhole are the server's message types the relay reads whole: all
// but DataRow and CopyData, which may stream.
var serverWhole = func() *[256]bool {
	var t [256]bool
	for i := range t {
		t[i] = true
	}
	t['D'], t['d'] = false, false
	return &t
}()

func newServerConn(conn net.Conn, ss *ServerSession, pl *Pool, now time.Time) *serverConn {
	sc := &serverConn{
		conn: conn, mr: newMsgReader(conn, serverWhole), w: bufio.NewWriterSize(conn, 32<<10),
		pl: pl, key: ss.Key, pid: ss.PID, created: now, lastUsed: now,
		params:   paramSet(maps.Clone(ss.Params)),
		prepared: newStmtLRU(pl.p.cfg.MaxPreparedStatements),
	}
	if sc.params == nil {
		sc.params = paramSet{}
	}
	return sc
}

// alive reports whether an idle connection can be lent: one unused for a
// while is checked for a close or a message the server sent while it sat
// idle (it never should), either of which makes it unusable.
func (sc *serverConn) alive(now time.Time) bool {
	if now.Sub(sc.lastUsed) < checkAfter {
		return true
	}
	sc.conn.SetReadDeadline(now.Add(time.Millisecond))
	_, err := sc.mr.r.Peek(1)
	sc.conn.SetReadDeadline(time.Time{})
	return errors.Is(err, os.ErrDeadlineExceeded)
}

func (sc *serverConn) close() {
	sc.closeOnce.Do(func() {
		// Terminate, then close: the backend ends at once rather than
		// when it notices the closed socket.
		sc.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		sc.w.Write([]byte{'X', 0, 0, 0, 4})
		sc.w.Flush()
		sc.conn.Close()
	})
}

// paramSet holds run-time parameters by name.
type paramSet map[string]string

func (p paramSet) clone() paramSet { return maps.Clone(p) }

// stmtLRU is the set of statements prepared on a server connection, the
// least recently used first out.
type stmtLRU struct {
	max   int
	order *list.List // of string, most recently used at the front
	byKey map[string]*list.Element
}

func newStmtLRU(max int) *stmtLRU {
	return &stmtLRU{max: max, order: list.New(), byKey: make(map[string]*list.Element)}
}

// has reports whether name is prepared, and marks it used.
func (l *stmtLRU) has(name string) bool {
	e, ok := l.byKey[name]
	if ok {
		l.order.MoveToFront(e)
	}
	return ok
}

// add records name as prepared; it returns the name that must be closed
// on the server to stay within the bound, or "".
func (l *stmtLRU) add(name string) (evict string) {
	if e, ok := l.byKey[name]; ok {
		l.order.MoveToFront(e)
		return ""
	}
	l.byKey[name] = l.order.PushFront(name)
	if l.order.Len() > l.max {
		last := l.order.Back()
		l.order.Remove(last)
		evict = last.Value.(string)
		delete(l.byKey, evict)
	}
	return evict
}

// restore records name as prepared again, beyond the bound if need be: its
// Close was skipped, the server still has it.
func (l *stmtLRU) restore(name string) {
	if _, ok := l.byKey[name]; !ok {
		l.byKey[name] = l.order.PushFront(name)
	}
}

// remove forgets name (its Parse failed).
func (l *stmtLRU) remove(name string) {
	if e, ok := l.byKey[name]; ok {
		l.order.Remove(e)
		delete(l.byKey, name)
	}
}

// clear forgets everything (DISCARD ALL ran).
func (l *stmtLRU) clear() {
	l.order.Init()
	clear(l.byKey)
}
