package export

import "strings"

// Error messages can carry the values a statement was given
// ("invalid input syntax for type integer: \"4111 1111\"", "value \"…\" is
// out of range"): nothing sensitive leaves the proxy by default (DESIGN.md
// decision 10), so a message keeps its words and the names PostgreSQL
// quotes after a noun that says what they name (relation, column,
// constraint, …), and every other quoted part becomes "?". The SQLSTATE
// goes in db.response.status_code whole. Config.RawErrors keeps messages
// as they are.

// identNouns are the words after which PostgreSQL quotes a name, not a
// value.
var identNouns = map[string]bool{
	"relation": true, "table": true, "column": true, "constraint": true, "index": true, "type": true,
	"function": true, "procedure": true, "schema": true, "database": true, "role": true, "user": true,
	"sequence": true, "view": true, "trigger": true, "extension": true, "cursor": true, "portal": true,
	"statement": true, "savepoint": true, "channel": true, "collation": true, "domain": true, "policy": true,
	"publication": true, "subscription": true, "tablespace": true, "server": true, "rule": true,
	"operator": true, "aggregate": true, "language": true, "conversion": true, "parameter": true,
	"attribute": true, "enum": true, "partition": true, "slot": true, "transaction": true,
}

// scrubError returns msg with every double-quoted part that is not a name
// replaced by "?".
func scrubError(msg string) string {
	if strings.IndexByte(msg, '"') < 0 {
		return msg
	}
	var b strings.Builder
	b.Grow(len(msg))
	i := 0
	for i < len(msg) {
		q := strings.IndexByte(msg[i:], '"')
		if q < 0 {
			b.WriteString(msg[i:])
			break
		}
		q += i
		// The closing quote; "" inside a quoted part is a quote.
		end := -1
		for j := q + 1; j < len(msg); j++ {
			if msg[j] == '"' {
				if j+1 < len(msg) && msg[j+1] == '"' {
					j++
					continue
				}
				end = j
				break
			}
		}
		b.WriteString(msg[i:q])
		if end < 0 {
			b.WriteString(`"?"`) // unterminated: the rest may be a value
			break
		}
		if identNouns[strings.ToLower(lastWord(msg[:q]))] {
			b.WriteString(msg[q : end+1])
		} else {
			b.WriteString(`"?"`)
		}
		i = end + 1
	}
	return b.String()
}

// lastWord is the last run of letters in s, before trailing spaces.
func lastWord(s string) string {
	s = strings.TrimRight(s, " ")
	j := len(s)
	for j > 0 && (s[j-1]|0x20 >= 'a' && s[j-1]|0x20 <= 'z' || s[j-1] == '_') {
		j--
	}
	return s[j:]
}
