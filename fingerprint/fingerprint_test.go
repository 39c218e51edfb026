package fingerprint

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// tcase is one case of a testdata file in the "=== name / SQL / --- want /
// JSON" format described at the top of testdata/comments.txt.
type tcase struct {
	name, sql, want string
	line            int
}

func readCases(t *testing.T, name string) []tcase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var (
		cases []tcase
		cur   *tcase
		inSQL bool
		sql   []string
		want  []string
	)
	flush := func() {
		if cur != nil {
			cur.sql = strings.Join(sql, "\n")
			cur.want = strings.Join(want, "\n")
			cases = append(cases, *cur)
		}
		cur, sql, want = nil, nil, nil
	}
	for i, ln := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(ln, "=== "):
			flush()
			cur = &tcase{name: strings.TrimPrefix(ln, "=== "), line: i + 1}
			inSQL = true
		case cur == nil:
			// header comments
		case inSQL && ln == "--- want":
			inSQL = false
		case inSQL:
			sql = append(sql, ln)
		default:
			want = append(want, ln)
		}
	}
	flush()
	if len(cases) == 0 {
		t.Fatalf("%s: no cases", name)
	}
	return cases
}

// commentWant is the expectation of a comments.txt case.
type commentWant struct {
	Tags         map[string]string `json:"tags"`
	TraceID      string            `json:"trace_id"`
	ParentSpanID string            `json:"parent_span_id"`
	Sampled      bool              `json:"sampled"`
	TraceState   string            `json:"tracestate"`
	TraceInvalid bool              `json:"trace_invalid"`
	Body         string            `json:"body"`
}

// tagMap flattens Tags back to sqlcommenter keys.
func tagMap(tags Tags, tenantKey string) map[string]string {
	m := map[string]string{}
	for k, v := range map[string]string{
		"application": tags.Application, "route": tags.Route,
		"controller": tags.Controller, "action": tags.Action,
		"framework": tags.Framework, "db_driver": tags.DBDriver,
		tenantKey: tags.Tenant,
	} {
		if v != "" {
			m[k] = v
		}
	}
	for k, v := range tags.Extra {
		m[k] = v
	}
	return m
}

func TestComments(t *testing.T) {
	for _, tc := range readCases(t, "comments.txt") {
		t.Run(tc.name, func(t *testing.T) {
			var want commentWant
			if err := json.Unmarshal([]byte(tc.want), &want); err != nil {
				t.Fatalf("comments.txt:%d: bad want: %v", tc.line, err)
			}
			if want.Tags == nil {
				want.Tags = map[string]string{}
			}
			a := New(Config{KeepUnknownTags: true})
			res := a.Analyze(tc.sql)
			got := commentWant{
				Tags:         tagMap(res.Tags, DefaultTenantKey),
				Sampled:      res.Trace.Sampled(),
				TraceState:   res.Trace.TraceState,
				TraceInvalid: res.TraceInvalid,
				Body:         scan(tc.sql).body,
			}
			if res.Trace.IsValid() {
				got.TraceID = hex.EncodeToString(res.Trace.TraceID[:])
				got.ParentSpanID = hex.EncodeToString(res.Trace.SpanID[:])
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("comments.txt:%d: Analyze(%q) (-want +got):\n%s", tc.line, tc.sql, d)
			}
			if res.TraceInvalid != (a.Stats().InvalidTraceparents == 1) {
				t.Errorf("InvalidTraceparents = %d with TraceInvalid %v", a.Stats().InvalidTraceparents, res.TraceInvalid)
			}

			// ParseComment sees the same pairs, traceparent included.
			tags, stripped, ok := ParseComment(tc.sql)
			if stripped != want.Body {
				t.Errorf("ParseComment stripped = %q, want %q", stripped, want.Body)
			}
			wantAll := map[string]string{}
			for k, v := range want.Tags {
				wantAll[k] = v
			}
			if tp, ok := tags["traceparent"]; ok {
				wantAll["traceparent"] = tp
			}
			if ts, ok := tags["tracestate"]; ok {
				wantAll["tracestate"] = ts
			}
			if len(wantAll) == 0 {
				wantAll = nil
			}
			if d := cmp.Diff(wantAll, tags, cmpopts.EquateEmpty()); d != "" {
				t.Errorf("ParseComment tags (-want +got):\n%s", d)
			}
			if ok != (len(tags) > 0) {
				t.Errorf("ParseComment ok = %v with %d tags", ok, len(tags))
			}
		})
	}
}

