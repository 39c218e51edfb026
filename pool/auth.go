package pool

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
)

// AuthMethod is how clients prove their password, with PgBouncer's
// auth_type semantics.
type AuthMethod string

const (
	// AuthSCRAM asks for SCRAM-SHA-256, against a SCRAM secret or a verifier
	// derived from a plain password. An md5 secret cannot serve SCRAM: such a
	// user fails (PgBouncer: "auth_file has to contain SCRAM secrets or
	// plain-text passwords"; PostgreSQL: "does not have a valid SCRAM
	// secret").
	AuthSCRAM AuthMethod = "scram-sha-256"
	// AuthMD5 asks for an md5 answer for a plain or md5 secret, and uses
	// SCRAM for a SCRAM secret, which md5 cannot check. It is PgBouncer's
	// default auth_type, and what "" means.
	AuthMD5 AuthMethod = "md5"
)

// SQLSTATEs the client gets when its authentication fails.
const (
	codeInvalidPassword   = "28P01" // wrong password, or a user no source knows
	codeProtocolViolation = "08P01" // a malformed answer
	codeNotSupported      = "0A000" // a SCRAM feature PostgreSQL does not support either
	codeConnFailure       = "08006" // the secret could not be looked up
)

// maxAuthMessage bounds a client's authentication message, as PostgreSQL's
// PG_MAX_AUTH_TOKEN_LENGTH does.
const maxAuthMessage = 65535

// ClientAuth is what a successful authentication leaves.
type ClientAuth struct {
	// Method is the exchange that ran: AuthSCRAM or AuthMD5.
	Method AuthMethod
	// ClientKey is the client's SCRAM ClientKey when SCRAM ran against a
	// SCRAM secret; nil otherwise. With that secret it logs the user in to
	// a server that stores the same verifier (see ServerCredential). It is
	// as good as the password there: never log it.
	ClientKey []byte
}

// String keeps ClientKey out of logs.
func (a *ClientAuth) String() string {
	return fmt.Sprintf("ClientAuth{Method: %s, ClientKey: %t}", a.Method, a.ClientKey != nil)
}

// GoString is String, for %#v.
func (a *ClientAuth) GoString() string { return a.String() }

// LogValue keeps ClientKey out of logs.
func (a *ClientAuth) LogValue() slog.Value { return slog.StringValue(a.String()) }

// MarshalJSON keeps ClientKey out of JSON.
func (a *ClientAuth) MarshalJSON() ([]byte, error) { return json.Marshal(a.String()) }

// ClientAuthError is a failed authentication. The client has been sent a
// FATAL ErrorResponse with Code, unless it left first.
type ClientAuthError struct {
	User string
	Code string // the SQLSTATE sent: 28P01, 08P01, 0A000 or 08006; "" when nothing was sent
	Err  error  // why; wraps ErrAuthFailed for a wrong password or an unknown user
}

func (e *ClientAuthError) Error() string {
	return fmt.Sprintf("authenticate client as user %q: %v", e.User, e.Err)
}

func (e *ClientAuthError) Unwrap() error { return e.Err }

// SQLState is the SQLSTATE the client was sent ("" when none was).
func (e *ClientAuthError) SQLState() string { return e.Code }

