package fingerprint

import (
	"strconv"
	"strings"
)

// lexNormalize rewrites text into one line that is safe to export: comments
// are dropped, runs of whitespace (and the place of a dropped comment) become
// one space, and, when replaceLiterals is set, every literal (string of any
// kind, dollar-quoted body, number) becomes a $n placeholder numbered after
// the highest $n already in the text. An unterminated quoted identifier is
// replaced too, since it swallowed the rest of the text. hash is FNV-1a over
// the token stream with keywords and identifiers lowercased and every literal
// hashed as '?', so it does not depend on literal values, spacing, comments
// or keyword case.
//
// It is the fallback for texts pg_query rejects and the final pass over
// pg_query's normalized text (which keeps comments).
func lexNormalize(text string, replaceLiterals bool) (out string, hash uint64) {
	next := 1
	if replaceLiterals {
		l := lexer{s: text}
		for t := l.next(); t.kind != tkEOF; t = l.next() {
			if t.kind == tkParam {
				if n, err := strconv.Atoi(text[t.start+1 : t.end]); err == nil && n >= next {
					next = n + 1
				}
			}
		}
	}
	var b strings.Builder
	b.Grow(len(text))
	h := fnvOffset
	gap := false
	l := lexer{s: text}
	for t := l.next(); t.kind != tkEOF; t = l.next() {
		switch t.kind {
		case tkSpace, tkLineComment, tkBlockComment:
			gap = true
			continue
		}
		if gap && b.Len() > 0 {
			b.WriteByte(' ')
		}
		gap = false
		tok := text[t.start:t.end]
		switch {
		case replaceLiterals && (t.kind.isLiteral() || t.kind == tkQuotedIdent && t.open):
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(next))
			next++
			h = fnvString(h, "?")
		case t.kind == tkIdent:
			b.WriteString(tok)
			h = fnvLower(h, tok)
		default:
			b.WriteString(tok)
			h = fnvString(h, tok)
		}
		h = fnvByte(h, ' ')
	}
	return b.String(), h
}

const (
	fnvOffset uint64 = 14695981039346656037
	fnvPrime  uint64 = 1099511628211
)

func fnvByte(h uint64, c byte) uint64 { return (h ^ uint64(c)) * fnvPrime }

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = fnvByte(h, s[i])
	}
	return h
}

func fnvLower(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		h = fnvByte(h, c)
	}
	return h
}

// words returns the identifier and keyword tokens of text that are not
// inside parentheses deeper than maxDepth, uppercased, at most n of them.
// Used for the operation of texts pg_query cannot tell about.
func leadingWords(text string, n int) []string {
	var ws []string
	l := lexer{s: text}
	for t := l.next(); t.kind != tkEOF && len(ws) < n; t = l.next() {
		switch t.kind {
		case tkSpace, tkLineComment, tkBlockComment:
			continue
		case tkIdent:
			// Clone: ToUpper returns its input when it is upper case
			// already, and a cached Query must not pin the caller's text.
			ws = append(ws, strings.Clone(strings.ToUpper(text[t.start:t.end])))
		default:
			return ws
		}
	}
	return ws
}

// objectModifiers are the words between CREATE/ALTER/DROP and the object
// type that the operation name leaves out.
var objectModifiers = map[string]bool{
	"OR": true, "REPLACE": true, "UNIQUE": true, "TEMP": true, "TEMPORARY": true,
	"UNLOGGED": true, "GLOBAL": true, "LOCAL": true, "IF": true, "NOT": true,
	"EXISTS": true, "CONCURRENTLY": true, "RECURSIVE": true, "TRUSTED": true,
	"PROCEDURAL": true, "DEFAULT": true,
}

