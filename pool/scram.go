package pool

// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it: no channel
// binding (the proxy never offers SCRAM-SHA-256-PLUS), the GS2 header "n,,"
// (or "y,," from a client on TLS that would bind if it could), and a
// username attribute that is sent empty and ignored: the user is the one of
// the StartupMessage.
//
// The message parsers follow PostgreSQL's auth-scram.c (and PgBouncer's
// scram.c, which copies it) attribute by attribute, so that a client
// PostgreSQL accepts is accepted here and the same malformed messages are
// refused.

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

const (
	scramMechanism     = "SCRAM-SHA-256"
	scramPlusMechanism = "SCRAM-SHA-256-PLUS"
	scramSchemePrefix  = scramMechanism + "$"

	// DefaultSCRAMIterations is PostgreSQL's default scram_iterations; a
	// verifier derived from a plain password uses it.
	DefaultSCRAMIterations = 4096

	scramSaltLen  = 16 // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
	scramNonceLen = 18 // PostgreSQL's SCRAM_RAW_NONCE_LEN, before base64
	scramKeyLen   = sha256.Size
)

var (
	// errSCRAMMalformed is a SCRAM message that breaks the syntax
	// (PostgreSQL: "malformed SCRAM message", SQLSTATE 08P01).
	errSCRAMMalformed = errors.New("malformed SCRAM message")
	// errSCRAMUnsupported is a SCRAM feature PostgreSQL does not support
	// either: an authorization identity, an extension, channel binding
	// (SQLSTATE 0A000 or 08P01 as PostgreSQL words it).
	errSCRAMUnsupported = errors.New("unsupported SCRAM feature")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errSCRAMMalformed, fmt.Sprintf(format, args...))
}

// ParseSCRAMVerifier parses a SCRAM secret as PostgreSQL stores it in
// pg_authid.rolpassword:
//
//	SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
//
// It splits the text as PostgreSQL's and PgBouncer's parse_scram_secret do
// (strtok on "$" and ":"), decodes the base64 parts with their decoder, and
// also requires 1 <= iterations <= 2^31-1, which they leave to the exchange.
// The error never quotes the secret.
func ParseSCRAMVerifier(s string) (*SCRAMVerifier, error) {
	tok := strtok{s: s}
	scheme, ok1 := tok.next("$")
	iters, ok2 := tok.next(":")
	salt, ok3 := tok.next("$")
	stored, ok4 := tok.next(":")
	server, ok5 := tok.rest()
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return nil, errors.New("SCRAM secret: want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	if scheme != scramMechanism {
		return nil, errors.New("SCRAM secret: scheme is not SCRAM-SHA-256")
	}
	n, ok := strtol(iters)
	if !ok || n < 1 || n > math.MaxInt32 {
		return nil, errors.New("SCRAM secret: bad iteration count")
	}
	v := &SCRAMVerifier{Iterations: int(n)}
	if v.Salt, ok = pgBase64Decode(salt); !ok {
		return nil, errors.New("SCRAM secret: salt is not base64")
	}
	if v.StoredKey, ok = pgBase64Decode(stored); !ok || len(v.StoredKey) != scramKeyLen {
		return nil, errors.New("SCRAM secret: StoredKey is not 32 bytes of base64")
	}
	if v.ServerKey, ok = pgBase64Decode(server); !ok || len(v.ServerKey) != scramKeyLen {
		return nil, errors.New("SCRAM secret: ServerKey is not 32 bytes of base64")
	}
	return v, nil
}

// encode is the verifier in pg_authid's text form. It is a secret: never
// log it.
func (v *SCRAMVerifier) encode() string {
	return scramSchemePrefix + strconv.Itoa(v.Iterations) + ":" +
		base64.StdEncoding.EncodeToString(v.Salt) + "$" +
		base64.StdEncoding.EncodeToString(v.StoredKey) + ":" +
		base64.StdEncoding.EncodeToString(v.ServerKey)
}

// String says what the verifier is without its keys, so that printing one
// by mistake leaks nothing.
func (v SCRAMVerifier) String() string {
	return fmt.Sprintf("SCRAM-SHA-256 verifier (%d iterations, redacted)", v.Iterations)
}

