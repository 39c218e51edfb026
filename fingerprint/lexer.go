package fingerprint

import "strings"

// The lexer splits SQL text into tokens the way PostgreSQL's scanner does as
// far as comments, literals and quoting go: it knows standard strings
// ('it''s'), escape strings (E'\''), bit/hex/national/Unicode strings (B'',
// X'', N'', U&''), dollar-quoted bodies ($tag$…$tag$), quoted identifiers
// ("a""b"), nested /* /* */ */ block comments and -- line comments. It is
// tolerant: unterminated constructs run to the end of the text and are
// flagged, never an error. Tokens are byte ranges of the input, so lexing
// never allocates.
//
// It assumes standard_conforming_strings = on (the default since
// PostgreSQL 9.1): in a plain '' string a backslash is an ordinary character.

type tokenKind uint8

const (
	tkEOF          tokenKind = iota
	tkSpace                  // whitespace
	tkLineComment            // -- … up to the newline
	tkBlockComment           // /* … */, nested
	tkString                 // '…', E'…', B'…', X'…', N'…', U&'…'
	tkDollar                 // $tag$…$tag$
	tkNumber                 // 42, 1.5e-3, .5, 0x1F, 1_000
	tkParam                  // $1
	tkQuotedIdent            // "…"
	tkIdent                  // keywords and identifiers
	tkSemicolon              // ;
	tkOther                  // any other single byte (operators, punctuation)
)

// isLiteral reports whether tokens of kind k hold a constant value, which
// must never leave the proxy.
func (k tokenKind) isLiteral() bool {
	return k == tkString || k == tkDollar || k == tkNumber
}

type token struct {
	kind       tokenKind
	start, end int  // byte range in the input
	open       bool // unterminated string, identifier or comment
}

// byte classes for the fast loops.
const (
	clOther  = 0
	clSpace  = 1
	clIdent  = 2 // may continue an identifier: letters, digits, _, $, non-ASCII
	clDigit  = 3 // digits are also identifier continuations
	clLetter = 4 // may start an identifier: letters, _, non-ASCII
)

var byteClass = func() (t [256]uint8) {
	for _, c := range " \t\n\r\f\v" {
		t[c] = clSpace
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = clLetter
		t[c-'a'+'A'] = clLetter
	}
	t['_'] = clLetter
	for c := 0x80; c < 0x100; c++ {
		t[c] = clLetter
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = clDigit
	}
	t['$'] = clIdent
	return t
}()

func isIdentStart(c byte) bool { return byteClass[c] == clLetter }
func isIdentCont(c byte) bool  { return byteClass[c] >= clIdent }

// identRuns answers, for scan, whether a '$' continues an identifier, as
// the lexer would see it: scan jumps from one special byte to the next and
// does not know where the tokens of a run of identifier characters begin
// (a$b$ is one identifier; after 0 or $1 a $$ opens a dollar quote; in
// $1a$$ the identifier a$$ follows the parameter $1). It lexes the run
// before the '$' forward with the lexer's rules for such characters.
//
// It remembers where the run seen last ended and whether an identifier was
// open there, so that a run full of '$' is lexed once and not once per '$'
// (which would make scan quadratic).
type identRuns struct {
	to int  // index after the '$' seen last
	in bool // whether that '$' continued an identifier
}

// inIdentifier reports whether the '$' at s[i] continues an identifier.
// floor is the end of the last dollar-quoted token: its closing $tag$ is
// made of identifier characters, but a run never reaches back into it.
func (r *identRuns) inIdentifier(s string, i, floor int) bool {
	lo := max(r.to, floor)
	j := i
	for j > lo && isIdentCont(s[j-1]) {
		j--
	}
	if j == r.to && r.to > floor && isIdentCont(s[j-1]) {
		// Contiguous with the run seen last.
		if r.in {
			r.to = i + 1
			return true
		}
		j = r.to - 1 // that '$' began a token
	}
	in := identOpenAt(s, j, i)
	r.to, r.in = i+1, in
	return in
}

// identOpenAt lexes s[k:i], identifier characters with a token boundary at
// k, and reports whether an identifier is still open at i.
func identOpenAt(s string, k, i int) bool {
	for k < i {
		switch c := s[k]; {
		case isIdentStart(c):
			return true // an identifier swallows the rest of the run
		case byteClass[c] == clDigit:
			for k < i && s[k] != '$' { // a number, letters glued to it included
				k++
			}
		default: // '$': a parameter $n, or a lone '$'
			k++
			for k < i && byteClass[s[k]] == clDigit {
				k++
			}
		}
	}
	return false
}

// lexer walks s token by token. The zero value is not usable; use
// lexer{s: text}.
type lexer struct {
	s     string
	i     int
	floor int // end of the last dollar-quoted token (see identRuns)
}