func TestUnknownTagsDroppedByDefault(t *testing.T) {
	a := New(Config{TenantKey: "tenant"})
	res := a.Analyze("SELECT 1 /*tenant='t1',tenant_id='ignored',feature='x',application='app'*/")
	want := Tags{Tenant: "t1", Application: "app"}
	if d := cmp.Diff(want, res.Tags); d != "" {
		t.Errorf("tags (-want +got):\n%s", d)
	}
}

func TestNoTenant(t *testing.T) {
	const sql = "SELECT 1 /*tenant_id='t1',application='app'*/"
	for _, tc := range []struct {
		cfg  Config
		want Tags
	}{
		{Config{}, Tags{Tenant: "t1", Application: "app"}},
		{Config{NoTenant: true}, Tags{Application: "app"}},
		{Config{NoTenant: true, KeepUnknownTags: true}, Tags{Application: "app", Extra: map[string]string{"tenant_id": "t1"}}},
	} {
		if d := cmp.Diff(tc.want, New(tc.cfg).Analyze(sql).Tags); d != "" {
			t.Errorf("%+v: tags (-want +got):\n%s", tc.cfg, d)
		}
	}
}

func TestTraceparents(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "traceparents.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		n++
		tc, err := ParseTraceparent(fields[1])
		switch fields[0] {
		case "valid":
			if err != nil {
				t.Errorf("line %d: ParseTraceparent(%q): %v", line, fields[1], err)
				continue
			}
			got := []string{hex.EncodeToString(tc.TraceID[:]), hex.EncodeToString(tc.SpanID[:]), hex.EncodeToString([]byte{tc.Flags})}
			if d := cmp.Diff(fields[2:], got); d != "" {
				t.Errorf("line %d: ParseTraceparent(%q) (-want +got):\n%s", line, fields[1], d)
			}
		case "invalid":
			if err == nil {
				t.Errorf("line %d: ParseTraceparent(%q) = %+v, want an error", line, fields[1], tc)
			}
			if tc != (TraceContext{}) {
				t.Errorf("line %d: invalid traceparent left %+v", line, tc)
			}
			// Through a comment: ignored, flagged and counted; the tags of
			// the comment still count.
			a := New(Config{})
			res := a.Analyze("SELECT 1 /*application='a',traceparent='" + fields[1] + "'*/")
			if !res.TraceInvalid || res.Trace.IsValid() || res.Tags.Application != "a" || a.Stats().InvalidTraceparents != 1 {
				t.Errorf("line %d: Analyze with %q: TraceInvalid=%v Trace=%+v Tags=%+v Stats=%+v",
					line, fields[1], res.TraceInvalid, res.Trace, res.Tags, a.Stats())
			}
		default:
			t.Fatalf("line %d: unknown verdict %q", line, fields[0])
		}
	}
	if n < 10 {
		t.Fatalf("only %d traceparent cases", n)
	}
}

// queryWant is the expectation for one statement of an analyze.txt case.
type queryWant struct {
	Normalized string   `json:"normalized"`
	Summary    string   `json:"summary"`
	Operation  string   `json:"operation"`
	Collection string   `json:"collection"`
	Tables     []string `json:"tables"`
	Fallback   bool     `json:"fallback"`
	Truncated  bool     `json:"truncated"`
	ParseError string   `json:"parse_error"`
}

func TestAnalyzeCases(t *testing.T) {
	a := New(Config{})
	for _, tc := range readCases(t, "analyze.txt") {
		t.Run(tc.name, func(t *testing.T) {
			var want []queryWant
			if err := json.Unmarshal([]byte(tc.want), &want); err != nil {
				t.Fatalf("analyze.txt:%d: bad want: %v", tc.line, err)
			}
			res := a.Analyze(tc.sql)
			var got []queryWant
			for i, q := range res.Queries {
				if len(q.Fingerprint) != 16 || strings.Trim(q.Fingerprint, "0123456789abcdef") != "" {
					t.Errorf("statement %d: fingerprint %q is not 16 lowercase hex digits", i, q.Fingerprint)
				}
				g := queryWant{
					Normalized: q.Normalized, Summary: q.Summary, Operation: q.Operation,
					Collection: q.Collection, Tables: q.Tables, Fallback: q.Fallback, Truncated: q.Truncated,
				}
				if i < len(want) && want[i].ParseError != "" && strings.Contains(q.ParseError, want[i].ParseError) {
					g.ParseError = want[i].ParseError
				} else {
					g.ParseError = q.ParseError
				}
				got = append(got, g)
			}
			if d := cmp.Diff(want, got, cmpopts.EquateEmpty()); d != "" {
				t.Errorf("analyze.txt:%d: Analyze(%q) (-want +got):\n%s", tc.line, tc.sql, d)
			}
		})
	}
}