// GoString is String, for %#v.
func (v SCRAMVerifier) GoString() string { return v.String() }

// LogValue keeps the keys out of logs.
func (v SCRAMVerifier) LogValue() slog.Value { return slog.StringValue(v.String()) }

// MarshalJSON keeps the keys out of JSON.
func (v SCRAMVerifier) MarshalJSON() ([]byte, error) { return json.Marshal(v.String()) }

// NewSCRAMVerifier derives a verifier from a plain password with a random
// 16-byte salt and the given iterations (DefaultSCRAMIterations when 0), as
// PostgreSQL does for a new password and PgBouncer for a plain-text
// password in its auth_file.
func NewSCRAMVerifier(password string, iterations int) (*SCRAMVerifier, error) {
	if iterations == 0 {
		iterations = DefaultSCRAMIterations
	}
	salt := make([]byte, scramSaltLen)
	rand.Read(salt)
	return deriveSCRAMVerifier(password, salt, iterations)
}

func deriveSCRAMVerifier(password string, salt []byte, iterations int) (*SCRAMVerifier, error) {
	salted, err := saltedPassword(password, salt, iterations)
	if err != nil {
		return nil, err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	return &SCRAMVerifier{
		Iterations: iterations,
		Salt:       bytes.Clone(salt),
		StoredKey:  storedKey[:],
		ServerKey:  hmacSHA256(salted, "Server Key"),
	}, nil
}

// saltedPassword is Hi(Normalize(password), salt, i) of RFC 5802.
func saltedPassword(password string, salt []byte, iterations int) ([]byte, error) {
	if iterations < 1 {
		return nil, fmt.Errorf("SCRAM iteration count %d", iterations)
	}
	k, err := pbkdf2.Key(sha256.New, saslPrep(password), salt, iterations, scramKeyLen)
	if err != nil {
		return nil, fmt.Errorf("SCRAM salted password: %w", err)
	}
	return k, nil
}

func hmacSHA256(key []byte, parts ...string) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write([]byte(p))
	}
	return m.Sum(nil)
}

func xorBytes(a, b []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = a[i] ^ b[i]
	}
	return out
}

func newNonce() string {
	raw := make([]byte, scramNonceLen)
	rand.Read(raw)
	return base64.StdEncoding.EncodeToString(raw)
}

// SCRAMServer is the server side of one SCRAM-SHA-256 exchange, toward a
// client, against a verifier. Call ServerFirst with the client-first
// message, then ServerFinal with the client-final message; a SCRAMServer
// serves one exchange.
type SCRAMServer struct {
	v           *SCRAMVerifier
	serverNonce string // set by NewSCRAMServer; tests may fix it

	cbindFlag          byte   // 'n' or 'y', from the client-first message
	clientNonce        string // the client's part of the nonce
	clientFirstBare    string
	serverFirst        string
	clientKey          []byte // recovered from a valid proof
	serverFirstWritten bool
}

// NewSCRAMServer starts an exchange against v.
func NewSCRAMServer(v *SCRAMVerifier) *SCRAMServer {
	return &SCRAMServer{v: v, serverNonce: newNonce()}
}