// AuthenticateClient authenticates a client that has sent its
// StartupMessage for user, against secret, on rw (the client connection):
// it sends AuthenticationSASL, SASLContinue and SASLFinal (SCRAM-SHA-256)
// or AuthenticationMD5Password, reads and checks the answers and, on
// success, sends AuthenticationOk and nothing more (the caller sends
// ParameterStatus, BackendKeyData and ReadyForQuery). Which exchange runs
// is up to method and the secret's kind (see AuthMethod).
//
// A wrong password gets FATAL 28P01 `password authentication failed for
// user "<user>"`, PostgreSQL's words, and an error wrapping ErrAuthFailed;
// so does a secret that cannot match (an empty password, an md5 secret
// with AuthSCRAM), after a full exchange, so the client cannot tell. A
// malformed answer gets FATAL 08P01. Errors are *ClientAuthError and
// never hold a secret. AuthenticateClient reads no byte past the client's
// last authentication message. It has no timeout of its own: the caller
// bounds it with a deadline on the connection (PostgreSQL's
// authentication_timeout is 60 s).
func AuthenticateClient(rw io.ReadWriter, user string, secret Secret, method AuthMethod) (*ClientAuth, error) {
	c := clientAuth{rw: rw, user: user}
	if method == "" {
		method = AuthMD5
	}
	if method != AuthMD5 && method != AuthSCRAM {
		return nil, fmt.Errorf("authenticate client: unknown method %q", method)
	}
	switch {
	case secret.Kind == SecretSCRAM && secret.SCRAM != nil:
		return c.scram(secret.SCRAM, true, nil)
	case secret.Kind == SecretPlain && secret.Plain != "":
		if method == AuthMD5 {
			return c.md5(md5Secret(secret.Plain, user)[3:], nil)
		}
		v, err := NewSCRAMVerifier(secret.Plain, DefaultSCRAMIterations)
		if err != nil {
			return nil, c.fail(codeInvalidPassword, err)
		}
		return c.scram(v, false, nil)
	case secret.Kind == SecretMD5 && isMD5Secret(secret.MD5):
		if method == AuthMD5 {
			return c.md5(secret.MD5[3:], nil)
		}
		return c.scram(randomVerifier(), false, errors.New("the user has an md5 secret, which SCRAM-SHA-256 cannot use"))
	}
	// No usable secret (an empty password): run the exchange the user
	// would get, and fail.
	doomed := errors.New("the user has no usable password (empty)")
	if method == AuthMD5 {
		return c.md5(hex.EncodeToString(randomBytes(16)), doomed)
	}
	return c.scram(randomVerifier(), false, doomed)
}

// clientAuth is one client's authentication exchange.
type clientAuth struct {
	rw   io.ReadWriter
	user string
}

// md5 runs PostgreSQL's md5 exchange: the client answers
// "md5" + md5(inner + salt), inner being hex(md5(password + user)).
// A non-nil doomed fails the exchange whatever the answer.
func (c *clientAuth) md5(inner string, doomed error) (*ClientAuth, error) {
	var salt [4]byte
	rand.Read(salt[:])
	if err := c.send(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return nil, err
	}
	body, err := c.receive("password")
	if err != nil {
		return nil, err
	}
	// A PasswordMessage is one NUL-terminated string.
	if len(body) == 0 || body[len(body)-1] != 0 || indexNUL(body) != len(body)-1 {
		return nil, c.fail(codeProtocolViolation, errors.New("invalid password packet size"))
	}
	answer := body[:len(body)-1]
	if doomed != nil {
		return nil, c.fail(codeInvalidPassword, fmt.Errorf("%v: %w", doomed, ErrAuthFailed))
	}
	want := md5Hex(inner, string(salt[:]))
	if !hmac.Equal(answer, []byte(want)) {
		return nil, c.fail(codeInvalidPassword, fmt.Errorf("md5 answer does not match: %w", ErrAuthFailed))
	}
	if err := c.send(&pgproto3.AuthenticationOk{}); err != nil {
		return nil, err
	}
	return &ClientAuth{Method: AuthMD5}, nil
}

// scram runs a SCRAM-SHA-256 exchange against v. keepKey says whether the
// client's ClientKey is worth returning (v is the user's stored verifier,
// not one made up for this exchange). A non-nil doomed fails the exchange
// whatever the proof.
func (c *clientAuth) scram(v *SCRAMVerifier, keepKey bool, doomed error) (*ClientAuth, error) {
	if err := c.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return nil, err
	}
	body, err := c.receive("SASL initial response")
	if err != nil {
		return nil, err
	}
	mech, data, err := parseSASLInitialResponse(body)
	if err != nil {
		return nil, c.fail(codeProtocolViolation, err)
	}
	if mech != scramMechanism {
		return nil, c.fail(codeProtocolViolation, fmt.Errorf("client selected an invalid SASL authentication mechanism %q", mech))
	}
	srv := NewSCRAMServer(v)
	serverFirst, err := srv.ServerFirst(data)
	if err != nil {
		return nil, c.fail(scramCode(err), err)
	}
	if err := c.send(&pgproto3.AuthenticationSASLContinue{Data: serverFirst}); err != nil {
		return nil, err
	}
	body, err = c.receive("SASL response")
	if err != nil {
		return nil, err
	}
	serverFinal, err := srv.ServerFinal(body)
	if doomed != nil && (err == nil || errors.Is(err, ErrAuthFailed)) {
		return nil, c.fail(codeInvalidPassword, fmt.Errorf("%v: %w", doomed, ErrAuthFailed))
	}
	if err != nil {
		return nil, c.fail(scramCode(err), err)
	}
	final, err := (&pgproto3.AuthenticationSASLFinal{Data: serverFinal}).Encode(nil)
	if err != nil {
		return nil, c.fail(codeProtocolViolation, err)
	}
	if final, err = (&pgproto3.AuthenticationOk{}).Encode(final); err != nil {
		return nil, c.fail(codeProtocolViolation, err)
	}
	if _, err := c.rw.Write(final); err != nil {
		return nil, &ClientAuthError{User: c.user, Err: fmt.Errorf("write: %w", err)}
	}
	auth := &ClientAuth{Method: AuthSCRAM}
	if keepKey {
		auth.ClientKey = srv.ClientKey()
	}
	return auth, nil
}