// fingerprintGroups reads testdata/fingerprints.txt.
func fingerprintGroups(t *testing.T) (names []string, groups [][]string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "fingerprints.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(ln, "## "):
			names = append(names, strings.TrimPrefix(ln, "## "))
			groups = append(groups, nil)
		case strings.TrimSpace(ln) == "", strings.HasPrefix(ln, "#"), len(groups) == 0:
		case ln[0] == ' ' || ln[0] == '\t':
			g := groups[len(groups)-1]
			g[len(g)-1] += "\n" + ln
		default:
			groups[len(groups)-1] = append(groups[len(groups)-1], ln)
		}
	}
	return names, groups
}

func TestFingerprintGroups(t *testing.T) {
	a := New(Config{})
	names, groups := fingerprintGroups(t)
	owner := map[string]string{} // fingerprint → group
	for i, g := range groups {
		if len(g) == 0 {
			t.Fatalf("group %q is empty", names[i])
		}
		var fp string
		for j, sql := range g {
			q := queryOf(a.Analyze(sql), 0)
			if q == nil {
				t.Fatalf("group %q: no query for %q", names[i], sql)
			}
			if j == 0 {
				fp = q.Fingerprint
				continue
			}
			if q.Fingerprint != fp {
				t.Errorf("group %q: %q has fingerprint %s, %q has %s", names[i], g[0], fp, sql, q.Fingerprint)
			}
		}
		if other, ok := owner[fp]; ok {
			t.Errorf("groups %q and %q share fingerprint %s", other, names[i], fp)
		}
		owner[fp] = names[i]
	}
}

func TestResultQueryIndex(t *testing.T) {
	a := New(Config{})
	res := a.Analyze("SELECT 1; INSERT INTO t VALUES (1); DELETE FROM t")
	for i, want := range []string{"SELECT", "INSERT", "DELETE", "DELETE", "DELETE"} {
		if got := res.Query(i).Operation; got != want {
			t.Errorf("Query(%d).Operation = %q, want %q", i, got, want)
		}
	}
	if q := queryOf(a.Analyze("  ;  /* only a comment */ "), 0); q != nil {
		t.Errorf("empty text: Query(0) = %+v, want nil", q)
	}
}

func TestCache(t *testing.T) {
	a := New(Config{CacheSize: 2})
	tp := func(span string) string {
		return " /*traceparent='00-0af7651916cd43dd8448eb211c80319c-" + span + "-01'*/"
	}
	r1 := a.Analyze("SELECT * FROM a WHERE id = 1" + tp("b7ad6b7169203331"))
	r2 := a.Analyze("SELECT * FROM a WHERE id = 1" + tp("c7ad6b7169203331"))
	if got := a.Stats(); got.Hits != 1 || got.Misses != 1 || got.Size != 1 {
		t.Fatalf("after the same text with two traceparents: %+v, want 1 hit, 1 miss, size 1", got)
	}
	if r1.Queries[0] != r2.Queries[0] {
		t.Error("a hit returned a different *Query")
	}
	if r1.Trace.SpanID == r2.Trace.SpanID {
		t.Error("a hit reused the trace context of the first text")
	}
	a.Analyze("SELECT * FROM b")
	a.Analyze("SELECT * FROM c")
	a.Analyze("SELECT * FROM d")
	st := a.Stats()
	if st.Size != 2 || st.Evictions != 2 || st.Misses != 4 {
		t.Errorf("after 4 distinct texts in a cache of 2: %+v, want size 2, 2 evictions, 4 misses", st)
	}
	// The least recently used text was evicted: analyzing it again misses.
	a.Analyze("SELECT * FROM a WHERE id = 1")
	if got := a.Stats().Misses; got != 5 {
		t.Errorf("evicted text: misses = %d, want 5", got)
	}
}

