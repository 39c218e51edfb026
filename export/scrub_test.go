package export

import (
	"strings"
	"testing"
)

func TestScrubError(t *testing.T) {
	tests := []struct{ in, want string }{
		{`duplicate key value violates unique constraint "users_email_key"`, `duplicate key value violates unique constraint "users_email_key"`},
		{`invalid input syntax for type integer: "4111 1111 1111 1111"`, `invalid input syntax for type integer: "?"`},
		{`value "99999999999" is out of range for type integer`, `value "?" is out of range for type integer`},
		{`null value in column "email" of relation "users" violates not-null constraint`, `null value in column "email" of relation "users" violates not-null constraint`},
		{`syntax error at or near "'secret'"`, `syntax error at or near "?"`},
		{`invalid input value for enum mood: "x""y"`, `invalid input value for enum mood: "?"`},
		{`relation "a""b" does not exist`, `relation "a""b" does not exist`},
		{`password authentication failed for user "bob"`, `password authentication failed for user "bob"`},
		{`date/time field value out of range: "2026-13-45`, `date/time field value out of range: "?"`},
		{`division by zero`, `division by zero`},
		{``, ``},
	}
	for _, tt := range tests {
		if got := scrubError(tt.in); got != tt.want {
			t.Errorf("scrubError(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzScrubError(f *testing.F) {
	f.Add(`value "x" is out of range`)
	f.Add(`relation "a""b`)
	f.Fuzz(func(t *testing.T, msg string) {
		out := scrubError(msg) // must not panic
		// Each quoted part becomes at most "?", one byte more than "".
		if len(out) > len(msg)+strings.Count(msg, `"`)+3 {
			t.Fatalf("scrubbed %q grew to %q", msg, out)
		}
	})
}
