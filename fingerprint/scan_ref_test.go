package fingerprint

import (
	"strings"
	"testing"
	"time"
)

// scanTokens is the reference for scan: the same outline computed with the
// full lexer, token by token.
func scanTokens(sql string) scanned {
	var (
		sc               scanned
		first, last      = -1, -1
		lastCommentStart = -1
		lastComment      string
	)
	l := lexer{s: sql}
	for {
		t := l.next()
		switch t.kind {
		case tkEOF:
			if first >= 0 {
				sc.body = sql[first:last]
			}
			if lastCommentStart >= 0 && lastCommentStart >= last {
				sc.trail, sc.hasTrail = lastComment, true
			}
			return sc
		case tkSpace, tkLineComment, tkSemicolon:
		case tkBlockComment:
			inner := commentInner(sql[t.start:t.end], t.open)
			if first < 0 && !sc.hasLead {
				sc.lead, sc.hasLead = inner, true
			}
			lastCommentStart, lastComment = t.start, inner
		default:
			if first < 0 {
				first = t.start
			}
			last = t.end
			sc.open = t.open
		}
	}
}

// FuzzScanMatchesLexer holds the hot-path scanner to the lexer.
func FuzzScanMatchesLexer(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if got, want := scan(sql), scanTokens(sql); got != want {
			t.Fatalf("scan(%q)\n = %+v\nlexer %+v", sql, got, want)
		}
	})
}

func TestScanMatchesLexerEdges(t *testing.T) {
	for _, sql := range []string{
		`$e'\'' /*a='b'*/`, `1e'\'' /*a='b'*/`, `xe'\'' /*a='b'*/`, `e'\'' /*a='b'*/`, `(E'\'' /*a='b'*/)`,
		`"open `, `'open `, `$$ open `, `$a$ $b$ `, `a$b$ /*x='y'*/`, `/* open`, `-- x`, `;;`, ``,
	} {
		if got, want := scan(sql), scanTokens(sql); got != want {
			t.Errorf("scan(%q)\n = %+v\nlexer %+v", sql, got, want)
		}
	}
}

// TestScanLinear guards against quadratic look-behind on runs of '$'.
func TestScanLinear(t *testing.T) {
	for _, unit := range []string{"0$", "a$", "$", "0$0", "'", "/*", "$a"} {
		sql := strings.Repeat(unit, 1<<16)
		start := time.Now()
		got := scan(sql)
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Errorf("scan of %d × %q took %v", 1<<16, unit, d)
		}
		if want := scanTokens(sql); got != want {
			t.Errorf("scan(%d × %q) disagrees with the lexer", 1<<16, unit)
		}
	}
}

func TestScanMatchesLexerDollarRuns(t *testing.T) {
	for _, sql := range []string{"0$0$$ x $$ /*a='b'*/", "a$0$$ /*a='b'*/", "$1$$ x $$", "0$$$$000000 0''0", "x$a$ $a$ /*c='d'*/", "$a$xyz$a$$$", "$$$$A$$/ ", "$$x$$e'\\'' /*a='b'*/", "0\x8b$$$ ", "$0A$$", "$0A$$ $$", "$1$$ $$", "0e--", "$a$ $a$$0a$$ $$"} {
		if got, want := scan(sql), scanTokens(sql); got != want {
			t.Errorf("scan(%q)\n = %+v\nlexer %+v", sql, got, want)
		}
	}
}

// FuzzQuickScan holds the fast path to scan: whenever quickScan's body is a
// body scan could return that does not end in an open token (the only kind
// of cache entry the fast path accepts), its outline is scan's.
func FuzzQuickScan(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Add("SELECT 1 -- x /*a='b'*/")
	f.Add("SELECT '/*' /*a='b'*/")
	f.Add("SELECT $$ /*a='b'*/ $$")
	f.Add("SELECT 1 /* a /* b */ c */")
	f.Add("/*lead='x'*/ SELECT 1 ; /*t='y'*/ ;")
	f.Fuzz(func(t *testing.T, sql string) {
		q, ok := quickScan(sql)
		if !ok {
			return
		}
		if b := scan(q.body); b.body != q.body || b.open {
			return // not a body the fast path may trust
		}
		if want := scan(sql); q != want {
			t.Fatalf("quickScan(%q)\n = %+v\nscan %+v", sql, q, want)
		}
	})
}
