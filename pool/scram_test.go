package pool

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// RFC 7677, section 3: the SCRAM-SHA-256 exchange for user "user",
// password "pencil".
const (
	rfcClientNonce = "rOprNGfwEbeRWgbNEkqO"
	rfcServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfcClientFirst = "n,,n=user,r=" + rfcClientNonce
	rfcServerFirst = "r=" + rfcClientNonce + rfcServerNonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinal = "c=biws,r=" + rfcClientNonce + rfcServerNonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
)

// rfcVerifier is the verifier of RFC 7677's example: password "pencil",
// salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
const rfcVerifier = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

func mustVerifier(t testing.TB, s string) *SCRAMVerifier {
	t.Helper()
	v, err := ParseSCRAMVerifier(s)
	if err != nil {
		t.Fatalf("ParseSCRAMVerifier: %v", err)
	}
	return v
}

func rfcSalt() []byte {
	b, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	return b
}

// clientKeyOf is the ClientKey a client derives from the password.
func clientKeyOf(t testing.TB, password string, v *SCRAMVerifier) []byte {
	t.Helper()
	salted, err := saltedPassword(password, v.Salt, v.Iterations)
	if err != nil {
		t.Fatal(err)
	}
	return hmacSHA256(salted, "Client Key")
}

func TestSCRAMVerifierDerivation(t *testing.T) {
	v, err := deriveSCRAMVerifier("pencil", rfcSalt(), 4096)
	if err != nil {
		t.Fatal(err)
	}
	if got := v.encode(); got != rfcVerifier {
		t.Fatalf("verifier of pencil = %s, want %s", got, rfcVerifier)
	}
	nv, err := NewSCRAMVerifier("pencil", 0)
	if err != nil {
		t.Fatal(err)
	}
	if nv.Iterations != DefaultSCRAMIterations || len(nv.Salt) != scramSaltLen || bytes.Equal(nv.Salt, v.Salt) {
		t.Fatalf("NewSCRAMVerifier: %d iterations, salt %x", nv.Iterations, nv.Salt)
	}
	if again, _ := deriveSCRAMVerifier("pencil", nv.Salt, 4096); !cmp.Equal(again, nv) {
		t.Fatal("NewSCRAMVerifier does not derive from the password and its salt")
	}
}

// TestSCRAMServerRFC7677 plays the client of RFC 7677 against SCRAMServer.
func TestSCRAMServerRFC7677(t *testing.T) {
	v := mustVerifier(t, rfcVerifier)
	s := NewSCRAMServer(v)
	s.serverNonce = rfcServerNonce
	first, err := s.ServerFirst([]byte(rfcClientFirst))
	if err != nil {
		t.Fatal(err)
	}
	if string(first) != rfcServerFirst {
		t.Fatalf("server-first = %q, want %q", first, rfcServerFirst)
	}
	final, err := s.ServerFinal([]byte(rfcClientFinal))
	if err != nil {
		t.Fatal(err)
	}
	if string(final) != rfcServerFinal {
		t.Fatalf("server-final = %q, want %q", final, rfcServerFinal)
	}
	if want := clientKeyOf(t, "pencil", v); !bytes.Equal(s.ClientKey(), want) {
		t.Fatalf("recovered ClientKey %x, want %x", s.ClientKey(), want)
	}
}

// TestSCRAMClientRFC7677 plays the client of RFC 7677 with SCRAMClient.
func TestSCRAMClientRFC7677(t *testing.T) {
	c := NewSCRAMClient("pencil")
	c.clientNonce = rfcClientNonce
	if got := string(c.ClientFirst()); got != "n,,n=,r="+rfcClientNonce {
		t.Fatalf("client-first = %q", got)
	}
	c.clientFirstBare = "n=user,r=" + rfcClientNonce // RFC 7677 names its user
	final, err := c.ClientFinal([]byte(rfcServerFirst))
	if err != nil {
		t.Fatal(err)
	}
	if string(final) != rfcClientFinal {
		t.Fatalf("client-final = %q, want %q", final, rfcClientFinal)
	}
	if err := c.VerifyServerFinal([]byte(rfcServerFinal)); err != nil {
		t.Fatal(err)
	}
	bad := []byte("v=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err := c.VerifyServerFinal(bad); err == nil || !strings.Contains(err.Error(), "invalid server signature") {
		t.Fatalf("wrong signature: err = %v", err)
	}
	if err := c.VerifyServerFinal([]byte("e=invalid-proof")); err == nil || !strings.Contains(err.Error(), "invalid-proof") {
		t.Fatalf("server error: err = %v", err)
	}
}