// ServerFirst reads the client-first-message (the data of the client's
// SASLInitialResponse) and returns the server-first-message, to send in
// AuthenticationSASLContinue. An error says what is malformed or
// unsupported in the client's message.
func (s *SCRAMServer) ServerFirst(clientFirst []byte) ([]byte, error) {
	if s.serverFirstWritten {
		return nil, errors.New("SCRAM: second client-first message")
	}
	in, err := scramInput(clientFirst)
	if err != nil {
		return nil, err
	}
	// gs2-cbind-flag
	switch in[0] {
	case 'n', 'y':
		// 'y': the client could bind but thinks we cannot, and we cannot.
		s.cbindFlag = in[0]
	case 'p':
		return nil, fmt.Errorf("%w: the client selected channel binding (SCRAM-SHA-256-PLUS), which was not offered", errSCRAMUnsupported)
	default:
		return nil, malformed("unexpected channel-binding flag %s", sanitizeChar(in, 0))
	}
	in = in[1:]
	if len(in) == 0 || in[0] != ',' {
		return nil, malformed("comma expected, but found %s", sanitizeChar(in, 0))
	}
	in = in[1:]
	if len(in) > 0 && in[0] == 'a' {
		return nil, fmt.Errorf("%w: client uses authorization identity, but it is not supported", errSCRAMUnsupported)
	}
	if len(in) == 0 || in[0] != ',' {
		return nil, malformed("unexpected attribute %s in client-first-message", sanitizeChar(in, 0))
	}
	in = in[1:]
	bare := in
	if len(in) > 0 && in[0] == 'm' {
		return nil, fmt.Errorf("%w: client requires an unsupported SCRAM extension", errSCRAMUnsupported)
	}
	// The username: read and ignored, as PostgreSQL does.
	if _, in, err = readAttrValue(in, 'n'); err != nil {
		return nil, err
	}
	nonce, in, err := readAttrValue(in, 'r')
	if err != nil {
		return nil, err
	}
	if nonce == "" {
		return nil, malformed("empty nonce") // PostgreSQL lets it pass; RFC 5802 does not
	}
	if !scramPrintable(nonce) {
		return nil, malformed("non-printable characters in SCRAM nonce")
	}
	// Optional extensions: read and ignored.
	for in != "" {
		if _, _, in, err = readAnyAttr(in); err != nil {
			return nil, err
		}
	}
	s.clientNonce = nonce
	s.clientFirstBare = bare
	s.serverFirst = "r=" + nonce + s.serverNonce +
		",s=" + base64.StdEncoding.EncodeToString(s.v.Salt) +
		",i=" + strconv.Itoa(s.v.Iterations)
	s.serverFirstWritten = true
	return []byte(s.serverFirst), nil
}

// ServerFinal reads the client-final-message (the data of SASLResponse) and
// checks its proof. On success it returns the server-final-message, to send
// in AuthenticationSASLFinal, and ClientKey is set. A proof that does not
// match gives an error wrapping ErrAuthFailed; a malformed message, an
// error that does not.
func (s *SCRAMServer) ServerFinal(clientFinal []byte) ([]byte, error) {
	if !s.serverFirstWritten {
		return nil, errors.New("SCRAM: client-final message before client-first")
	}
	in, err := scramInput(clientFinal)
	if err != nil {
		return nil, err
	}
	begin := in
	cbind, in, err := readAttrValue(in, 'c')
	if err != nil {
		return nil, err
	}
	// No channel binding: c= is base64 of the GS2 header the client sent.
	if !(cbind == "biws" && s.cbindFlag == 'n') && !(cbind == "eSws" && s.cbindFlag == 'y') {
		return nil, malformed("unexpected SCRAM channel-binding attribute in client-final-message")
	}
	nonce, in, err := readAttrValue(in, 'r')
	if err != nil {
		return nil, err
	}
	// Extensions are skipped up to the proof, which comes last.
	var (
		attr       byte
		value      string
		proofStart int
	)
	for {
		proofStart = len(begin) - len(in) - 1 // the comma before the attribute
		if attr, value, in, err = readAnyAttr(in); err != nil {
			return nil, err
		}
		if attr == 'p' {
			break
		}
	}
	proof, ok := pgBase64Decode(value)
	if !ok || len(proof) != scramKeyLen {
		return nil, malformed("malformed proof in client-final-message")
	}
	if in != "" {
		return nil, malformed("garbage found at the end of client-final-message")
	}
	if nonce != s.clientNonce+s.serverNonce {
		return nil, malformed("invalid SCRAM response: nonce does not match")
	}
	authMessage := s.clientFirstBare + "," + s.serverFirst + "," + begin[:proofStart]
	clientSignature := hmacSHA256(s.v.StoredKey, authMessage)
	clientKey := xorBytes(proof, clientSignature)
	storedKey := sha256.Sum256(clientKey)
	if !hmac.Equal(storedKey[:], s.v.StoredKey) {
		return nil, fmt.Errorf("SCRAM proof does not match: %w", ErrAuthFailed)
	}
	s.clientKey = clientKey
	serverSignature := hmacSHA256(s.v.ServerKey, authMessage)
	return []byte("v=" + base64.StdEncoding.EncodeToString(serverSignature)), nil
}

