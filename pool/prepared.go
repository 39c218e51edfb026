package pool

import (
	"container/list"
	"encoding/binary"
	"slices"
	"strconv"
	"sync"
)

// Protocol-level prepared statements in transaction mode, as PgBouncer
// 1.21 does them (max_prepared_statements): a client's named statement
// lives on whichever server connection it gets next, so the relay keeps
// each client's statements itself, gives every distinct statement (text
// and parameter types) one server-side name, prepares it on a server
// connection that lacks it right before the Bind or Describe that needs
// it, and answers the client's Parse (when the connection has it already)
// and Close itself. The client sees its own names in every answer; the
// server sees only pgtrace's.

// stmtDef is what a client's Parse of a named statement said.
type stmtDef struct {
	query      string
	paramTypes []byte // the Parse's parameter types: int16 count, int32 OIDs
	server     string // the server-side name of this text and types
	// lazy: taken without a server connection (no Parse sent for it yet);
	// forgotten if it does not parse when first used.
	lazy bool
}

// parseBody is the body of a Parse that prepares def as name.
func (d *stmtDef) parseBody(name string) []byte {
	b := make([]byte, 0, len(name)+len(d.query)+2+len(d.paramTypes))
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, d.query...)
	b = append(b, 0)
	return append(b, d.paramTypes...)
}

// unnamedKey identifies def's text and types among unnamed statements.
func (d *stmtDef) unnamedKey() string { return d.query + "\x00" + string(d.paramTypes) }

// decodeParse reads a Parse body: name, query, parameter types.
func decodeParse(body []byte) (name, query string, types []byte, ok bool) {
	n, rest, ok := cstring(body)
	if !ok {
		return "", "", nil, false
	}
	q, rest, ok := cstring(rest)
	if !ok || len(rest) < 2 {
		return "", "", nil, false
	}
	if cnt := int(binary.BigEndian.Uint16(rest)); len(rest) != 2+4*cnt {
		return "", "", nil, false
	}
	return string(n), string(q), append([]byte(nil), rest...), true
}

// registry gives server-side names to statements, the same to every
// client's same text and parameter types, so that a server connection
// prepares each once. It is bounded: past maxNames, the least recently
// used mapping is forgotten (a text parsed again gets a new name, and the
// server connections' own bounds close the old one).
type registry struct {
	mu     sync.Mutex
	byKey  map[string]*list.Element // of *regEntry
	order  *list.List
	next   uint64
	prefix string
}

type regEntry struct {
	key, name string
}

const maxNames = 100000

func newRegistry() *registry {
	return &registry{byKey: make(map[string]*list.Element), order: list.New(), prefix: "pgtrace_"}
}

// name returns the server-side name of query with types.
func (r *registry) name(query string, types []byte) string {
	key := query + "\x00" + string(types)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.byKey[key]; ok {
		r.order.MoveToFront(e)
		return e.Value.(*regEntry).name
	}
	r.next++
	ent := &regEntry{key: key, name: r.prefix + strconv.FormatUint(r.next, 10)}
	r.byKey[key] = r.order.PushFront(ent)
	if r.order.Len() > maxNames {
		last := r.order.Back()
		r.order.Remove(last)
		delete(r.byKey, last.Value.(*regEntry).key)
	}
	return ent.name
}

// unique returns a server-side name no text shares.
func (r *registry) unique() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	return r.prefix + strconv.FormatUint(r.next, 10)
}

// maxClientStmts bounds a client's named statements; past it the oldest
// half is forgotten (its later Binds then fail as the server would fail
// them, with 26000).
const maxClientStmts = 10000

// clientStmts are one client's named statements, by its names.
type clientStmts struct {
	byName map[string]*stmtDef
	order  []string
}

func (c *clientStmts) get(name string) *stmtDef {
	return c.byName[name]
}

func (c *clientStmts) put(name string, d *stmtDef) {
	if c.byName == nil {
		c.byName = make(map[string]*stmtDef)
	}
	if _, ok := c.byName[name]; !ok {
		c.order = append(c.order, name)
	}
	c.byName[name] = d
	if len(c.order) > 2*len(c.byName)+64 {
		// Names closed and parsed again (a driver's statement cache)
		// left stale places behind.
		c.compact()
	}
	if len(c.byName) > maxClientStmts {
		c.compact()
		n := len(c.order) / 2
		for _, k := range c.order[:n] {
			delete(c.byName, k)
		}
		c.order = append(c.order[:0:0], c.order[n:]...)
	}
}

// compact keeps in order only the names the client has, each at its
// latest place.
func (c *clientStmts) compact() {
	seen := make(map[string]bool, len(c.byName))
	kept := make([]string, 0, len(c.byName))
	for i := len(c.order) - 1; i >= 0; i-- {
		if n := c.order[i]; c.byName[n] != nil && !seen[n] {
			seen[n] = true
			kept = append(kept, n)
		}
	}
	slices.Reverse(kept)
	c.order = kept
}

// forgetLazy forgets the statements taken without a server connection
// whose server-side name is server: their text did not parse.
func (c *clientStmts) forgetLazy(server string) {
	for n, d := range c.byName {
		if d.lazy && d.server == server {
			delete(c.byName, n)
		}
	}
}

// parsed notes that the statements whose server-side name is server
// parsed: taken without a server connection or not, they are the client's
// like any other now.
func (c *clientStmts) parsed(server string) {
	for _, d := range c.byName {
		if d.lazy && d.server == server {
			d.lazy = false
		}
	}
}

func (c *clientStmts) remove(name string) {
	delete(c.byName, name)
}

func (c *clientStmts) clear() {
	clear(c.byName)
	c.order = c.order[:0]
}

// rewriteStmtName returns the body of a Bind (portal, statement, …) or a
// Describe/Close ('S', statement) with the statement name replaced. For a
// Bind, body may be only its start: the names come first.
func rewriteBindName(body []byte, server string) ([]byte, bool) {
	portal, rest, ok := cstring(body)
	if !ok {
		return nil, false
	}
	_, rest, ok = cstring(rest)
	if !ok {
		return nil, false
	}
	b := make([]byte, 0, len(portal)+len(server)+2+len(rest))
	b = append(b, portal...)
	b = append(b, 0)
	b = append(b, server...)
	b = append(b, 0)
	return append(b, rest...), true
}

// targetBody is the body of a Describe or Close of statement name.
func targetBody(kind byte, name string) []byte {
	b := make([]byte, 0, len(name)+2)
	b = append(b, kind)
	b = append(b, name...)
	return append(b, 0)
}
