package fingerprint

// scanned is the outline of a statement text: its body without the leading
// and trailing comments, whitespace and semicolons, and the contents of the
// comments that may carry sqlcommenter tags. Every string aliases the input.
type scanned struct {
	// body is the text from its first to its last code byte: the cache key
	// and what the parser sees. Comments inside it stay.
	body string
	// lead is the inside of the first block comment before any code, trail
	// the inside of the last block comment after all code (before optional
	// whitespace and ';'). hasLead/hasTrail say whether there was one.
	lead, trail       string
	hasLead, hasTrail bool
	// open reports that body ends in an unterminated literal or quoted
	// identifier (which swallowed the rest of the text).
	open bool
}

// scanSpecial marks the bytes at which scan must look closer: the starts of
// quoted tokens and comments. Everything else is skipped a byte at a time
// without further tests.
var scanSpecial = func() (t [256]bool) {
	for _, c := range "'\"$-/" {
		t[c] = true
	}
	return t
}()

// scan outlines sql in one pass and without allocating. It is the relay's
// hot path, so it does not run the full lexer: it stops only at quotes,
// dollars and comment starts, and treats the runs between comments as code
// segments trimmed of whitespace and ';'. It agrees with the lexer (the
// fuzz test FuzzScanMatchesLexer holds it to scanTokens).
func scan(sql string) scanned {
	var (
		sc           scanned
		first, last  = -1, -1 // byte range of code
		lastComStart = -1
		lastCom      string
		segStart     int
		openToEnd    bool // an unterminated literal or identifier runs to the end
		runs         identRuns
		floor        int // end of the last dollar-quoted token
	)
	segment := func(end int) {
		s, e := segStart, end
		for s < e && (byteClass[sql[s]] == clSpace || sql[s] == ';') {
			s++
		}
		for e > s && (byteClass[sql[e-1]] == clSpace || sql[e-1] == ';') {
			e--
		}
		if s < e {
			if first < 0 {
				first = s
			}
			last = e
		}
	}
	i, n := 0, len(sql)
	for {
		for i < n && !scanSpecial[sql[i]] {
			i++
		}
		if i >= n {
			break
		}
		switch c := sql[i]; {
		case c == '\'':
			esc := i > 0 && sql[i-1]|0x20 == 'e' && (i-1 == floor || !isIdentCont(sql[i-2]))
			i, openToEnd = skipQuoted(sql, i, '\'', esc)
		case c == '"':
			i, openToEnd = skipQuoted(sql, i, '"', false)
		case c == '$':
			if end, ok := dollarTagEnd(sql, i); ok && !runs.inIdentifier(sql, i, floor) {
				if j := indexString(sql, end, sql[i:end]); j < 0 {
					i, openToEnd = n, true
				} else {
					i = j + end - i
				}
				floor = i
			} else {
				i++
			}
		case c == '-' && i+1 < n && sql[i+1] == '-':
			segment(i)
			for i < n && sql[i] != '\n' && sql[i] != '\r' {
				i++
			}
			segStart = i
		case c == '/' && i+1 < n && sql[i+1] == '*':
			segment(i)
			end, open := skipBlockComment(sql, i)
			inner := commentInner(sql[i:end], open)
			if first < 0 && !sc.hasLead {
				sc.lead, sc.hasLead = inner, true
			}
			lastComStart, lastCom = i, inner
			i = end
			segStart = i
		default:
			i++
		}
	}
	segment(n)
	if openToEnd {
		last = n // trailing space inside the open token is part of it
		sc.open = true
	}
	if first >= 0 {
		sc.body = sql[first:last]
	}
	if lastComStart >= 0 && lastComStart >= last {
		sc.trail, sc.hasTrail = lastCom, true
	}
	return sc
}

// commentInner strips the /* and */ of a block comment token.
func commentInner(c string, open bool) string {
	c = c[2:]
	if !open && len(c) >= 2 {
		c = c[:len(c)-2]
	}
	return c
}
