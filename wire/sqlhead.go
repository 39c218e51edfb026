package wire

// SQL-level prepared statements share their names with the protocol's:
// PREPARE defines a name that a Bind may use, EXECUTE runs a name that a
// Parse defined, and DEALLOCATE and DISCARD ALL drop names of either kind.
// The relay keeps its statement names right by reading the head of each
// simple Query: the command and the name, nothing more. Only the first
// statement of a multi-statement Query is read this way.

// utilityKind is a statement that changes or uses a prepared statement
// name.
type utilityKind uint8

const (
	utilNone          utilityKind = iota
	utilPrepare                   // PREPARE name [(types)] AS statement
	utilExecute                   // EXECUTE name [(parameters)]
	utilDeallocate                // DEALLOCATE [PREPARE] name
	utilDeallocateAll             // DEALLOCATE [PREPARE] ALL, DISCARD ALL
)

// utility is what parseUtility read from the head of a Query.
type utility struct {
	kind utilityKind
	name string // the statement name as PostgreSQL stores it (unquoted names folded to lower case)
}

// parseUtility reads the command at the head of q, a Query string, and the
// prepared statement name it names. Anything it does not recognise is
// utilNone. It allocates only for a recognised name.
func parseUtility(q []byte) utility {
	i := skipSpace(q, 0)
	if i >= len(q) {
		return utility{}
	}
	switch q[i] | 0x20 { // the first letter of the four commands, either case
	case 'p', 'e', 'd':
	default:
		return utility{}
	}
	word, i := keyword(q, i)
	switch {
	case equalFold(word, "prepare"):
		name, j, ok := identifier(q, skipSpace(q, i))
		if !ok {
			return utility{}
		}
		// PREPARE TRANSACTION 'gid' is two-phase commit: what follows a
		// statement name is a type list or AS.
		j = skipSpace(q, j)
		if j < len(q) && q[j] == '(' {
			return utility{kind: utilPrepare, name: name}
		}
		if w, _ := keyword(q, j); equalFold(w, "as") {
			return utility{kind: utilPrepare, name: name}
		}
	case equalFold(word, "execute"):
		if name, _, ok := identifier(q, skipSpace(q, i)); ok {
			return utility{kind: utilExecute, name: name}
		}
	case equalFold(word, "deallocate"):
		i = skipSpace(q, i)
		w, j := keyword(q, i)
		if equalFold(w, "prepare") {
			// DEALLOCATE PREPARE name, unless "prepare" is the name.
			if k := skipSpace(q, j); k < len(q) && q[k] != ';' {
				i = k
				w, j = keyword(q, i)
			}
		}
		if equalFold(w, "all") && atEnd(q, j) {
			return utility{kind: utilDeallocateAll}
		}
		if name, j, ok := identifier(q, i); ok && atEnd(q, j) {
			return utility{kind: utilDeallocate, name: name}
		}
	case equalFold(word, "discard"):
		if w, j := keyword(q, skipSpace(q, i)); equalFold(w, "all") && atEnd(q, j) {
			return utility{kind: utilDeallocateAll}
		}
	}
	return utility{}
}

// skipSpace returns the index of the first byte at or after i that is not
// white space or inside a comment (-- to the end of the line, or /* */,
// which nest).
func skipSpace(q []byte, i int) int {
	for i < len(q) {
		switch c := q[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			depth := 0
			for i < len(q) {
				if q[i] == '/' && i+1 < len(q) && q[i+1] == '*' {
					depth++
					i += 2
				} else if q[i] == '*' && i+1 < len(q) && q[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		default:
			return i
		}
	}
	return i
}

// atEnd reports whether only space, comments and semicolons follow i:
// the statement ends there.
func atEnd(q []byte, i int) bool {
	for {
		i = skipSpace(q, i)
		if i >= len(q) {
			return true
		}
		if q[i] != ';' {
			return false
		}
		i++
	}
}

// keyword returns the run of letters at i and the index after it.
func keyword(q []byte, i int) ([]byte, int) {
	j := i
	for j < len(q) && (q[j]|0x20 >= 'a' && q[j]|0x20 <= 'z') {
		j++
	}
	return q[i:j], j
}

// identifier reads the SQL identifier at i: a double-quoted one as
// written ("" standing for "), an unquoted one folded to lower case as
// PostgreSQL folds it. ok is false when none starts at i.
func identifier(q []byte, i int) (name string, end int, ok bool) {
	if i >= len(q) {
		return "", i, false
	}
	if q[i] == '"' {
		var b []byte
		for j := i + 1; j < len(q); j++ {
			if q[j] != '"' {
				continue
			}
			if j+1 < len(q) && q[j+1] == '"' {
				b = append(b, q[i+1:j+1]...)
				i = j + 1
				j++
				continue
			}
			b = append(b, q[i+1:j]...)
			if len(b) == 0 {
				return "", j + 1, false // a zero-length identifier is an error
			}
			return string(b), j + 1, true
		}
		return "", len(q), false
	}
	j := i
	for j < len(q) && identByte(q[j], j == i) {
		j++
	}
	if j == i {
		return "", i, false
	}
	b := make([]byte, j-i)
	for k := range b {
		c := q[i+k]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[k] = c
	}
	return string(b), j, true
}

// identByte reports whether c may appear in an unquoted identifier (at its
// start when first): letters, underscore and any non-ASCII byte, and after
// the first, digits and $.
func identByte(c byte, first bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c >= 0x80:
		return true
	case c >= '0' && c <= '9', c == '$':
		return !first
	}
	return false
}

// equalFold reports whether b is the lower-case ASCII word w in any case.
func equalFold(b []byte, w string) bool {
	if len(b) != len(w) {
		return false
	}
	for i := range b {
		if b[i]|0x20 != w[i] {
			return false
		}
	}
	return true
}
