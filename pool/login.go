package pool

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// ServerCredential is what the proxy logs in to a server with: one of
//   - Password: the plain password; answers cleartext, md5 and SCRAM;
//   - Secret of kind SecretMD5: answers md5 without the password;
//   - Secret of kind SecretSCRAM with ClientKey, the key a client proved
//     against that secret (ClientAuth.ClientKey): answers SCRAM by
//     pass-through, when the server stores this very verifier;
//   - nothing: for a server that trusts the user.
//
// A Secret of kind SecretPlain counts as its Password.
type ServerCredential struct {
	Password  string
	Secret    *Secret
	ClientKey []byte
}

// String keeps the credential out of logs.
func (c ServerCredential) String() string {
	return fmt.Sprintf("ServerCredential{password: %t, secret: %v, client key: %t}", c.password() != "", c.Secret, c.ClientKey != nil)
}

// GoString is String, for %#v.
func (c ServerCredential) GoString() string { return c.String() }

// LogValue keeps the credential out of logs.
func (c ServerCredential) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalJSON keeps the credential out of JSON.
func (c ServerCredential) MarshalJSON() ([]byte, error) { return json.Marshal(c.String()) }

func (c ServerCredential) password() string {
	if c.Password != "" {
		return c.Password
	}
	if c.Secret != nil && c.Secret.Kind == SecretPlain {
		return c.Secret.Plain
	}
	return ""
}

// ServerSession is a server connection logged in and ready for a query.
type ServerSession struct {
	Params map[string]string // ParameterStatus values, by name
	Key    []byte            // the BackendKeyData body: process id and secret key, for CancelRequest
	PID    uint32            // the server process id
}

var (
	// ErrUnusableCredential: the credential cannot answer what the server
	// asks (a cleartext password wanted and only a secret held, md5 with a
	// SCRAM secret, SCRAM with an md5 secret or without a ClientKey).
	ErrUnusableCredential = errors.New("the credential cannot answer the server's authentication request")
	// ErrUnsupportedAuth: the server asks for a method the proxy does not
	// speak: GSSAPI, SSPI, Kerberos, or SCRAM-SHA-256-PLUS alone.
	ErrUnsupportedAuth = errors.New("authentication method not supported")
)

// protocol30 is protocol version 3.0, what Login asks for.
const protocol30 = 3 << 16

// maxServerMessage bounds a server message during login.
const maxServerMessage = 1 << 20

// Authentication request codes (AuthenticationXxx messages).
const (
	authOK          = 0
	authKerberosV5  = 2
	authCleartext   = 3
	authMD5         = 5
	authSCMCreds    = 6
	authGSS         = 7
	authGSSContinue = 8
	authSSPI        = 9
	authSASL        = 10
	authSASLCont    = 11
	authSASLFinal   = 12
)