// lexOperation names the operation of text from its first keywords:
// SELECT, INSERT, … and, for CREATE, ALTER and DROP, the object type too
// (CREATE TABLE, DROP INDEX, ALTER ROLE). WITH is resolved to the first
// top-level data-modifying or SELECT keyword after the CTEs.
func lexOperation(text string) string {
	ws := leadingWords(text, 6)
	if len(ws) == 0 {
		return ""
	}
	switch ws[0] {
	case "CREATE", "ALTER", "DROP":
		for _, w := range ws[1:] {
			if !objectModifiers[w] {
				if w == "MATERIALIZED" || w == "FOREIGN" {
					return ws[0] + " " + w + " " + nextWord(ws, w)
				}
				return ws[0] + " " + w
			}
		}
		return ws[0]
	case "WITH":
		if op := withMainOperation(text); op != "" {
			return op
		}
	case "START":
		return "BEGIN"
	case "END", "ABORT":
		if ws[0] == "END" {
			return "COMMIT"
		}
		return "ROLLBACK"
	}
	return ws[0]
}

func nextWord(ws []string, after string) string {
	for i, w := range ws {
		if w == after && i+1 < len(ws) {
			return ws[i+1]
		}
	}
	return ""
}

// withMainOperation finds the statement keyword that follows the CTE list
// of a WITH query: the first SELECT, INSERT, UPDATE, DELETE or MERGE at
// parenthesis depth 0.
func withMainOperation(text string) string {
	depth := 0
	l := lexer{s: text}
	for t := l.next(); t.kind != tkEOF; t = l.next() {
		switch t.kind {
		case tkOther:
			switch text[t.start] {
			case '(':
				depth++
			case ')':
				depth--
			}
		case tkIdent:
			if depth != 0 {
				continue
			}
			switch w := strings.ToUpper(text[t.start:t.end]); w {
			case "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE":
				if w == "VALUES" || w == "TABLE" {
					return "SELECT"
				}
				return w
			}
		}
	}
	return ""
}

// lexTables guesses the tables of a text pg_query cannot parse: the
// (possibly schema-qualified, possibly quoted) name after FROM, JOIN, INTO,
// UPDATE and TABLE. Only identifiers are returned, never literals.
func lexTables(text string) []string {
	var (
		tables []string
		want   bool   // the previous word introduces a table
		name   string // the name being assembled (schema.table)
		dot    bool   // name ends with a '.'
	)
	flush := func() {
		if name != "" && !dot {
			tables = appendUnique(tables, strings.Clone(name)) // do not pin text
		}
		name, dot = "", false
	}
	l := lexer{s: text}
	for t := l.next(); t.kind != tkEOF; t = l.next() {
		tok := text[t.start:t.end]
		switch t.kind {
		case tkSpace, tkLineComment, tkBlockComment:
			continue
		case tkIdent, tkQuotedIdent:
			if t.kind == tkQuotedIdent && t.open {
				flush()
				want = false
				continue
			}
			if name != "" && dot {
				name += tok
				dot = false
				continue
			}
			if name != "" {
				flush()
			}
			up := strings.ToUpper(tok)
			if want && t.kind == tkIdent && (up == "ONLY" || up == "LATERAL" || up == "TABLE" || up == "IF" || up == "NOT" || up == "EXISTS") {
				continue
			}
			if want && (t.kind == tkQuotedIdent || !sqlKeywords[up]) {
				name = tok
				want = false
				continue
			}
			want = t.kind == tkIdent && (up == "FROM" || up == "JOIN" || up == "INTO" || up == "UPDATE" || up == "TABLE")
		case tkOther:
			if tok == "." && name != "" && !dot {
				name += "."
				dot = true
				continue
			}
			if tok == "(" {
				name = "" // a function call (FROM generate_series(…)), not a table
			}
			flush()
			want = false
		default:
			flush()
			want = false
		}
	}
	flush()
	return tables
}

// sqlKeywords are words that cannot be a table name after FROM and friends.
var sqlKeywords = map[string]bool{
	"SELECT": true, "WHERE": true, "SET": true, "VALUES": true, "DEFAULT": true,
	"STDIN": true, "STDOUT": true, "AS": true, "ON": true, "USING": true,
}

func appendUnique(xs []string, x string) []string {
	for _, y := range xs {
		if y == x {
			return xs
		}
	}
	return append(xs, x)
}