// ClientKey is the client's ClientKey, recovered from its proof by a
// successful ServerFinal (nil before): with the verifier it lets the proxy
// log in to a server that stores the same verifier (pass-through).
func (s *SCRAMServer) ClientKey() []byte { return s.clientKey }

// SCRAMClient is the client side of one SCRAM-SHA-256 exchange, toward a
// server: ClientFirst, then ClientFinal with the server-first message, then
// VerifyServerFinal with the server-final message. A SCRAMClient serves one
// exchange.
type SCRAMClient struct {
	password string         // plain password; "" in pass-through
	v        *SCRAMVerifier // pass-through: the verifier the client proved
	key      []byte         // pass-through: the client's ClientKey

	clientNonce     string // set by the constructors; tests may fix it
	clientFirstBare string
	authMessage     string
	serverKey       []byte // to check the server's signature
}

// NewSCRAMClient logs in with a plain password.
func NewSCRAMClient(password string) *SCRAMClient {
	return &SCRAMClient{password: password, clientNonce: newNonce()}
}

// NewSCRAMPassThrough logs in without the password, with the ClientKey a
// client proved against verifier v (PgBouncer's SCRAM pass-through: the
// proof is ClientKey XOR HMAC(StoredKey, AuthMessage), and the server's
// signature is checked with v's ServerKey). It only works with a server
// that stores this very verifier: same salt and iterations, so that its
// StoredKey is H(ClientKey). ClientFinal refuses a server that announces
// another salt or iteration count (its password was changed, or it is
// another server).
func NewSCRAMPassThrough(v *SCRAMVerifier, clientKey []byte) (*SCRAMClient, error) {
	if v == nil || len(clientKey) != scramKeyLen {
		return nil, errors.New("SCRAM pass-through needs a verifier and a 32-byte ClientKey")
	}
	if h := sha256.Sum256(clientKey); !hmac.Equal(h[:], v.StoredKey) {
		return nil, errors.New("SCRAM pass-through: the ClientKey does not belong to the verifier")
	}
	return &SCRAMClient{v: v, key: bytes.Clone(clientKey), clientNonce: newNonce()}, nil
}

// ClientFirst returns the client-first-message, to send in
// SASLInitialResponse: "n,,n=,r=<nonce>", as libpq and PgBouncer send it.
func (c *SCRAMClient) ClientFirst() []byte {
	c.clientFirstBare = "n=,r=" + c.clientNonce
	return []byte("n,," + c.clientFirstBare)
}

