package fingerprint

import "strings"

// ParseComment reads the sqlcommenter tags of sql: the pairs of its last
// trailing comment or, when that has none, of its leading comment. Keys and
// values are decoded (URL-decoding, \' unescaping); a repeated key keeps its
// last value. stripped is sql without its leading and trailing comments,
// whitespace and semicolons (a substring of sql). ok reports whether a
// comment with at least one pair was found.
//
// ParseComment allocates the map; Analyzer.Analyze reads comments without
// allocating.
func ParseComment(sql string) (tags map[string]string, stripped string, ok bool) {
	sc := scan(sql)
	it, k, v, found := sc.firstPair()
	if !found {
		return nil, sc.body, false
	}
	tags = make(map[string]string)
	for ; found; k, v, found = it.next() {
		tags[decodeTag(k)] = decodeTag(v)
	}
	return tags, sc.body, true
}

// firstPair picks the comment that carries the tags, the trailing one if
// it holds a pair, else the leading one if it does, and returns an
// iterator over the rest of it with its first pair.
func (sc *scanned) firstPair() (it pairIter, key, val string, ok bool) {
	if sc.hasTrail {
		it = newPairIter(sc.trail)
		if key, val, ok = it.next(); ok {
			return it, key, val, true
		}
	}
	if sc.hasLead {
		it = newPairIter(sc.lead)
		if key, val, ok = it.next(); ok {
			return it, key, val, true
		}
	}
	return it, "", "", false
}

// pairIter walks the key='value' pairs of a comment's inside. It accepts
// what libraries write besides the spec: spaces around '=' and after commas,
// "double-quoted" and unquoted values, and, in a comment without any '=',
// the key:value pairs of Rails' legacy QueryLogs format. Segments that are
// not pairs are skipped. Keys and values are returned raw (still encoded);
// they alias the comment.
type pairIter struct {
	s   string
	i   int
	sep byte // '=' normally, ':' for the legacy format
}

func newPairIter(s string) pairIter {
	p := pairIter{s: s, sep: '='}
	if strings.IndexByte(s, '=') < 0 {
		p.sep = ':'
	}
	return p
}

func (p *pairIter) next() (key, val string, ok bool) {
	s := p.s
	for p.i < len(s) {
		i := p.i
		for i < len(s) && (s[i] == ',' || byteClass[s[i]] == clSpace) {
			i++
		}
		if i >= len(s) {
			p.i = i
			return "", "", false
		}
		// The key runs to the separator; a ',' first means a segment
		// without a pair.
		k := i
		for i < len(s) && s[i] != p.sep && s[i] != ',' && s[i] != '\'' {
			i++
		}
		if i >= len(s) || s[i] != p.sep {
			p.i = skipSegment(s, i)
			continue
		}
		key = trimSpace(s[k:i])
		i++
		for i < len(s) && byteClass[s[i]] == clSpace {
			i++
		}
		switch {
		case i < len(s) && (s[i] == '\'' || s[i] == '"'):
			q := s[i]
			j := i + 1
			for {
				k := strings.IndexByte(s[j:], q)
				if k < 0 {
					j = len(s)
					break
				}
				j += k
				if !escapedAt(s, i+1, j) {
					break
				}
				j++
			}
			val = s[i+1 : j]
			i = j + 1
		default:
			j := i
			for j < len(s) && s[j] != ',' {
				j++
			}
			val = trimSpace(s[i:j])
			i = j
		}
		if i > len(s) {
			i = len(s)
		}
		p.i = i
		if key == "" || strings.IndexByte(key, ' ') >= 0 {
			continue
		}
		return key, val, true
	}
	return "", "", false
}

// skipSegment returns the index after the next ',' outside quotes from i.
func skipSegment(s string, i int) int {
	for i < len(s) && s[i] != ',' {
		if s[i] == '\'' {
			j, _ := skipQuoted(s, i, '\'', true)
			i = j
			continue
		}
		i++
	}
	return i
}

// decodeTag undoes the sqlcommenter encoding: \x escapes first, then
// URL percent-encoding. A '+' stays a '+' (the spec encodes spaces as %20).
// Invalid percent escapes are kept as written. Without '\' or '%' the input
// is returned as is, without allocating.
func decodeTag(s string) string {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '\\') < 0 {
		return s // the common case, found with the vectorized search
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// escapedAt reports whether the quote at s[j] is escaped: preceded by an odd
// number of backslashes that start at or after from.
func escapedAt(s string, from, j int) bool {
	n := 0
	for k := j - 1; k >= from && s[k] == '\\'; k-- {
		n++
	}
	return n%2 == 1
}

// trimSpace is strings.TrimSpace for ASCII whitespace, cheap when there is
// none (the usual case for tag keys).
func trimSpace(s string) string {
	for len(s) > 0 && byteClass[s[0]] == clSpace {
		s = s[1:]
	}
	for len(s) > 0 && byteClass[s[len(s)-1]] == clSpace {
		s = s[:len(s)-1]
	}
	return s
}