func scramCode(err error) string {
	switch {
	case errors.Is(err, ErrAuthFailed):
		return codeInvalidPassword
	case errors.Is(err, errSCRAMUnsupported):
		return codeNotSupported
	}
	return codeProtocolViolation
}

// parseSASLInitialResponse splits a SASLInitialResponse body: the
// mechanism, then the data with its int32 length (-1: no data).
func parseSASLInitialResponse(body []byte) (mech string, data []byte, err error) {
	i := indexNUL(body)
	if i < 0 {
		return "", nil, errors.New("invalid SASL initial response: no mechanism")
	}
	mech, rest := string(body[:i]), body[i+1:]
	if len(rest) < 4 {
		return "", nil, errors.New("invalid SASL initial response: no data length")
	}
	n := int32(binary.BigEndian.Uint32(rest))
	rest = rest[4:]
	if n == -1 {
		n = 0
	}
	if n < 0 || int(n) != len(rest) {
		return "", nil, errors.New("invalid SASL initial response: data length does not match")
	}
	return mech, rest, nil
}

// send writes one message to the client.
func (c *clientAuth) send(msg pgproto3.BackendMessage) error {
	b, err := msg.Encode(nil)
	if err == nil {
		_, err = c.rw.Write(b)
	}
	if err != nil {
		return &ClientAuthError{User: c.user, Err: fmt.Errorf("write: %w", err)}
	}
	return nil
}

// receive reads the client's next message, which must be a
// PasswordMessage ('p': password, SASLInitialResponse or SASLResponse).
func (c *clientAuth) receive(what string) ([]byte, error) {
	typ, body, err := readMsgExact(c.rw, maxAuthMessage)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil, &ClientAuthError{User: c.user, Err: fmt.Errorf("the client closed the connection during authentication: %w", err)}
	case errors.Is(err, errMessageLength):
		return nil, c.fail(codeProtocolViolation, err)
	case err != nil:
		return nil, &ClientAuthError{User: c.user, Err: fmt.Errorf("read: %w", err)}
	case typ == 'X':
		// psql gives up this way to ask for a password and reconnect.
		return nil, &ClientAuthError{User: c.user, Err: errors.New("the client terminated the connection during authentication")}
	case typ != 'p':
		return nil, c.fail(codeProtocolViolation, fmt.Errorf("expected %s, got message type %q", what, typ))
	}
	return body, nil
}

// fail sends the client a FATAL ErrorResponse and returns the error. The
// client sees PostgreSQL's words; err stays with the caller.
func (c *clientAuth) fail(code string, err error) error {
	msg := "invalid authentication message"
	switch code {
	case codeInvalidPassword:
		msg = fmt.Sprintf("password authentication failed for user %q", c.user)
	case codeNotSupported:
		msg = "unsupported SASL authentication feature"
	case codeConnFailure:
		msg = "could not look up the user's password"
	}
	if code == codeProtocolViolation || code == codeNotSupported {
		// The reason is about the client's own message and holds no secret.
		msg = err.Error()
	}
	if b, e := (&pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg,
	}).Encode(nil); e == nil {
		c.rw.Write(b) // the client may be gone; the error below says why we stop
	}
	return &ClientAuthError{User: c.user, Code: code, Err: err}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// randomVerifier is a verifier no password matches (its keys are random),
