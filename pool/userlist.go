package pool

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// PgBouncer's limits on the raw (still quoted) fields of an auth_file line
// (MAX_USERNAME and MAX_PASSWORD less the terminating NUL).
const (
	maxUserlistUser     = 128 - 1
	maxUserlistPassword = 65531 - 1
)

// ParseUserlist reads PgBouncer's auth_file format (userlist.txt):
//
//	"username" "password" ...
//
// as PgBouncer's load_auth_file (src/loader.c) reads it:
//   - white space, including empty lines, is skipped before an entry;
//   - a line whose first non-blank character is ';' is a comment ('#' is
//     not: such a line is an error, as PgBouncer calls it a broken file);
//   - a field is enclosed in double quotes, and "" inside stands for one
//     quote;
//   - after the user name, the password field starts at the next double
//     quote, even on a later line (PgBouncer's quirk, kept);
//   - the rest of the line after the password is ignored;
//   - a user listed twice gets the later password.
//
// Where PgBouncer logs "broken auth file" and keeps the users read so far,
// ParseUserlist returns an error that names the line and no users. It also
// refuses a NUL byte, at which PgBouncer's C string would end. The
// password becomes a Secret as ParseSecret classifies it; an empty one is
// kept (it matches no password, as in PgBouncer).
func ParseUserlist(r io.Reader) (map[string]Secret, error) {
	buf, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read auth file: %w", err)
	}
	lines := lineCounter{b: buf}
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		return nil, fmt.Errorf("line %d: NUL byte", lines.at(i))
	}
	users := make(map[string]Secret)
	p := 0
	for {
		for p < len(buf) && isCSpace(buf[p]) {
			p++
		}
		if p == len(buf) {
			return users, nil
		}
		line := lines.at(p)
		if buf[p] == ';' {
			for p < len(buf) && buf[p] != '\n' {
				p++
			}
			continue
		}
		if buf[p] != '"' {
			return nil, fmt.Errorf("line %d: an entry must start with a double-quoted user name", line)
		}
		userStart := p + 1
		p = findQuote(buf, userStart, false)
		if p == len(buf) {
			return nil, fmt.Errorf("line %d: no closing quote after the user name", line)
		}
		if p-userStart > maxUserlistUser {
			return nil, fmt.Errorf("line %d: user name longer than %d bytes", line, maxUserlistUser)
		}
		rawUser := buf[userStart:p]
		p = findQuote(buf, p+1, true)
		if p == len(buf) {
			return nil, fmt.Errorf("line %d: no double-quoted password after the user name", line)
		}
		pwStart := p + 1
		p = findQuote(buf, pwStart, false)
		if p == len(buf) {
			return nil, fmt.Errorf("line %d: no closing quote after the password", lines.at(pwStart))
		}
		if p-pwStart > maxUserlistPassword {
			return nil, fmt.Errorf("line %d: password longer than %d bytes", lines.at(pwStart), maxUserlistPassword)
		}
		user := unquoteField(rawUser)
		users[user] = ParseSecret(user, unquoteField(buf[pwStart:p]))
		for p < len(buf) && buf[p] != '\n' {
			p++
		}
	}
}

// LoadUserlist reads the auth file at path with ParseUserlist.
func LoadUserlist(path string) (map[string]Secret, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	defer f.Close()
	users, err := ParseUserlist(f)
	if err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return users, nil
}

// findQuote is PgBouncer's find_quote: the index of the next '"' from i,
// stepping over "" pairs unless start is set; len(b) when there is none.
func findQuote(b []byte, i int, start bool) int {
	for {
		for i < len(b) && b[i] != '"' {
			i++
		}
		if !start && i+1 < len(b) && b[i+1] == '"' {
			i += 2
			continue
		}
		return i
	}
}

// unquoteField is PgBouncer's copy_quoted: each '"' (always the first of a
// "" pair here) is dropped and the character after it kept.
func unquoteField(raw []byte) string {
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		if raw[i] == '"' {
			i++
			if i == len(raw) {
				break
			}
		}
		b.WriteByte(raw[i])
	}
	return b.String()
}

// isCSpace is C's isspace in the C locale.
func isCSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// lineCounter numbers lines at offsets that only grow, in linear time.
type lineCounter struct {
	b         []byte
	pos, seen int // newlines in b[:pos]
}

func (l *lineCounter) at(i int) int {
	if i < l.pos {
		l.pos, l.seen = 0, 0
	}
	l.seen += bytes.Count(l.b[l.pos:i], []byte{'\n'})
	l.pos = i
	return l.seen + 1
}

// ParseSecret says what a stored password is, as PostgreSQL's and
// PgBouncer's get_password_type do: "md5" and 32 lowercase hex digits is an
// md5 secret; text that parses as SCRAM-SHA-256$... (ParseSCRAMVerifier)
// is a SCRAM secret; anything else, including a malformed SCRAM secret, is
// a plain password.
func ParseSecret(user, password string) Secret {
	if isMD5Secret(password) {
		return Secret{User: user, Kind: SecretMD5, MD5: password}
	}
	if strings.Contains(password, scramMechanism) {
		if v, err := ParseSCRAMVerifier(password); err == nil {
			return Secret{User: user, Kind: SecretSCRAM, SCRAM: v}
		}
	}
	return Secret{User: user, Kind: SecretPlain, Plain: password}
}

func isMD5Secret(s string) bool {
	if len(s) != 35 || !strings.HasPrefix(s, "md5") {
		return false
	}
	for i := 3; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Userlist is a SecretSource over the users of an auth file:
// Userlist(users) for the map ParseUserlist returns.
type Userlist map[string]Secret

// Lookup returns the user's secret, or an error wrapping ErrNoSuchUser.
func (u Userlist) Lookup(_ context.Context, user string) (Secret, error) {
	s, ok := u[user]
	if !ok {
		return Secret{}, fmt.Errorf("user %q not in the auth file: %w", user, ErrNoSuchUser)
	}
	return s, nil
}

// Secrets never print: String, GoString, LogValue and MarshalJSON show the
// user and the kind only, so a Secret passed to a log or an API by mistake
// leaks nothing.

func (k SecretKind) String() string {
	switch k {
	case SecretPlain:
		return "plain"
	case SecretMD5:
		return "md5"
	case SecretSCRAM:
		return "scram-sha-256"
	}
	return "none"
}

func (s Secret) String() string {
	return fmt.Sprintf("Secret{User: %q, Kind: %s, redacted}", s.User, s.Kind)
}

func (s Secret) GoString() string { return s.String() }

func (s Secret) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", s.User), slog.String("kind", s.Kind.String()))
}

func (s Secret) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct{ User, Kind string }{s.User, s.Kind.String()})
}