// Login logs conn in to a PostgreSQL server: it sends a protocol 3.0
// StartupMessage with params ("user" required; "database",
// "application_name" and any other setting as the server takes them),
// answers what the server asks (AuthenticationOk, cleartext, md5, SASL
// SCRAM-SHA-256, checking the server's final signature) with cred, and
// reads ParameterStatus and BackendKeyData up to ReadyForQuery. It refuses
// SCRAM-SHA-256-PLUS when the server offers nothing else, and GSSAPI,
// SSPI and Kerberos (ErrUnsupportedAuth).
//
// An ErrorResponse from the server (28P01 wrong password, 3D000 unknown
// database, 53300 too many connections, ...) comes back as an error
// wrapping a *pgconn.PgError: errors.As finds its SQLState(). ctx bounds
// the whole login; Login reads nothing past ReadyForQuery and clears the
// connection's deadline on success. After an error the caller must close
// conn.
func Login(ctx context.Context, conn net.Conn, params map[string]string, cred ServerCredential) (*ServerSession, error) {
	user := params["user"]
	if user == "" {
		return nil, errors.New("server login: no user in the startup parameters")
	}
	for k, v := range params {
		if k == "" || strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("server login: startup parameter %q: empty name or NUL byte", k)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("server login as %q: %w", user, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	l := serverLogin{conn: conn, user: user, cred: cred}
	sess, err := l.run(params)
	if !stop() && err == nil {
		// ctx ended as we finished: conn's deadline may be in the past now.
		err = errors.New("login finished as the context ended")
	}
	if err != nil {
		if cerr := ctxErr(ctx); cerr != nil {
			err = fmt.Errorf("%w: %w", cerr, err)
		}
	}
	if err != nil {
		if db := params["database"]; db != "" {
			return nil, fmt.Errorf("server login as %q to database %q: %w", user, db, err)
		}
		return nil, fmt.Errorf("server login as %q: %w", user, err)
	}
	conn.SetDeadline(time.Time{})
	return sess, nil
}

// serverLogin is one login's state.
type serverLogin struct {
	conn net.Conn
	user string
	cred ServerCredential

	scram     *SCRAMClient
	scramCont bool // the server-first message came
	scramDone bool // the server's signature was checked
	authOK    bool
}

func (l *serverLogin) run(params map[string]string) (*ServerSession, error) {
	if err := l.send(&pgproto3.StartupMessage{ProtocolVersion: protocol30, Parameters: params}); err != nil {
		return nil, err
	}
	sess := &ServerSession{Params: make(map[string]string)}
	for {
		typ, body, err := readMsgExact(l.conn, maxServerMessage)
		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
		switch typ {
		case 'R':
			if err := l.authRequest(body); err != nil {
				return nil, err
			}
		case 'E':
			var msg pgproto3.ErrorResponse
			if err := msg.Decode(body); err != nil {
				return nil, fmt.Errorf("decode ErrorResponse: %w", err)
			}
			return nil, pgconn.ErrorResponseToPgError(&msg)
		case 'S':
			var msg pgproto3.ParameterStatus
			if err := msg.Decode(body); err != nil {
				return nil, fmt.Errorf("decode ParameterStatus: %w", err)
			}
			sess.Params[msg.Name] = msg.Value
		case 'K':
			if len(body) < 8 {
				return nil, fmt.Errorf("BackendKeyData of %d bytes", len(body))
			}
			sess.Key = bytes.Clone(body)
			sess.PID = binary.BigEndian.Uint32(body)
		case 'N', 'v':
			// A NoticeResponse, or NegotiateProtocolVersion (the server
			// speaks an older 3.x or ignores a _pq_ option): go on.
		case 'Z':
			if !l.authOK {
				return nil, errors.New("ReadyForQuery before AuthenticationOk")
			}
			return sess, nil
		default:
			return nil, fmt.Errorf("unexpected message %q during login", typ)
		}
	}
}

// authRequest answers one AuthenticationXxx message.
func (l *serverLogin) authRequest(body []byte) error {
	if len(body) < 4 {
		return errors.New("authentication request too short")
	}
	code, data := binary.BigEndian.Uint32(body), body[4:]
	if l.authOK {
		return fmt.Errorf("authentication request %d after AuthenticationOk", code)
	}
	switch code {
	case authOK:
		if l.scram != nil && !l.scramDone {
			return errors.New("AuthenticationOk before the SCRAM exchange completed")
		}
		l.authOK = true
		return nil
	case authCleartext:
		pw := l.cred.password()
		if pw == "" {
			return fmt.Errorf("server asks for a cleartext password: %w", ErrUnusableCredential)
		}
		return l.send(&pgproto3.PasswordMessage{Password: pw})
	case authMD5:
		if len(data) != 4 {
			return errors.New("AuthenticationMD5Password without a 4-byte salt")
		}
		var inner string
		switch {
		case l.cred.password() != "":
			inner = md5Secret(l.cred.password(), l.user)[3:]
		case l.cred.Secret != nil && l.cred.Secret.Kind == SecretMD5 && isMD5Secret(l.cred.Secret.MD5):
			inner = l.cred.Secret.MD5[3:]
		default:
			return fmt.Errorf("server asks for md5: %w", ErrUnusableCredential)
		}
		return l.send(&pgproto3.PasswordMessage{Password: md5Hex(inner, string(data))})
	case authSASL:
		if l.scram != nil {
			return errors.New("second AuthenticationSASL")
		}
		var msg pgproto3.AuthenticationSASL
		if err := msg.Decode(body); err != nil {
			return fmt.Errorf("decode AuthenticationSASL: %w", err)
		}
		if !slices.Contains(msg.AuthMechanisms, scramMechanism) {
			if slices.Contains(msg.AuthMechanisms, scramPlusMechanism) {
				return fmt.Errorf("server offers only SCRAM-SHA-256-PLUS (channel binding): %w", ErrUnsupportedAuth)
			}
			return fmt.Errorf("server offers SASL mechanisms %q: %w", msg.AuthMechanisms, ErrUnsupportedAuth)
		}
		switch {
		case l.cred.password() != "":
			l.scram = NewSCRAMClient(l.cred.password())
		case l.cred.Secret != nil && l.cred.Secret.Kind == SecretSCRAM && l.cred.ClientKey != nil:
			c, err := NewSCRAMPassThrough(l.cred.Secret.SCRAM, l.cred.ClientKey)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrUnusableCredential, err)
			}
			l.scram = c
		case l.cred.Secret != nil && l.cred.Secret.Kind == SecretSCRAM:
			return fmt.Errorf("server asks for SCRAM and the SCRAM secret has no client key to pass through (a client must log in with SCRAM first): %w", ErrUnusableCredential)
		default:
			return fmt.Errorf("server asks for SCRAM-SHA-256: %w", ErrUnusableCredential)
		}
		return l.send(&pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism, Data: l.scram.ClientFirst()})
	case authSASLCont:
		if l.scram == nil || l.scramCont {
			return errors.New("unexpected AuthenticationSASLContinue")
		}
		l.scramCont = true
		final, err := l.scram.ClientFinal(data)
		if err != nil {
			return err
		}
		return l.send(&pgproto3.SASLResponse{Data: final})
	case authSASLFinal:
		if l.scram == nil || !l.scramCont || l.scramDone {
			return errors.New("unexpected AuthenticationSASLFinal")
		}
		if err := l.scram.VerifyServerFinal(data); err != nil {
			return err
		}
		l.scramDone = true
		return nil
	case authKerberosV5:
		return fmt.Errorf("server asks for Kerberos V5: %w", ErrUnsupportedAuth)
	case authSCMCreds:
		return fmt.Errorf("server asks for SCM credentials: %w", ErrUnsupportedAuth)
	case authGSS, authGSSContinue:
		return fmt.Errorf("server asks for GSSAPI: %w", ErrUnsupportedAuth)
	case authSSPI:
		return fmt.Errorf("server asks for SSPI: %w", ErrUnsupportedAuth)
	}
	return fmt.Errorf("server asks for authentication method %d: %w", code, ErrUnsupportedAuth)
}

// ctxErr is ctx's error, or DeadlineExceeded once its deadline has passed:
// the connection's deadline, set to the same time, may fire before ctx's
// timer does.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

func (l *serverLogin) send(msg pgproto3.FrontendMessage) error {
	b, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	if _, err := l.conn.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// md5Secret is PostgreSQL's stored md5 password: "md5" + md5(password + user).
func md5Secret(password, user string) string { return md5Hex(password, user) }

func md5Hex(a, b string) string {
	sum := md5.Sum([]byte(a + b))
	return "md5" + hex.EncodeToString(sum[:])
}

// errMessageLength is a message whose length field is out of bounds.
var errMessageLength = errors.New("invalid message length")

// readMsgExact reads one message (type byte, int32 length, body) and not a
// byte more, so that what follows stays in r for whoever reads next.
func readMsgExact(r io.Reader, maxBody int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int64(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 || n > int64(maxBody) {
		return hdr[0], nil, fmt.Errorf("%w: message %q with length %d", errMessageLength, hdr[0], n+4)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return hdr[0], nil, err
	}
	return hdr[0], body, nil
}
