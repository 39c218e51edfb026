package pool

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func plainSecret(user, pw string) Secret { return Secret{User: user, Kind: SecretPlain, Plain: pw} }

func TestParseUserlistFiles(t *testing.T) {
	tests := []struct {
		file    string
		want    map[string]Secret
		wantErr string // the error names this line
	}{
		{file: "basic.txt", want: map[string]Secret{
			"admin":     plainSecret("admin", "1234"),
			"md5user":   {User: "md5user", Kind: SecretMD5, MD5: "md545f2603610af569b6155c45067268c6b"},
			"scramuser": {User: "scramuser", Kind: SecretSCRAM, SCRAM: mustVerifier(t, rfcVerifier)},
		}},
		{file: "quoting.txt", want: map[string]Secret{
			"spaced": plainSecret("spaced", "pw"),
			`quo"te`: plainSecret(`quo"te`, `pa"ss"`),
			"empty":  plainSecret("empty", ""),
			"dup":    plainSecret("dup", "second"),
		}},
		{file: "multiline.txt", want: map[string]Secret{
			"alice": plainSecret("alice", "wonderland"),
			"bob":   plainSecret("bob", "builder"),
		}},
		{file: "plain_lookalikes.txt", want: map[string]Secret{
			"md5upper": plainSecret("md5upper", "md545F2603610AF569B6155C45067268C6B"),
			"md5short": plainSecret("md5short", "md545f2603610af569b6155c45067268c6"),
			"badscram": plainSecret("badscram", "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$c2hvcnQ=:c2hvcnQ="),
			"crlf":     plainSecret("crlf", "x"),
		}},
		{file: "hash_comment.txt", wantErr: "line 2: an entry must start with a double-quoted user name"},
		{file: "unclosed_user.txt", wantErr: "line 2: no closing quote after the password"},
		{file: "no_password.txt", wantErr: "line 3: no double-quoted password after the user name"},
		{file: "unclosed_password.txt", wantErr: "line 2: no closing quote after the password"},
		{file: "unquoted.txt", wantErr: "line 1: an entry must start with a double-quoted user name"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", "userlist", tt.file)
			got, err := LoadUserlist(path)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("LoadUserlist = %v, want an error", got)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %q, want it to name %s and say %q", err, path, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("LoadUserlist (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadUserlistMissing(t *testing.T) {
	_, err := LoadUserlist(filepath.Join(t.TempDir(), "nope.txt"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}

func TestParseUserlistLimits(t *testing.T) {
	long := strings.Repeat("u", maxUserlistUser)
	if _, err := ParseUserlist(strings.NewReader(`"` + long + `" "pw"`)); err != nil {
		t.Fatalf("user of %d bytes: %v", len(long), err)
	}
	_, err := ParseUserlist(strings.NewReader("\n\"" + long + "u\" \"pw\""))
	if err == nil || !strings.Contains(err.Error(), "line 2: user name longer") {
		t.Fatalf("user of %d bytes: err = %v", len(long)+1, err)
	}
	_, err = ParseUserlist(strings.NewReader(`"u" "` + strings.Repeat("p", maxUserlistPassword+1) + `"`))
	if err == nil || !strings.Contains(err.Error(), "password longer") {
		t.Fatalf("long password: err = %v", err)
	}
	_, err = ParseUserlist(strings.NewReader("\"a\" \"b\"\n\"c\x00\" \"d\""))
	if err == nil || !strings.Contains(err.Error(), "line 2: NUL") {
		t.Fatalf("NUL: err = %v", err)
	}
}

func TestParseSecret(t *testing.T) {
	v := mustVerifier(t, rfcVerifier)
	tests := []struct {
		in   string
		want Secret
	}{
		{"pw", plainSecret("u", "pw")},
		{"", plainSecret("u", "")},
		{"md545f2603610af569b6155c45067268c6b", Secret{User: "u", Kind: SecretMD5, MD5: "md545f2603610af569b6155c45067268c6b"}},
		{"md545f2603610af569b6155c45067268c6bb", plainSecret("u", "md545f2603610af569b6155c45067268c6bb")},
		{"md5-5f2603610af569b6155c45067268c6b", plainSecret("u", "md5-5f2603610af569b6155c45067268c6b")},
		{rfcVerifier, Secret{User: "u", Kind: SecretSCRAM, SCRAM: v}},
		// strtok skips empty fields, as in PostgreSQL and PgBouncer.
		{"$" + rfcVerifier, Secret{User: "u", Kind: SecretSCRAM, SCRAM: v}},
		{strings.Replace(rfcVerifier, "$4096:", "$+4096:", 1), Secret{User: "u", Kind: SecretSCRAM, SCRAM: v}},
		{strings.Replace(rfcVerifier, "$4096:", "$0:", 1), plainSecret("u", strings.Replace(rfcVerifier, "$4096:", "$0:", 1))},
		{strings.Replace(rfcVerifier, "SHA-256", "SHA-1", 1), plainSecret("u", strings.Replace(rfcVerifier, "SHA-256", "SHA-1", 1))},
		{strings.TrimSuffix(rfcVerifier, "="), plainSecret("u", strings.TrimSuffix(rfcVerifier, "="))},
		{rfcVerifier + " ", plainSecret("u", rfcVerifier+" ")},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, ParseSecret("u", tt.in)); diff != "" {
			t.Errorf("ParseSecret(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestUserlistLookup(t *testing.T) {
	u := Userlist{"a": plainSecret("a", "x")}
	if s, err := u.Lookup(t.Context(), "a"); err != nil || s.Plain != "x" {
		t.Fatalf("Lookup(a) = %v, %v", s, err)
	}
	if _, err := u.Lookup(t.Context(), "b"); !errors.Is(err, ErrNoSuchUser) {
		t.Fatalf("Lookup(b) err = %v, want ErrNoSuchUser", err)
	}
}

// FuzzParseUserlist parses arbitrary files: nothing panics, and what parses
// is consistent: each entry is keyed by its own user, its kind agrees with
// ParseSecret, and writing the users back out parses to the same users.
func FuzzParseUserlist(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "userlist", "*.txt"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`"a""" """"`))
	f.Add([]byte("\"\" \"\""))
	f.Add([]byte("\"a\"\n\n\"b\" junk\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		users, err := ParseUserlist(bytes.NewReader(data))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "line ") {
				t.Fatalf("error %q does not name a line", err)
			}
			return
		}
		var again bytes.Buffer
		for name, s := range users {
			if s.User != name {
				t.Fatalf("entry %q has user %q", name, s.User)
			}
			text := secretText(s)
			if diff := cmp.Diff(s, ParseSecret(name, text)); diff != "" {
				t.Fatalf("user %q: secret is not what ParseSecret makes of it:\n%s", name, diff)
			}
			fmt.Fprintf(&again, "%s %s\n", quoteField(name), quoteField(text))
		}
		back, err := ParseUserlist(&again)
		if err != nil {
			t.Fatalf("written back, the users do not parse: %v\n%s", err, again.String())
		}
		if diff := cmp.Diff(users, back); diff != "" {
			t.Fatalf("written back and parsed again (-first +again):\n%s", diff)
		}
	})
}

// secretText is the auth-file form of a secret.
func secretText(s Secret) string {
	switch s.Kind {
	case SecretMD5:
		return s.MD5
	case SecretSCRAM:
		return s.SCRAM.encode()
	}
	return s.Plain
}

func quoteField(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