// TestCacheVerifiesText plants an entry under the hash of another text, as
// a hash collision would, and checks that a lookup does not return it.
func TestCacheVerifiesText(t *testing.T) {
	for _, body := range []string{"SELECT * FROM victim", "SELECT * FROM victim WHERE x = '" + strings.Repeat("y", maxKeptText) + "'"} {
		a := New(Config{})
		planted := a.Analyze("SELECT * FROM planted").Queries
		for _, s := range a.shards {
			for _, k := range s.Keys() {
				e, _ := s.Peek(k)
				h := hashFor(a, body)
				a.shards[h&a.mask].Add(h, e)
			}
		}
		got := queryOf(a.Analyze(body), 0)
		if got == planted[0] || got.Summary != "SELECT victim" {
			t.Errorf("len %d: lookup returned the planted entry: %+v", len(body), got)
		}
		if st := a.Stats(); st.Hits != 0 {
			t.Errorf("len %d: a mismatched entry counted as a hit: %+v", len(body), st)
		}
		// And the real entry replaced the planted one.
		if queryOf(a.Analyze(body), 0) != got || a.Stats().Hits != 1 {
			t.Errorf("len %d: second lookup missed: %+v", len(body), a.Stats())
		}
	}
}

func TestTruncated(t *testing.T) {
	a := New(Config{MaxStatementLength: 100})
	mk := func(secret string) string {
		return "SELECT * FROM partners WHERE note = '" + secret + "' AND " + strings.Repeat("x = 1 AND ", 50) + "true"
	}
	q1 := queryOf(a.Analyze(mk("secret-one")), 0)
	q2 := queryOf(a.Analyze(mk("other-secret-two")), 0)
	if !q1.Truncated || !q1.Fallback || q1.ParseError == "" {
		t.Fatalf("over-long statement: %+v, want Truncated, Fallback and a ParseError", q1)
	}
	if strings.Contains(q1.Normalized, "secret") || !strings.HasPrefix(q1.Normalized, "SELECT * FROM partners WHERE note = $1 AND") {
		t.Errorf("normalized = %q", q1.Normalized)
	}
	if q1.Fingerprint != q2.Fingerprint {
		t.Errorf("literal values changed the fingerprint of a long statement: %s vs %s", q1.Fingerprint, q2.Fingerprint)
	}
	if q1.Summary != "SELECT partners" || q1.Operation != "SELECT" {
		t.Errorf("summary %q operation %q", q1.Summary, q1.Operation)
	}
	// A literal cut by the display prefix is still replaced.
	long := "SELECT '" + strings.Repeat("s", 2*truncatedPrefix) + "'"
	if q := queryOf(a.Analyze(long), 0); strings.Contains(q.Normalized, "sss") {
		t.Errorf("cut literal leaked: %q", q.Normalized[:40])
	}
}