// for an exchange that must fail.
func randomVerifier() *SCRAMVerifier {
	return &SCRAMVerifier{
		Iterations: DefaultSCRAMIterations,
		Salt:       randomBytes(scramSaltLen),
		StoredKey:  randomBytes(scramKeyLen),
		ServerKey:  randomBytes(scramKeyLen),
	}
}

// Authenticator authenticates clients with the secrets of a SecretSource.
// A user the source does not know gets the same exchange as a known user
// and the same 28P01 as a wrong password, as PostgreSQL and PgBouncer do:
// a mock secret that no password matches stands in, made from a key that
// is random per Authenticator so that the same unknown user always sees
// the same SCRAM salt (as a real user does).
//
// The zero value is not usable: Source is required.
type Authenticator struct {
	// Source finds a user's secret. Required.
	Source SecretSource
	// Method is how clients prove their password; "" means AuthMD5.
	Method AuthMethod

	once sync.Once
	key  []byte // for mock secrets
}

// Authenticate looks user up and authenticates the client on rw (see
// AuthenticateClient). It returns the user's secret with the ClientAuth,
// for ServerCredential. An unknown user gets the mock exchange and an
// error wrapping both ErrNoSuchUser and ErrAuthFailed. A lookup that fails
// otherwise (the auth query's server is down) gets FATAL 08006 "could not
// look up the user's password", and an error that wraps the cause.
func (a *Authenticator) Authenticate(ctx context.Context, rw io.ReadWriter, user string) (Secret, *ClientAuth, error) {
	secret, err := a.Source.Lookup(ctx, user)
	switch {
	case errors.Is(err, ErrNoSuchUser):
		auth, aerr := AuthenticateClient(rw, user, a.MockSecret(user), a.Method)
		if aerr == nil {
			// Unreachable: a mock secret matches no password. Never let it in.
			_ = auth
			return Secret{}, nil, &ClientAuthError{User: user, Err: fmt.Errorf("mock secret matched: %w", ErrAuthFailed)}
		}
		var ce *ClientAuthError
		if errors.As(aerr, &ce) {
			ce.Err = fmt.Errorf("%w: %w", err, ce.Err)
			return Secret{}, nil, ce
		}
		return Secret{}, nil, aerr
	case err != nil:
		c := clientAuth{rw: rw, user: user}
		return Secret{}, nil, c.fail(codeConnFailure, fmt.Errorf("look up the secret: %w", err))
	}
	auth, err := AuthenticateClient(rw, user, secret, a.Method)
	if err != nil {
		return Secret{}, nil, err
	}
	return secret, auth, nil
}

// MockSecret is the secret an unknown user is checked against: a SCRAM
// verifier with AuthSCRAM, an md5 secret otherwise (the exchange a user
// with a plain password gets). Both are derived from the Authenticator's
// random key and the user name, so they are stable per user and no
// password matches them.
func (a *Authenticator) MockSecret(user string) Secret {
	a.once.Do(func() { a.key = randomBytes(32) })
	derive := func(label string) []byte {
		m := hmac.New(sha256.New, a.key)
		m.Write([]byte(label))
		m.Write([]byte{0})
		m.Write([]byte(user))
		return m.Sum(nil)
	}
	if a.Method == AuthSCRAM {
		return Secret{User: user, Kind: SecretSCRAM, SCRAM: &SCRAMVerifier{
			Iterations: DefaultSCRAMIterations,
			Salt:       derive("salt")[:scramSaltLen],
			StoredKey:  derive("StoredKey"),
			ServerKey:  derive("ServerKey"),
		}}
	}
	return Secret{User: user, Kind: SecretMD5, MD5: "md5" + hex.EncodeToString(derive("md5")[:16])}
}

func indexNUL(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// CredentialFor is the credential that logs the user of secret in to a
// server after the client authenticated with auth: the plain password, the
// md5 secret, or the SCRAM secret with the client's ClientKey. auth may be
// nil; a SCRAM secret without a ClientKey can then only log in where the
// server trusts the user.
func CredentialFor(secret Secret, auth *ClientAuth) ServerCredential {
	switch secret.Kind {
	case SecretPlain:
		return ServerCredential{Password: secret.Plain}
	case SecretSCRAM:
		c := ServerCredential{Secret: &secret}
		if auth != nil && auth.ClientKey != nil {
			c.ClientKey = auth.ClientKey
		}
		return c
	case SecretMD5:
		return ServerCredential{Secret: &secret}
	}
	return ServerCredential{}
}
