package wire

import (
	"encoding/binary"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestDecodeStartup(t *testing.T) {
	startup := func(params string) []byte {
		b := make([]byte, 8, 8+len(params))
		binary.BigEndian.PutUint32(b, uint32(8+len(params)))
		binary.BigEndian.PutUint32(b[4:], 196608)
		return append(b, params...)
	}
	for _, tc := range []struct {
		name    string
		raw     []byte
		wantErr bool
		want    startupPacket
	}{
		{"full", startup("user\x00bob\x00database\x00db\x00application_name\x00app\x00\x00"), false,
			startupPacket{code: 196608, user: "bob", database: "db", application: "app"}},
		{"database defaults to user", startup("user\x00bob\x00\x00"), false, startupPacket{code: 196608, user: "bob", database: "bob"}},
		{"logical replication", startup("user\x00bob\x00replication\x00database\x00\x00"), false,
			startupPacket{code: 196608, user: "bob", database: "bob", replication: true}},
		{"replication off", startup("user\x00bob\x00replication\x00off\x00\x00"), false, startupPacket{code: 196608, user: "bob", database: "bob"}},
		{"protocol 3.2", func() []byte { b := startup("user\x00bob\x00\x00"); b[7] = 2; return b }(), false,
			startupPacket{code: 196610, user: "bob", database: "bob"}},
		{"ssl request", []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}, false, startupPacket{code: codeSSLRequest}},
		{"cancel request", []byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2}, false, startupPacket{code: codeCancelRequest}},
		{"no user", startup("database\x00db\x00\x00"), true, startupPacket{}},
		{"unterminated", startup("user\x00bob"), true, startupPacket{}},
		{"trailing bytes", startup("user\x00bob\x00\x00x"), true, startupPacket{}},
		{"protocol 2", func() []byte { b := startup("user\x00bob\x00\x00"); b[5] = 2; return b }(), true, startupPacket{}},
		{"short cancel", []byte{0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1}, true, startupPacket{}},
		{"length mismatch", []byte{0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f}, true, startupPacket{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := decodeStartup(tc.raw)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("decoded %+v, want an error", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want.raw = tc.raw
			if p.code != tc.want.code || p.user != tc.want.user || p.database != tc.want.database ||
				p.application != tc.want.application || p.replication != tc.want.replication {
				t.Errorf("got %+v, want %+v", *p, tc.want)
			}
		})
	}
}

// TestGSSENCAndSSLRefused negotiates by hand: GSSENCRequest and SSLRequest
// both get 'N', then the login proceeds.
func TestGSSENCAndSSLRefused(t *testing.T) {
	pg := pgtest.Managed(t)
	p := startProxy(t, pg, nil)
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, code := range []uint32{codeGSSENCRequest, codeSSLRequest} {
		req := make([]byte, 8)
		binary.BigEndian.PutUint32(req, 8)
		binary.BigEndian.PutUint32(req[4:], code)
		c.Write(req)
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("answer to %d: %q, %v", code, b[0], err)
		}
	}
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": pgtest.TrustUser, "database": pg.Database}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("login: %+v", e)
		}
	}
}

func TestReplicationNotObserved(t *testing.T) {
	pg := pgtest.Start(t)
	p := startProxy(t, pg, nil)
	ctx := ctxT(t)
	cfg, err := pgconn.ParseConfig(p.dsn(pg.User, pg.Password) + "&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	res, err := c.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
		t.Fatalf("IDENTIFY_SYSTEM: %v, %v", res, err)
	}
	if cs := p.Connections(); len(cs) != 1 || cs[0].State != "replication" {
		t.Errorf("Connections: %+v", cs)
	}
	c.Close(ctx)
	// A normal session afterwards is observed; the replication one never
	// was. Events leave the queue in order, so any event of the replication
	// session would come before these.
	n := p.connect(t)
	if _, err := n.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	p.rec.waitStmts(t, n.PgConn().PID(), 1)
	for _, e := range p.rec.wait(t, "", func([]Event) bool { return true }) {
		if e.Conn.BackendPID != n.PgConn().PID() && e.Kind != ConnOpened {
			t.Errorf("event of the replication session: %+v", e)
		}
	}
}

func TestFunctionCall(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	var oid uint32
	if err := c.QueryRow(ctx, "select 'pg_backend_pid'::regproc::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	fe := c.PgConn().Frontend()
	fe.Send(&pgproto3.FunctionCall{Function: oid})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var result []byte
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := m.(*pgproto3.FunctionCallResponse); ok {
			result = append([]byte(nil), r.Result...)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if len(result) == 0 {
		t.Fatal("no FunctionCallResponse")
	}
	got := p.rec.waitStmts(t, c.PgConn().PID(), 2)
	if g := got[1]; g.Protocol != ProtocolFunctionCall || g.FunctionOID != oid || g.Outcome != OutcomeComplete || g.TxStatus != TxIdle || g.Text != "" {
		t.Errorf("function call: %+v", g)
	}
}

func TestStartupSchema(t *testing.T) {
	tests := []struct {
		params map[string]string
		want   string
	}{
		{map[string]string{"search_path": "app, public"}, "app"},
		{map[string]string{"search_path": `"$user", "Sales", public`}, "Sales"},
		{map[string]string{"search_path": "$user,public"}, "public"},
		{map[string]string{"options": "-c search_path=Billing,public"}, "billing"},
		{map[string]string{"options": "-csearch_path=a -c work_mem=4MB"}, "a"},
		{map[string]string{"options": "--search-path=x\\ y"}, "x y"},
		{map[string]string{"options": "-c statement_timeout=5s"}, ""},
		{map[string]string{}, ""},
	}
	for _, tt := range tests {
		raw := startupPacketBytes(t, tt.params)
		p, err := decodeStartup(raw)
		if err != nil {
			t.Fatalf("%v: %v", tt.params, err)
		}
		if p.schema != tt.want {
			t.Errorf("%v: schema %q, want %q", tt.params, p.schema, tt.want)
		}
	}
}

// startupPacketBytes encodes a protocol 3.0 StartupMessage for user "u".
func startupPacketBytes(t *testing.T, params map[string]string) []byte {
	t.Helper()
	body := []byte("user\x00u\x00")
	for k, v := range params {
		body = append(body, k+"\x00"+v+"\x00"...)
	}
	body = append(body, 0)
	raw := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint32(raw, uint32(8+len(body)))
	binary.BigEndian.PutUint32(raw[4:], 196608)
	return append(raw, body...)
}

func TestStartupOptions(t *testing.T) {
	for _, tc := range []struct {
		opts string
		want [][2]string
	}{
		{"", nil},
		{"-c search_path=a,b", [][2]string{{"search_path", "a,b"}}},
		{"-cstatement_timeout=5s  -c TimeZone=UTC", [][2]string{{"statement_timeout", "5s"}, {"TimeZone", "UTC"}}},
		{`--search-path=x\ y`, [][2]string{{"search_path", "x y"}}},
		{"-c", nil},
		{"-c noequals -e", nil},
	} {
		if got := StartupOptions(tc.opts); !slices.Equal(got, tc.want) {
			t.Errorf("StartupOptions(%q) = %q, want %q", tc.opts, got, tc.want)
		}
	}
}

func FuzzStartupOptions(f *testing.F) {
	f.Add(`-c search_path=a\ b --x-y=1`)
	f.Fuzz(func(t *testing.T, opts string) {
		for _, kv := range StartupOptions(opts) {
			if strings.Contains(kv[0], "-") {
				t.Errorf("name %q keeps a dash", kv[0])
			}
		}
	})
}
