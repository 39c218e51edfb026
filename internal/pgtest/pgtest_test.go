package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func TestLogins(t *testing.T) {
	s := Managed(t)
	for _, tc := range []struct{ user, password string }{
		{SuperUser, SuperPassword},
		{TrustUser, ""},
		{MD5User, MD5Password},
		{ScramUser, ScramPassword},
		{PlainUser, PlainPassword},
	} {
		t.Run(tc.user, func(t *testing.T) {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, s.DSNFor(tc.user, tc.password))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var got string
			if err := conn.QueryRow(ctx, "select current_user").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.user {
				t.Fatalf("current_user = %q, want %q", got, tc.user)
			}
		})
	}
}

func TestWrongPasswordFails(t *testing.T) {
	s := Managed(t)
	conn, err := pgx.Connect(context.Background(), s.DSNFor(ScramUser, "wrong"))
	if err == nil {
		conn.Close(context.Background())
		t.Fatal("login with a wrong password succeeded")
	}
}
