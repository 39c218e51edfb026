package pool

import (
	"strconv"
	"testing"
)

// TestClientStmtsBounded: a driver whose statement cache closes and parses
// names all the time (asyncpg, psycopg 3) keeps the books small, and past
// maxClientStmts the oldest names go first.
func TestClientStmtsBounded(t *testing.T) {
	var c clientStmts
	for i := range 100_000 {
		name := "s" + strconv.Itoa(i)
		c.put(name, &stmtDef{query: name})
		if i >= 3 {
			c.remove("s" + strconv.Itoa(i-3))
		}
	}
	if len(c.byName) != 3 || len(c.order) > 2*3+64+1 {
		t.Fatalf("%d statements, %d places in order; want 3 and few", len(c.byName), len(c.order))
	}
	for i := 99_997; i < 100_000; i++ {
		if c.get("s"+strconv.Itoa(i)) == nil {
			t.Errorf("s%d forgotten", i)
		}
	}

	var full clientStmts
	for i := range maxClientStmts + 1 {
		full.put("s"+strconv.Itoa(i), &stmtDef{})
	}
	full.remove("s1")
	full.put("s1", &stmtDef{}) // parsed again: now among the newest
	if n := len(full.byName); n > maxClientStmts {
		t.Fatalf("%d statements kept, want at most %d", n, maxClientStmts)
	}
	if full.get("s0") != nil {
		t.Error("the oldest statement is kept")
	}
	if full.get("s1") == nil || full.get("s"+strconv.Itoa(maxClientStmts)) == nil {
		t.Error("a statement parsed lately is forgotten")
	}
}
