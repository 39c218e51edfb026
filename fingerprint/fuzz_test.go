package fingerprint

import (
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v5"
)

var fuzzSeeds = []string{
	"",
	"SELECT 1",
	"SELECT * FROM partners WHERE id = 42 /*application='api',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/",
	"/*dddbs='db',traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/ SELECT 'zqxjk_secret'",
	"SELECT E'\\' /*application=\\'evil\\'*/' /*application='good'*/",
	"SELECT $$ /* $$ || $t$ $$ $t$ /*a='b'*/",
	"SELECT \"a/*\" FROM t -- /*x='y'*/",
	"SELECT 1 /* a /* b */ c */ /*k='v\\'w%2'*/",
	"/*", "*/", "'", "E'\\", "$a$", "$1$", "--", "\"", "U&'x'", "/*a='", "/*a='b\\",
	"ALTER ROLE x PASSWORD 'hunter2_secret'",
	"SELEC 'zqxjk_literal', 12345678 FROM t",
	"CALL p(123456, 'zqxjk_call')",
	"BEGIN; INSERT INTO t VALUES ('zqxjk_multi'); COMMIT",
	"SELECT * FROM t WHERE a = 'x\x00y' AND b = B'1010' AND c = X'ff' AND d = 1.5e-10",
}

// FuzzParseComment checks the comment scanner on any text: it must not
// panic, the stripped body must be a trimmed substring of the input, and ok
// must agree with the tags found.
func FuzzParseComment(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		tags, stripped, ok := ParseComment(sql)
		if !strings.Contains(sql, stripped) {
			t.Fatalf("stripped %q is not part of %q", stripped, sql)
		}
		// Leading space never belongs to the body; trailing space can, inside
		// an unterminated literal or identifier that runs to the end.
		if strings.TrimLeft(stripped, " \t\n\r\f\v") != stripped {
			t.Fatalf("stripped %q has leading space", stripped)
		}
		if ok != (len(tags) > 0) {
			t.Fatalf("ok = %v with tags %v", ok, tags)
		}
		if tc, err := ParseTraceparent(tags["traceparent"]); err == nil && !tc.IsValid() {
			t.Fatalf("accepted an invalid trace context %+v", tc)
		}
	})
}

// FuzzAnalyze checks Analyze on any text: no panic, a well-formed
// fingerprint for every statement, and no literal of the input in the
// normalized text or the summary.
//
// The literal property: every literal token of the input (by pg_query's
// scanner when it accepts the text, and by this package's lexer always) that
// is at least 4 bytes long and occurs exactly once in the input must not
// occur in any normalized text or summary. Occurring once means an output
// containing it can only have copied it from the literal.
func FuzzAnalyze(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	a := New(Config{CacheSize: 64, MaxStatementLength: 512})
	f.Fuzz(func(t *testing.T, sql string) {
		res := a.Analyze(sql)
		var literals []string
		if sr, err := pg.Scan(sql); err == nil {
			for _, tok := range sr.GetTokens() {
				switch tok.GetToken() {
				case pg.Token_SCONST, pg.Token_USCONST, pg.Token_BCONST, pg.Token_XCONST, pg.Token_ICONST, pg.Token_FCONST:
					if s, e := int(tok.GetStart()), int(tok.GetEnd()); 0 <= s && s <= e && e <= len(sql) {
						literals = append(literals, sql[s:e])
					}
				}
			}
		}
		l := lexer{s: sql}
		for tok := l.next(); tok.kind != tkEOF; tok = l.next() {
			if tok.kind.isLiteral() {
				literals = append(literals, sql[tok.start:tok.end])
			}
		}
		for i, q := range res.Queries {
			if len(q.Fingerprint) != 16 || strings.Trim(q.Fingerprint, "0123456789abcdef") != "" {
				t.Fatalf("statement %d: fingerprint %q", i, q.Fingerprint)
			}
			if len(q.Summary) > maxSummary {
				t.Fatalf("statement %d: summary of %d bytes", i, len(q.Summary))
			}
			for _, lit := range literals {
				if len(lit) < 4 || strings.Count(sql, lit) != 1 {
					continue
				}
				if strings.Contains(q.Normalized, lit) || strings.Contains(q.Summary, lit) {
					t.Fatalf("statement %d: literal %q leaked:\nnormalized %q\nsummary %q", i, lit, q.Normalized, q.Summary)
				}
			}
		}
	})
}
