package wire

import (
	"strings"
	"testing"
)

func TestParseUtility(t *testing.T) {
	tests := []struct {
		q    string
		want utility
	}{
		{"PREPARE foo AS SELECT 1", utility{utilPrepare, "foo"}},
		{"prepare Foo(int, numeric(10,2)) as select $1", utility{utilPrepare, "foo"}},
		{`  /* c /* nested */ */ -- line
PREPARE "Foo ""x""" AS SELECT 1`, utility{utilPrepare, `Foo "x"`}},
		{"PREPARE TRANSACTION 'gid'", utility{}},
		{"prepare transaction as select 1", utility{utilPrepare, "transaction"}},
		{"PREPARE foo", utility{}},
		{"EXECUTE foo(1, 'a')", utility{utilExecute, "foo"}},
		{"execute  FOO /*traceparent='00-x'*/", utility{utilExecute, "foo"}},
		{"EXECUTE s_1; SELECT 2", utility{utilExecute, "s_1"}},
		{"execute $1", utility{}},
		{"DEALLOCATE foo", utility{utilDeallocate, "foo"}},
		{"DEALLOCATE PREPARE foo;", utility{utilDeallocate, "foo"}},
		{"deallocate prepare", utility{utilDeallocate, "prepare"}},
		{`DEALLOCATE "ALL"`, utility{utilDeallocate, "ALL"}},
		{"DEALLOCATE ALL", utility{kind: utilDeallocateAll}},
		{"deallocate prepare all ; ", utility{kind: utilDeallocateAll}},
		{"DEALLOCATE foo; SELECT 1", utility{}},
		{"DISCARD ALL", utility{kind: utilDeallocateAll}},
		{"discard all; -- reset", utility{kind: utilDeallocateAll}},
		{"DISCARD PLANS", utility{}},
		{"DISCARD ALL; DEALLOCATE x", utility{}},
		{"SELECT 1", utility{}},
		{"DELETE FROM t", utility{}},
		{"EXPLAIN EXECUTE foo", utility{}},
		{"", utility{}},
		{"/* unterminated", utility{}},
		{`EXECUTE "unterminated`, utility{}},
		{`EXECUTE ""`, utility{}},
		{"EXECUTE", utility{}},
		{"prepared foo as select 1", utility{}},
	}
	for _, tt := range tests {
		if got := parseUtility([]byte(tt.q)); got != tt.want {
			t.Errorf("parseUtility(%q) = %+v, want %+v", tt.q, got, tt.want)
		}
	}
}

// FuzzParseUtility reads arbitrary Query texts: nothing panics, and a name
// it finds is in the text, as written or folded to lower case.
func FuzzParseUtility(f *testing.F) {
	for _, s := range []string{"PREPARE foo AS SELECT 1", `EXECUTE "a""b"(1)`, "DEALLOCATE PREPARE ALL",
		"DISCARD ALL", "/* /* */ execute x", "-- x\nprepare y(int) as select 1", "", "\x00", `"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		u := parseUtility([]byte(q)) // must not panic
		switch u.kind {
		case utilPrepare, utilExecute, utilDeallocate:
			if u.name == "" {
				t.Fatalf("%q: kind %d with no name", q, u.kind)
			}
			if !strings.Contains(q, u.name) && !strings.Contains(asciiLower(q), u.name) &&
				!strings.Contains(q, strings.ReplaceAll(u.name, `"`, `""`)) {
				t.Fatalf("%q: name %q is not in the text", q, u.name)
			}
		case utilNone, utilDeallocateAll:
			if u.name != "" {
				t.Fatalf("%q: kind %d with name %q", q, u.kind, u.name)
			}
		}
	})
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