// exchange runs a client against a server; it returns the server's error.
func exchange(t *testing.T, c *SCRAMClient, s *SCRAMServer) error {
	t.Helper()
	first, err := s.ServerFirst(c.ClientFirst())
	if err != nil {
		t.Fatalf("ServerFirst: %v", err)
	}
	cf, err := c.ClientFinal(first)
	if err != nil {
		t.Fatalf("ClientFinal: %v", err)
	}
	sf, err := s.ServerFinal(cf)
	if err != nil {
		return err
	}
	if err := c.VerifyServerFinal(sf); err != nil {
		t.Fatalf("VerifyServerFinal: %v", err)
	}
	return nil
}

func TestSCRAMExchange(t *testing.T) {
	v, err := NewSCRAMVerifier("right", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := exchange(t, NewSCRAMClient("right"), NewSCRAMServer(v)); err != nil {
		t.Fatalf("right password: %v", err)
	}
	s := NewSCRAMServer(v)
	if err := exchange(t, NewSCRAMClient("wrong"), s); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong password: err = %v, want ErrAuthFailed", err)
	}
	if s.ClientKey() != nil {
		t.Fatal("a failed exchange left a ClientKey")
	}
}

// TestSCRAMPassThrough recovers a client's key with SCRAMServer and logs in
// with it, without the password, to another server holding the same
// verifier.
func TestSCRAMPassThrough(t *testing.T) {
	v, err := NewSCRAMVerifier("secret", 0)
	if err != nil {
		t.Fatal(err)
	}
	front := NewSCRAMServer(v)
	if err := exchange(t, NewSCRAMClient("secret"), front); err != nil {
		t.Fatal(err)
	}
	c, err := NewSCRAMPassThrough(v, front.ClientKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := exchange(t, c, NewSCRAMServer(v)); err != nil {
		t.Fatalf("pass-through: %v", err)
	}

	// The server stores another verifier of the same password: other salt.
	other, _ := NewSCRAMVerifier("secret", 0)
	c, _ = NewSCRAMPassThrough(v, front.ClientKey())
	first, _ := NewSCRAMServer(other).ServerFirst(c.ClientFirst())
	if _, err := c.ClientFinal(first); err == nil || !strings.Contains(err.Error(), "salt and iteration count") {
		t.Fatalf("other salt: err = %v", err)
	}
	if _, err := NewSCRAMPassThrough(other, front.ClientKey()); err == nil {
		t.Fatal("a ClientKey of another verifier was accepted")
	}
	if _, err := NewSCRAMPassThrough(v, []byte("short")); err == nil {
		t.Fatal("a short ClientKey was accepted")
	}
}

func TestSCRAMServerFirstMalformed(t *testing.T) {
	tests := []struct {
		msg         string
		unsupported bool
		want        string
	}{
		{"", false, "empty"},
		{"n,,n=,r=abc\x00", false, "length"},
		{"x,,n=,r=abc", false, "channel-binding flag"},
		{"p=tls-server-end-point,,n=,r=abc", true, "channel binding"},
		{"n", false, "comma expected"},
		{"n,a=admin,n=,r=abc", true, "authorization identity"},
		{"n,x,n=,r=abc", false, "unexpected attribute"},
		{"n,,m=ext,n=,r=abc", true, "extension"},
		{"n,,r=abc", false, `attribute 'n' expected`},
		{"n,,n=,x=abc", false, `attribute 'r' expected`},
		{"n,,n=,r", false, `"="`},
		{"n,,n=,r=", false, "empty nonce"},
		{"n,,n=,r=a b", false, "non-printable"},
		{"n,,n=,r=abc,1=x", false, "invalid character"},
		{"n,,n=,r=abc,x", false, `"="`},
	}
	v := mustVerifier(t, rfcVerifier)
	for _, tt := range tests {
		_, err := NewSCRAMServer(v).ServerFirst([]byte(tt.msg))
		if err == nil {
			t.Errorf("ServerFirst(%q) accepted", tt.msg)
			continue
		}
		if errors.Is(err, errSCRAMUnsupported) != tt.unsupported {
			t.Errorf("ServerFirst(%q) = %v: unsupported = %t", tt.msg, err, tt.unsupported)
		}
		if !tt.unsupported && !errors.Is(err, errSCRAMMalformed) {
			t.Errorf("ServerFirst(%q) = %v, want a malformed-message error", tt.msg, err)
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ServerFirst(%q) = %v, want it to say %q", tt.msg, err, tt.want)
		}
	}
	// What PostgreSQL accepts: y flag, a user name, extensions, a trailing comma.
	for _, msg := range []string{"y,,n=,r=abc", "n,,n=someone,r=abc,x=ext,Z=", "n,,n=,r=abc,"} {
		if _, err := NewSCRAMServer(v).ServerFirst([]byte(msg)); err != nil {
			t.Errorf("ServerFirst(%q): %v", msg, err)
		}
	}
}

func TestSCRAMServerFinalMalformed(t *testing.T) {
	v := mustVerifier(t, rfcVerifier)
	nonce := rfcClientNonce + rfcServerNonce
	proof := "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	tests := []struct {
		first, final string
		want         string // "" means the proof is checked and fails
	}{
		{rfcClientFirst, "c=eSws,r=" + nonce + ",p=" + proof, "channel-binding attribute"},
		{"y,,n=user,r=" + rfcClientNonce, "c=biws,r=" + nonce + ",p=" + proof, "channel-binding attribute"},
		{rfcClientFirst, "r=" + nonce + ",p=" + proof, `attribute 'c' expected`},
		{rfcClientFirst, "c=biws,p=" + proof, `attribute 'r' expected`},
		{rfcClientFirst, "c=biws,r=" + nonce, "end of string"},
		{rfcClientFirst, "c=biws,r=" + nonce + ",p=" + proof[:40], "malformed proof"},
		{rfcClientFirst, "c=biws,r=" + nonce + ",p=" + proof + ",x=y", "garbage"},
		{rfcClientFirst, "c=biws,r=" + rfcClientNonce + "x,p=" + proof, "nonce does not match"},
		{rfcClientFirst, "c=biws,r=" + nonce + ",p=" + strings.Repeat("A", 43) + "=", ""},
		// An extension before the proof is skipped, and signed.
		{rfcClientFirst, "c=biws,r=" + nonce + ",x=ext,p=" + proof, ""},
	}
	for _, tt := range tests {
		s := NewSCRAMServer(v)
		s.serverNonce = rfcServerNonce
		if _, err := s.ServerFirst([]byte(tt.first)); err != nil {
			t.Fatal(err)
		}
		_, err := s.ServerFinal([]byte(tt.final))
		switch {
		case err == nil:
			t.Errorf("ServerFinal(%q) accepted", tt.final)
		case tt.want == "" && !errors.Is(err, ErrAuthFailed):
			t.Errorf("ServerFinal(%q) = %v, want ErrAuthFailed", tt.final, err)
		case tt.want != "" && (errors.Is(err, ErrAuthFailed) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("ServerFinal(%q) = %v, want %q", tt.final, err, tt.want)
		}
	}
	if _, err := NewSCRAMServer(v).ServerFinal([]byte(rfcClientFinal)); err == nil {
		t.Error("ServerFinal before ServerFirst accepted")
	}
}

func TestSCRAMClientServerFirstMalformed(t *testing.T) {
	v := mustVerifier(t, rfcVerifier)
	key := clientKeyOf(t, "pencil", v)
	n := rfcClientNonce
	tests := []struct{ msg, want string }{
		{"", "empty"},
		{"r=" + n + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce mismatch"}, // no server part
		{"r=x" + n + "S,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce mismatch"},
		{"r=" + n + "S,s=W22Z aJ0SNY7soEsUEjb6gQ==,i=4096", "invalid salt"},
		{"r=" + n + "S,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", "iteration count"},
		{"r=" + n + "S,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,x=1", "garbage"},
		{"r=" + n + "S,i=4096", `attribute 's' expected`},
		{"r=" + n + "S,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4097", "salt and iteration count"},
	}
	for _, tt := range tests {
		c, err := NewSCRAMPassThrough(v, key)
		if err != nil {
			t.Fatal(err)
		}
		c.clientNonce = n
		c.ClientFirst()
		if _, err := c.ClientFinal([]byte(tt.msg)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ClientFinal(%q) = %v, want %q", tt.msg, err, tt.want)
		}
	}
}

func TestParseSCRAMVerifierErrorsHoldNoSecret(t *testing.T) {
	bad := []string{
		"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
		"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4q==:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
		"SCRAM-SHA-256$-1:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
		"SCRAM-SHA-256$99999999999:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
		"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
	}
	for _, s := range bad {
		_, err := ParseSCRAMVerifier(s)
		if err == nil {
			t.Errorf("ParseSCRAMVerifier(%q) accepted", s)
			continue
		}
		for _, part := range []string{"W22ZaJ0S", "WG5d8oPm", "wfPLwcE6"} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("error %q quotes the secret", err)
			}
		}
	}
}