// ClientFinal reads the server-first-message (of AuthenticationSASLContinue)
// and returns the client-final-message with the proof, to send in
// SASLResponse.
func (c *SCRAMClient) ClientFinal(serverFirst []byte) ([]byte, error) {
	if c.clientFirstBare == "" {
		return nil, errors.New("SCRAM: ClientFinal before ClientFirst")
	}
	in, err := scramInput(serverFirst)
	if err != nil {
		return nil, err
	}
	first := in
	nonce, in, err := readAttrValue(in, 'r')
	if err != nil {
		return nil, err
	}
	if len(nonce) <= len(c.clientNonce) || !strings.HasPrefix(nonce, c.clientNonce) {
		return nil, malformed("invalid SCRAM response: nonce mismatch")
	}
	if !scramPrintable(nonce) {
		return nil, malformed("non-printable characters in SCRAM nonce")
	}
	saltText, in, err := readAttrValue(in, 's')
	if err != nil {
		return nil, err
	}
	salt, ok := pgBase64Decode(saltText)
	if !ok {
		return nil, malformed("invalid salt")
	}
	itersText, in, err := readAttrValue(in, 'i')
	if err != nil {
		return nil, err
	}
	iters, err := strconv.Atoi(itersText)
	if err != nil || iters < 1 || iters > math.MaxInt32 {
		return nil, malformed("invalid iteration count")
	}
	if in != "" {
		return nil, malformed("garbage at end of server-first-message")
	}

	var clientKey []byte
	if c.v != nil {
		if iters != c.v.Iterations || !bytes.Equal(salt, c.v.Salt) {
			return nil, errors.New("SCRAM pass-through: the server's salt and iteration count are not the secret's (its password changed, or it stores another verifier)")
		}
		clientKey = c.key
		c.serverKey = c.v.ServerKey
	} else {
		salted, err := saltedPassword(c.password, salt, iters)
		if err != nil {
			return nil, err
		}
		clientKey = hmacSHA256(salted, "Client Key")
		c.serverKey = hmacSHA256(salted, "Server Key")
	}
	withoutProof := "c=biws,r=" + nonce
	c.authMessage = c.clientFirstBare + "," + first + "," + withoutProof
	storedKey := sha256.Sum256(clientKey)
	proof := xorBytes(clientKey, hmacSHA256(storedKey[:], c.authMessage))
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// VerifyServerFinal checks the server-final-message (of
// AuthenticationSASLFinal): the server proves it knows the verifier.
func (c *SCRAMClient) VerifyServerFinal(serverFinal []byte) error {
	if c.authMessage == "" {
		return errors.New("SCRAM: server-final message before server-first")
	}
	in, err := scramInput(serverFinal)
	if err != nil {
		return err
	}
	if in[0] == 'e' {
		msg, _, _ := readAttrValue(in, 'e')
		return fmt.Errorf("SCRAM: the server reports an error: %q", msg)
	}
	sigText, in, err := readAttrValue(in, 'v')
	if err != nil {
		return err
	}
	if in != "" {
		return malformed("garbage at end of server-final-message")
	}
	sig, ok := pgBase64Decode(sigText)
	if !ok || len(sig) != scramKeyLen {
		return malformed("malformed server signature")
	}
	if !hmac.Equal(sig, hmacSHA256(c.serverKey, c.authMessage)) {
		return errors.New("SCRAM: invalid server signature: the server does not know the password")
	}
	return nil
}

// scramInput is a SCRAM message as text: PostgreSQL refuses an empty one and
// one with a NUL byte ("message length does not match input length").
func scramInput(b []byte) (string, error) {
	if len(b) == 0 {
		return "", malformed("the message is empty")
	}
	if bytes.IndexByte(b, 0) >= 0 {
		return "", malformed("message length does not match input length")
	}
	return string(b), nil
}

// readAttrValue reads "<attr>=<value>" and the comma after it, if any.
func readAttrValue(in string, attr byte) (value, rest string, err error) {
	if len(in) == 0 || in[0] != attr {
		return "", in, malformed("attribute %q expected, but found %s", attr, sanitizeChar(in, 0))
	}
	if len(in) < 2 || in[1] != '=' {
		return "", in, malformed("expected character \"=\" for attribute %q", attr)
	}
	return splitValue(in[2:])
}

// readAnyAttr reads "<letter>=<value>" and the comma after it, if any.
func readAnyAttr(in string) (attr byte, value, rest string, err error) {
	if len(in) == 0 {
		return 0, "", in, malformed("attribute expected, but found end of string")
	}
	attr = in[0]
	if !(attr >= 'A' && attr <= 'Z' || attr >= 'a' && attr <= 'z') {
		return 0, "", in, malformed("attribute expected, but found invalid character %s", sanitizeChar(in, 0))
	}
	if len(in) < 2 || in[1] != '=' {
		return 0, "", in, malformed("expected character \"=\" for attribute %q", attr)
	}
	value, rest, err = splitValue(in[2:])
	return attr, value, rest, err
}

func splitValue(in string) (value, rest string, err error) {
	if i := strings.IndexByte(in, ','); i >= 0 {
		return in[:i], in[i+1:], nil
	}
	return in, "", nil
}

// scramPrintable: RFC 5802's printable, ASCII 0x21-0x7E without ",".
func scramPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

func sanitizeChar(s string, i int) string {
	if i >= len(s) {
		return "end of string"
	}
	if c := s[i]; c >= 0x21 && c <= 0x7e {
		return fmt.Sprintf("character %q", c)
	}
	return fmt.Sprintf("character 0x%02x", s[i])
}

// strtok splits as C's strtok does: leading delimiters are skipped, and a
// token ends at the next delimiter.
type strtok struct{ s string }

func (t *strtok) next(delims string) (string, bool) {
	s := strings.TrimLeft(t.s, delims)
	if s == "" {
		t.s = ""
		return "", false
	}
	i := strings.IndexAny(s, delims)
	if i < 0 {
		t.s = ""
		return s, true
	}
	t.s = s[i+1:]
	return s[:i], true
}

// rest is strtok(NULL, ""): what is left, if anything.
func (t *strtok) rest() (string, bool) {
	s := t.s
	t.s = ""
	return s, s != ""
}

// strtol parses a base-10 integer as C's strtol does with a check that the
// whole string was used: leading white space and a sign are allowed.
func strtol(s string) (int64, bool) {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// pgBase64Decode decodes standard base64 as PostgreSQL's pg_b64_decode
// does: padding required, no white space, and nothing outside the
// alphabet. It accepts non-zero trailing bits, as PostgreSQL does.
func pgBase64Decode(s string) ([]byte, bool) {
	if strings.ContainsAny(s, " \t\r\n") {
		return nil, false
	}
	if len(s)%4 != 0 {
		return nil, false
	}
	// PostgreSQL would also read on after "=" padding; no encoder writes
	// that, and refusing it is safer.
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, false
	}
	return b, true
}

// saslPrep normalizes a password as PostgreSQL's pg_saslprep (RFC 4013) does
// before deriving SCRAM keys: an ASCII password is used as it is; otherwise
// non-ASCII spaces become " ", characters mapped to nothing are dropped and
// the result is NFKC-normalized. When the result holds a prohibited
// character PostgreSQL uses the password unchanged, and so does saslPrep;
// its prohibited set is Unicode's control, private-use, surrogate,
// unassigned and non-character code points (close to, not exactly,
// RFC 3454's tables, which are of Unicode 3.2).
func saslPrep(password string) string {
	ascii := true
	for i := 0; i < len(password); i++ {
		if password[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return password
	}
	if !utf8.ValidString(password) {
		return password
	}
	mapped := make([]rune, 0, len(password))
	for _, r := range password {
		switch {
		case saslMappedToNothing(r):
			continue
		case r != ' ' && unicode.Is(unicode.Zs, r):
			mapped = append(mapped, ' ')
		default:
			mapped = append(mapped, r)
		}
	}
	out := norm.NFKC.String(string(mapped))
	if out == "" {
		return password
	}
	for _, r := range out {
		if saslProhibited(r) {
			return password
		}
	}
	return out
}

// saslMappedToNothing is RFC 3454 table B.1.
func saslMappedToNothing(r rune) bool {
	switch r {
	case 0x00AD, 0x034F, 0x1806, 0x180B, 0x180C, 0x180D, 0x200B, 0x200C,
		0x200D, 0x2060, 0xFEFF:
		return true
	}
	return r >= 0xFE00 && r <= 0xFE0F
}

func saslProhibited(r rune) bool {
	switch {
	case r != ' ' && unicode.Is(unicode.Zs, r), unicode.Is(unicode.Zl, r), unicode.Is(unicode.Zp, r): // C.1.2, C.2.2
		return true
	case unicode.Is(unicode.Cc, r), unicode.Is(unicode.Co, r), unicode.Is(unicode.Cs, r): // C.2, C.3, C.5
		return true
	case r >= 0xFDD0 && r <= 0xFDEF, r&0xFFFE == 0xFFFE: // C.4 non-characters
		return true
	case r >= 0xFFF9 && r <= 0xFFFD, r >= 0x2FF0 && r <= 0x2FFB: // C.6, C.7
		return true
	case r >= 0x200E && r <= 0x200F, r >= 0x202A && r <= 0x202E, r >= 0x206A && r <= 0x206F, r == 0x0340, r == 0x0341: // C.8
		return true
	case r == 0xE0001, r >= 0xE0020 && r <= 0xE007F: // C.9
		return true
	}
	return !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.C) // unassigned
}