func TestSummaryBounded(t *testing.T) {
	var cols []string
	for i := 0; i < 60; i++ {
		cols = append(cols, "some_rather_long_table_name_"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	q := queryOf(New(Config{}).Analyze("SELECT 1 FROM "+strings.Join(cols, ", ")), 0)
	if len(q.Summary) > maxSummary || !strings.HasPrefix(q.Summary, "SELECT some_rather_long_table_name_") || strings.HasSuffix(q.Summary, " ") {
		t.Errorf("summary (%d bytes) = %q", len(q.Summary), q.Summary)
	}
	if len(q.Tables) != 60 || q.Collection != "" {
		t.Errorf("%d tables, collection %q", len(q.Tables), q.Collection)
	}
}

// TestHitAllocations holds the relay's steady state to at most one
// allocation (the goal in issue 3); in practice it is zero.
func TestHitAllocations(t *testing.T) {
	a := New(Config{})
	sql := "SELECT * FROM partners WHERE id = $1 /*application='api',route='%2Fpartners',tenant_id='acme',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/"
	a.Analyze(sql)
	allocs := testing.AllocsPerRun(200, func() {
		res := a.Analyze(sql)
		if !res.Trace.IsValid() {
			t.Fatal("lost the trace context")
		}
	})
	if allocs > 1 {
		t.Errorf("cache hit: %.1f allocations, want at most 1", allocs)
	}
}

func TestConcurrentAnalyze(t *testing.T) {
	a := New(Config{CacheSize: 8})
	texts := []string{
		"SELECT * FROM a WHERE id = 1", "SELECT * FROM b /*application='x'*/", "BEGIN; SELECT 1; COMMIT",
		"SELEC broken 'x'", "INSERT INTO c VALUES (1)", "UPDATE d SET x = 2", "DELETE FROM e",
		"SELECT * FROM f", "SELECT * FROM g", "SELECT * FROM h", "SELECT * FROM i", "SELECT * FROM j",
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				sql := texts[(i*7+g)%len(texts)]
				res := a.Analyze(sql)
				if len(res.Queries) == 0 || res.Queries[0].Fingerprint == "" {
					t.Errorf("Analyze(%q) = %+v", sql, res)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	st := a.Stats()
	if st.Hits+st.Misses != 1200 || st.Size > 8 || st.Evictions == 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestNewDefaults(t *testing.T) {
	got := New(Config{}).Config()
	want := Config{CacheSize: DefaultCacheSize, MaxStatementLength: DefaultMaxStatementLength, TenantKey: DefaultTenantKey}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("defaults (-want +got):\n%s", d)
	}
}

// queryOf is Result.Query on a value that is not addressable.
func queryOf(r Result, i int) *Query { return r.Query(i) }

// TestCacheByShape: texts that differ only in constants share one parse, and
// the shared analysis holds none of their constants; a different identifier,
// operator or parameter is a different shape.
func TestCacheByShape(t *testing.T) {
	a := New(Config{})
	first := a.Analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 71").Queries[0]
	for _, sql := range []string{
		"SELECT abalance FROM pgbench_accounts WHERE aid = 90210",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 'x7'",
		"SELECT abalance  FROM pgbench_accounts /* note */ WHERE aid = $$q$$",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 3 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/",
	} {
		got := a.Analyze(sql).Queries[0]
		if got != first {
			t.Errorf("%q: got a new analysis %+v, want the shared one", sql, got)
		}
	}
	if st := a.Stats(); st.Misses != 1 || st.Hits != 4 || st.Size != 1 {
		t.Errorf("stats %+v: want 1 miss (one parse), 4 hits, 1 exact entry", st)
	}
	if strings.Contains(first.Normalized, "71") || first.Normalized != "SELECT abalance FROM pgbench_accounts WHERE aid = $1" {
		t.Errorf("normalized = %q", first.Normalized)
	}
	for _, sql := range []string{
		"SELECT abalance FROM pgbench_branches WHERE aid = 1",
		"SELECT abalance FROM pgbench_accounts WHERE aid > 1",
		"SELECT abalance FROM pgbench_accounts WHERE aid = $1",
		"SELECT abalance FROM pgbench_accounts WHERE aid = 'open",
	} {
		before := a.Stats().Misses
		if got := a.Analyze(sql).Queries[0]; got == first {
			t.Errorf("%q shares the analysis of another shape", sql)
		}
		if a.Stats().Misses != before+1 {
			t.Errorf("%q: not parsed on its own", sql)
		}
	}
}

// TestPrepareBody: a PREPARE's Query holds the analysis of the statement
// after its AS, which is what an EXECUTE of the name runs.
func TestPrepareBody(t *testing.T) {
	a := New(Config{})
	for _, tt := range []struct{ sql, body string }{
		{"PREPARE q (int, numeric(10,2)) AS SELECT * FROM users WHERE id = $1", "SELECT * FROM users WHERE id = $1"},
		{"prepare q as\n  update users set name = $1 where id = 2 /*traceparent='x'*/", "update users set name = $1 where id = 2"},
		{"PREPARE \"as\" AS DELETE FROM users", "DELETE FROM users"},
	} {
		res := a.Analyze(tt.sql)
		q := res.Query(0)
		want := a.Analyze(tt.body)
		if q == nil || q.Operation != "PREPARE" || q.Body == nil {
			t.Fatalf("%q: %+v, want a PREPARE with a body", tt.sql, q)
		}
		if w := want.Query(0); q.Body.Fingerprint != w.Fingerprint || q.Body.Summary != w.Summary || q.Body.Normalized != w.Normalized {
			t.Errorf("%q: body %+v, want %+v", tt.sql, q.Body, w)
		}
	}
	res := a.Analyze("EXECUTE q(1)")
	if q := res.Query(0); q.Body != nil {
		t.Errorf("EXECUTE has a body: %+v", q.Body)
	}
}