func TestPgBase64Decode(t *testing.T) {
	for _, s := range []string{"", "QQ==", "QUI=", "QUJD", "QR==", "QUJDRA=="} {
		want, _ := base64.StdEncoding.DecodeString(s)
		got, ok := pgBase64Decode(s)
		if !ok || !bytes.Equal(got, want) {
			t.Errorf("pgBase64Decode(%q) = %q, %t; want %q", s, got, ok, want)
		}
	}
	for _, s := range []string{"QQ", "QQ=", "Q===", "QU JD", "QUJD\n", "QQ==QUJD", "QU*D", "=QUJ"} {
		if got, ok := pgBase64Decode(s); ok {
			t.Errorf("pgBase64Decode(%q) = %q, want an error", s, got)
		}
	}
}

func TestSASLPrep(t *testing.T) {
	tests := []struct{ in, want string }{
		{"pencil", "pencil"},
		{"tab\there", "tab\there"},       // ASCII is used as it is
		{"I\u00adX", "IX"},               // RFC 4013: soft hyphen mapped to nothing
		{"user", "user"},                 // no transformation
		{"\u00aa", "a"},                  // NFKC
		{"\u2168", "IX"},                 // NFKC
		{"\ufb01x", "fix"},               // the "fi" ligature, NFKC
		{"a\u00a0b", "a b"},              // a non-ASCII space becomes a space
		{"p\u00e4ss", "p\u00e4ss"},       // already normal
		{"pa\u0308ss", "p\u00e4ss"},      // composed
		{"\u00e4\u0007", "\u00e4\u0007"}, // prohibited: used unchanged
		{"\u00e4\ue000", "\u00e4\ue000"}, // private use: unchanged
		{"\xff\u00e4", "\xff\u00e4"},     // not UTF-8: unchanged
	}
	for _, tt := range tests {
		if got := saslPrep(tt.in); got != tt.want {
			t.Errorf("saslPrep(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzSCRAMServerFirst feeds arbitrary client-first messages to the server
// side: nothing panics, and a message it accepts gets a server-first
// message that starts with the client's nonce.
func FuzzSCRAMServerFirst(f *testing.F) {
	for _, s := range []string{rfcClientFirst, "n,,n=,r=abc", "y,,n=,r=abc,x=1", "p=x,,n=,r=a", "n,a=b,n=,r=c", "n,,m=1", "n,,n=,r=\x00", ""} {
		f.Add([]byte(s))
	}
	v := mustVerifier(f, rfcVerifier)
	f.Fuzz(func(t *testing.T, msg []byte) {
		s := NewSCRAMServer(v)
		first, err := s.ServerFirst(msg)
		if err != nil {
			if errors.Is(err, errSCRAMMalformed) == errors.Is(err, errSCRAMUnsupported) {
				t.Fatalf("error %v is neither malformed nor unsupported", err)
			}
			return
		}
		if !bytes.HasPrefix(first, []byte("r="+s.clientNonce+s.serverNonce+",s=")) || !scramPrintable(s.clientNonce) {
			t.Fatalf("client-first %q gave server-first %q", msg, first)
		}
	})
}

// FuzzSCRAMServerFinal feeds arbitrary client-final messages to the server
// side after a valid client-first: nothing panics, and a message it
// accepts carries the proof of the password (the ClientKey it recovers is
// the password's).
func FuzzSCRAMServerFinal(f *testing.F) {
	f.Add([]byte(rfcClientFinal))
	f.Add([]byte("c=biws,r=" + rfcClientNonce + rfcServerNonce + ",x=y,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	f.Add([]byte("c=biws,r=" + rfcClientNonce + rfcServerNonce + ",p=AAAA"))
	f.Add([]byte("c=biws,r=,p="))
	f.Add([]byte("c=biws"))
	v := mustVerifier(f, rfcVerifier)
	want := clientKeyOf(f, "pencil", v)
	f.Fuzz(func(t *testing.T, msg []byte) {
		s := NewSCRAMServer(v)
		s.serverNonce = rfcServerNonce
		if _, err := s.ServerFirst([]byte(rfcClientFirst)); err != nil {
			t.Fatal(err)
		}
		final, err := s.ServerFinal(msg)
		if err != nil {
			if s.ClientKey() != nil {
				t.Fatal("a refused message left a ClientKey")
			}
			return
		}
		if !hmac.Equal(s.ClientKey(), want) || !bytes.HasPrefix(final, []byte("v=")) {
			t.Fatalf("accepted %q with ClientKey %x", msg, s.ClientKey())
		}
		h := sha256.Sum256(s.ClientKey())
		if !bytes.Equal(h[:], v.StoredKey) {
			t.Fatal("accepted a key that is not the verifier's")
		}
	})
}

// FuzzSCRAMClientServerFirst feeds arbitrary server-first messages to the
// client side (in pass-through, so no key derivation runs): nothing panics,
// and what it answers keeps the server's nonce.
func FuzzSCRAMClientServerFirst(f *testing.F) {
	f.Add([]byte(rfcServerFirst))
	f.Add([]byte("r=" + rfcClientNonce + "x,s=,i=1"))
	f.Add([]byte("r=" + rfcClientNonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"))
	f.Add([]byte("e=other-error"))
	v := mustVerifier(f, rfcVerifier)
	key := clientKeyOf(f, "pencil", v)
	f.Fuzz(func(t *testing.T, msg []byte) {
		c, err := NewSCRAMPassThrough(v, key)
		if err != nil {
			t.Fatal(err)
		}
		c.clientNonce = rfcClientNonce
		c.ClientFirst()
		final, err := c.ClientFinal(msg)
		if err != nil {
			return
		}
		nonce, _, _ := readAttrValue(string(msg), 'r')
		if !bytes.HasPrefix(final, []byte("c=biws,r="+nonce+",p=")) {
			t.Fatalf("server-first %q gave client-final %q", msg, final)
		}
	})
}

// FuzzParseSCRAMVerifier: nothing panics, and a verifier that parses
// encodes to text that parses to the same verifier.
func FuzzParseSCRAMVerifier(f *testing.F) {
	f.Add(rfcVerifier)
	f.Add("$$" + rfcVerifier)
	f.Add("SCRAM-SHA-256$ 1:$:")
	f.Add("SCRAM-SHA-256$4096:$AAAA:AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSCRAMVerifier(s)
		if err != nil {
			return
		}
		again, err := ParseSCRAMVerifier(v.encode())
		if err != nil {
			t.Fatalf("%q parsed, its encoding %q does not: %v", s, v.encode(), err)
		}
		if !cmp.Equal(v, again) {
			t.Fatalf("%q and its encoding parse differently", s)
		}
	})
}
