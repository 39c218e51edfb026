package fingerprint

import "strings"

// quickScan is the cache-hit fast path of scan. It outlines sql without
// lexing its body: it strips leading whitespace, semicolons and comments
// (exactly, lexing from the start), then finds a trailing block comment by
// searching backwards from the end and checks that it is one comment that
// ends there.
//
// The outline is right whenever the body it returns is itself a body scan
// could return (scan(body).body == body), because such a text lexes from a
// neutral state to a closed code token at its end: the comment after it
// then really is a comment, whatever it contains. The cache holds only such
// bodies, so Analyze trusts quickScan only when its body is found in the
// cache; otherwise it runs scan. FuzzQuickScan holds it to this.
func quickScan(sql string) (sc scanned, ok bool) {
	i, n := 0, len(sql)
	// Leading whitespace, semicolons and comments.
	for i < n {
		c := sql[i]
		switch {
		case byteClass[c] == clSpace || c == ';':
			i++
		case c == '/' && i+1 < n && sql[i+1] == '*':
			end, open := skipBlockComment(sql, i)
			if open {
				return sc, false
			}
			if !sc.hasLead {
				sc.lead, sc.hasLead = sql[i+2:end-2], true
			}
			i = end
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' && sql[i] != '\r' {
				i++
			}
		default:
			goto body
		}
	}
	return sc, false // no code
body:
	// Trailing whitespace and semicolons, then at most one block comment.
	e := n
	for e > i && (byteClass[sql[e-1]] == clSpace || sql[e-1] == ';') {
		e--
	}
	if e-i >= 4 && sql[e-2:e] == "*/" {
		// The last "/*" before the end (strings.LastIndex hashes every
		// byte; comments rarely hold a '/', so look for those alone).
		k := e - 2
		for {
			k = strings.LastIndexByte(sql[i:k], '/')
			if k < 0 {
				return sc, false
			}
			k += i
			if sql[k+1] == '*' {
				break
			}
		}
		if end, open := skipBlockComment(sql, k); open || end != e {
			return sc, false // nested, or not one comment
		}
		sc.trail, sc.hasTrail = sql[k+2:e-2], true
		e = k
		for e > i && (byteClass[sql[e-1]] == clSpace || sql[e-1] == ';') {
			e--
		}
	}
	if e <= i {
		return sc, false
	}
	sc.body = sql[i:e]
	return sc, true
}
