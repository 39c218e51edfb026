package pool

import "errors"

// SecretKind says what a Secret holds.
type SecretKind uint8

const (
	SecretPlain SecretKind = iota + 1 // the password itself
	SecretMD5                         // "md5" + hex(md5(password + user))
	SecretSCRAM                       // a SCRAM-SHA-256 verifier, as pg_authid stores it
)

// Secret is what the proxy knows of a user's password: from the auth file
// or an auth_query. It must never be logged or exported.
type Secret struct {
	User  string
	Kind  SecretKind
	Plain string         // SecretPlain
	MD5   string         // SecretMD5: "md5" and 32 hex digits
	SCRAM *SCRAMVerifier // SecretSCRAM
}

// SCRAMVerifier is a parsed "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".
type SCRAMVerifier struct {
	Iterations int
	Salt       []byte
	StoredKey  []byte // H(ClientKey)
	ServerKey  []byte
}

// ErrNoSuchUser is returned by a SecretSource that knows no such user.
var ErrNoSuchUser = errors.New("no such user")

// ErrAuthFailed is returned when a client's password does not match.
var ErrAuthFailed = errors.New("password authentication failed")