// next returns the next token, tkEOF at the end.
func (l *lexer) next() token {
	s, i := l.s, l.i
	if i >= len(s) {
		return token{kind: tkEOF, start: i, end: i}
	}
	t := token{start: i}
	c := s[i]
	switch {
	case byteClass[c] == clSpace:
		i++
		for i < len(s) && byteClass[s[i]] == clSpace {
			i++
		}
		t.kind = tkSpace
	case c == '-' && i+1 < len(s) && s[i+1] == '-':
		t.kind = tkLineComment
		i += 2
		for i < len(s) && s[i] != '\n' && s[i] != '\r' {
			i++
		}
	case c == '/' && i+1 < len(s) && s[i+1] == '*':
		t.kind = tkBlockComment
		i, t.open = skipBlockComment(s, i)
	case c == '\'':
		t.kind = tkString
		i, t.open = skipQuoted(s, i, '\'', false)
	case c == '"':
		t.kind = tkQuotedIdent
		i, t.open = skipQuoted(s, i, '"', false)
	case c == '$':
		if i+1 < len(s) && byteClass[s[i+1]] == clDigit {
			t.kind = tkParam
			i++
			for i < len(s) && byteClass[s[i]] == clDigit {
				i++
			}
			break
		}
		if end, ok := dollarTagEnd(s, i); ok {
			t.kind = tkDollar
			tag := s[i:end]
			j := indexString(s, end, tag)
			if j < 0 {
				i, t.open = len(s), true
			} else {
				i = j + len(tag)
			}
			l.floor = i
			break
		}
		t.kind = tkOther
		i++
	case byteClass[c] == clDigit || (c == '.' && i+1 < len(s) && byteClass[s[i+1]] == clDigit):
		t.kind = tkNumber
		i = skipNumber(s, i)
	case isIdentStart(c):
		j := i + 1
		for j < len(s) && isIdentCont(s[j]) {
			j++
		}
		// Prefixed string constants: E'…' (with backslash escapes), B'…',
		// X'…', N'…' and U&'…'.
		// (A '$' before the letter, as in $e'…', continues no identifier
		// here but would in scan's look-behind; both read it as no prefix.)
		if w := j - i; w == 1 && j < len(s) && s[j] == '\'' && (i == l.floor || !isIdentCont(s[i-1])) {
			switch c | 0x20 {
			case 'e':
				t.kind = tkString
				i, t.open = skipQuoted(s, j, '\'', true)
				l.i = i
				t.end = i
				return t
			case 'b', 'x', 'n':
				t.kind = tkString
				i, t.open = skipQuoted(s, j, '\'', false)
				l.i = i
				t.end = i
				return t
			}
		}
		if j-i == 1 && c|0x20 == 'u' && j+1 < len(s) && s[j] == '&' && s[j+1] == '\'' {
			t.kind = tkString
			i, t.open = skipQuoted(s, j+1, '\'', false)
			l.i = i
			t.end = i
			return t
		}
		t.kind = tkIdent
		i = j
	case c == ';':
		t.kind = tkSemicolon
		i++
	default:
		t.kind = tkOther
		i++
	}
	l.i = i
	t.end = i
	return t
}

// skipBlockComment returns the index after the /* … */ comment starting at
// i, following PostgreSQL's nesting rules; open is true when it is
// unterminated (it then runs to the end).
func skipBlockComment(s string, i int) (end int, open bool) {
	// Fast path: the first */ closes the comment unless another /* opens
	// before it.
	if j := strings.Index(s[i+2:], "*/"); j >= 0 && !strings.Contains(s[i+2:i+2+j], "/*") {
		return i + 2 + j + 2, false
	}
	depth := 0
	for i < len(s) {
		if i+1 < len(s) {
			if s[i] == '/' && s[i+1] == '*' {
				depth++
				i += 2
				continue
			}
			if s[i] == '*' && s[i+1] == '/' {
				depth--
				i += 2
				if depth == 0 {
					return i, false
				}
				continue
			}
		}
		i++
	}
	return len(s), true
}

// skipQuoted returns the index after the quoted token whose opening quote is
// at i. A doubled quote stands for itself; with backslash, \x escapes the
// next byte (E'…' strings).
func skipQuoted(s string, i int, q byte, backslash bool) (end int, open bool) {
	i++
	for i < len(s) {
		c := s[i]
		switch {
		case backslash && c == '\\':
			i += 2
			continue
		case c == q:
			if i+1 < len(s) && s[i+1] == q {
				i += 2
				continue
			}
			return i + 1, false
		}
		i++
	}
	return len(s), true
}

// dollarTagEnd reports whether a dollar-quote delimiter ($$ or $tag$) starts
// at i and returns the index after it. The caller has checked that s[i] is
// '$' and does not continue an identifier (a$b$ is one identifier).
func dollarTagEnd(s string, i int) (int, bool) {
	j := i + 1
	if j < len(s) && s[j] == '$' {
		return j + 1, true
	}
	if j >= len(s) || !isIdentStart(s[j]) {
		return 0, false
	}
	for j < len(s) && s[j] != '$' {
		if !isIdentCont(s[j]) {
			return 0, false
		}
		j++
	}
	if j >= len(s) {
		return 0, false
	}
	return j + 1, true
}

// skipNumber returns the index after the numeric constant starting at i.
// It is generous (1e5, 0x1F, 1_000, 1.5e-3 and junk such as 123abc form one
// token): everything it swallows is replaced as a literal anyway.
func skipNumber(s string, i int) int {
	for i < len(s) {
		c := s[i]
		switch {
		case byteClass[c] == clDigit, c == '.', c == '_':
			i++
		case c|0x20 == 'e' && i+2 < len(s) && (s[i+1] == '+' || s[i+1] == '-') && byteClass[s[i+2]] == clDigit:
			i += 2
		case byteClass[c] == clLetter:
			// Letters glued to a number (0x1F, 1e5, junk such as 1abc or
			// 0é) stay in the token; scan's look-behind for '$' relies on
			// a run that starts with a digit being a number to its end.
			i++
		default:
			return i
		}
	}
	return i
}

// indexString is strings.Index(s[from:], sub) + from, or -1.
func indexString(s string, from int, sub string) int {
	j := strings.Index(s[from:], sub)
	if j < 0 {
		return -1
	}
	return from + j
}
