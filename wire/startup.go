package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Startup packet request codes (the int32 after the length).
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	protocolMajor3    = 3 // StartupMessage: major version in the high 16 bits
)

// Startup packet length limits, as PostgreSQL enforces them
// (MAX_STARTUP_PACKET_LENGTH).
const (
	minStartupLen = 8
	maxStartupLen = 10000
)

// startupPacket is a decoded startup-phase packet. raw holds the original
// bytes (length included) and is what the relay forwards.
type startupPacket struct {
	raw  []byte
	code uint32

	// StartupMessage only.
	user, database, application string
	schema                      string // the first schema of a search_path set at startup
	replication                 bool
	params                      [][2]string // every parameter but user and database, in order
}

// readStartup reads one startup-phase packet from r. It reads exactly the
// packet and nothing more, so no bytes sent after it (a TLS ClientHello, or
// data a client sent too early) are consumed.
func readStartup(r io.Reader) (*startupPacket, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < minStartupLen || n > maxStartupLen {
		return nil, &ProtocolError{Len: n, Err: errors.New("length outside 8..10000")}
	}
	raw := make([]byte, n)
	copy(raw, hdr[:])
	if _, err := io.ReadFull(r, raw[4:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return decodeStartup(raw)
}

// decodeStartup decodes a startup packet, raw including its length field.
func decodeStartup(raw []byte) (*startupPacket, error) {
	if len(raw) < minStartupLen || len(raw) > maxStartupLen {
		return nil, &ProtocolError{Len: int64(len(raw)), Err: errors.New("length outside 8..10000")}
	}
	if n := int(binary.BigEndian.Uint32(raw)); n != len(raw) {
		return nil, &ProtocolError{Len: int64(n), Err: fmt.Errorf("declared length differs from the %d bytes read", len(raw))}
	}
	p := &startupPacket{raw: raw, code: binary.BigEndian.Uint32(raw[4:])}
	switch p.code {
	case codeSSLRequest, codeGSSENCRequest:
		if len(raw) != 8 {
			return nil, &ProtocolError{Len: int64(len(raw)), Err: errors.New("SSLRequest/GSSENCRequest must be 8 bytes")}
		}
		return p, nil
	case codeCancelRequest:
		// 16 bytes up to protocol 3.1; 3.2 allows a longer secret key.
		if len(raw) < 16 {
			return nil, &ProtocolError{Len: int64(len(raw)), Err: errors.New("CancelRequest shorter than 16 bytes")}
		}
		return p, nil
	}
	if p.code>>16 != protocolMajor3 {
		return nil, &ProtocolError{Len: int64(len(raw)), Err: fmt.Errorf("unsupported frontend protocol %d.%d", p.code>>16, p.code&0xffff)}
	}
	// Parameters: pairs of NUL-terminated strings, then a final NUL.
	b := raw[8:]
	for {
		if len(b) == 0 {
			return nil, &ProtocolError{Len: int64(len(raw)), Err: errors.New("startup parameters not terminated")}
		}
		if b[0] == 0 {
			if len(b) != 1 {
				return nil, &ProtocolError{Len: int64(len(raw)), Err: errors.New("bytes after the startup parameters")}
			}
			break
		}
		key, rest, ok := cstring(b)
		if !ok {
			return nil, &ProtocolError{Len: int64(len(raw)), Err: errors.New("unterminated startup parameter name")}
		}
		val, rest, ok := cstring(rest)
		if !ok {
			return nil, &ProtocolError{Len: int64(len(raw)), Err: fmt.Errorf("missing value for startup parameter %q", key)}
		}
		switch string(key) {
		case "user":
			p.user = string(val)
		case "database":
			p.database = string(val)
		}
		if k := string(key); k != "user" && k != "database" {
			p.params = append(p.params, [2]string{k, string(val)})
		}
		switch string(key) {
		case "application_name":
			p.application = string(val)
		case "search_path":
			p.schema = firstSchema(string(val))
		case "options":
			if sp, ok := optionSearchPath(string(val)); ok {
				p.schema = firstSchema(sp)
			}
		case "replication":
			// "database" (logical) or a boolean (physical).
			switch string(val) {
			case "false", "off", "no", "0", "":
			default:
				p.replication = true
			}
		}
		b = rest
	}
	if p.user == "" {
		return nil, &ProtocolError{Len: int64(len(raw)), Err: errors.New("no PostgreSQL user name specified in startup packet")}
	}
	if p.database == "" {
		p.database = p.user
	}
	return p, nil
}

// cstring splits a NUL-terminated string off b. The returned slices alias b.
func cstring(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// errorResponse encodes an ErrorResponse message, the way the relay tells a
// client about its own failures (upstream unreachable, protocol error,
// connection limit).
func errorResponse(severity, code, msg string) []byte {
	b := make([]byte, 5, 5+len(severity)*2+len(code)+len(msg)+10)
	b[0] = beErrorResponse
	for _, f := range [...]struct {
		t byte
		v string
	}{{'S', severity}, {'V', severity}, {'C', code}, {'M', msg}} {
		b = append(b, f.t)
		b = append(b, f.v...)
		b = append(b, 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-1))
	return b
}

// optionSearchPath finds search_path in the command-line options of a
// startup packet ("-c search_path=app,public", "--search_path=app").
func optionSearchPath(opts string) (string, bool) {
	found, path := false, ""
	for _, kv := range StartupOptions(opts) {
		if kv[0] == "search_path" {
			found, path = true, kv[1]
		}
	}
	return path, found
}

// StartupOptions reads the settings in a StartupMessage's options
// parameter, as libpq sends them and the backend reads them: "-c
// name=value", "-cname=value" or "--name=value", separated by spaces, a
// backslash escaping the next character. A name's dashes become
// underscores; the pairs come in order.
func StartupOptions(opts string) [][2]string {
	var args []string
	var cur []byte
	esc := false
	for i := 0; i < len(opts); i++ {
		c := opts[i]
		switch {
		case esc:
			cur, esc = append(cur, c), false
		case c == '\\':
			esc = true
		case c == ' ' || c == '\t':
			if len(cur) > 0 {
				args, cur = append(args, string(cur)), nil
			}
		default:
			cur = append(cur, c)
		}
	}
	if len(cur) > 0 {
		args = append(args, string(cur))
	}
	var out [][2]string
	for i, a := range args {
		var kv string
		switch {
		case a == "-c" && i+1 < len(args):
			kv = args[i+1]
		case strings.HasPrefix(a, "-c") && len(a) > 2:
			kv = a[2:]
		case strings.HasPrefix(a, "--"):
			kv = a[2:]
		default:
			continue
		}
		if k, v, ok := strings.Cut(kv, "="); ok {
			out = append(out, [2]string{strings.ReplaceAll(k, "-", "_"), v})
		}
	}
	return out
}

// firstSchema is the first schema of a search_path value that names one
// ("$user" names the user's own schema only when it exists: skipped);
// unquoted names are folded to lower case, as PostgreSQL folds them.
func firstSchema(path string) string {
	for _, s := range strings.Split(path, ",") {
		s = strings.TrimSpace(s)
		if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
			s = strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
			if s == "$user" {
				continue
			}
			return s
		}
		if s == "" || strings.EqualFold(s, "$user") {
			continue
		}
		return strings.ToLower(s)
	}
	return ""
}
