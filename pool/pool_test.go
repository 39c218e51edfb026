package pool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/dotmac/pgtrace/pool"
	"github.com/dotmac/pgtrace/wire"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The role the pooled tests log in as, created once per cluster.
const (
	poolUser     = "pooled"
	poolPassword = "pooled-pass"
)

var roleOnce sync.Once

// setupRole creates poolUser (SCRAM password) and the tables the tests use.
func setupRole(t *testing.T, pg *pgtest.Server) {
	t.Helper()
	var err error
	roleOnce.Do(func() {
		ctx := context.Background()
		var c *pgx.Conn
		c, err = pgx.Connect(ctx, pg.DSN())
		if err != nil {
			return
		}
		defer c.Close(ctx)
		for _, q := range []string{
			"SET password_encryption = 'scram-sha-256'",
			"CREATE ROLE " + poolUser + " LOGIN PASSWORD '" + poolPassword + "'",
			"CREATE TABLE pooled_items (id int PRIMARY KEY, v text)",
			"GRANT ALL ON pooled_items TO " + poolUser,
			"INSERT INTO pooled_items SELECT g, 'item ' || g FROM generate_series(1, 1000) g",
			"CREATE TABLE pooled_copy (id int, v text)",
			"GRANT ALL ON pooled_copy TO " + poolUser,
		} {
			if _, err = c.Exec(ctx, q); err != nil {
				err = fmt.Errorf("%s: %w", q, err)
				return
			}
		}
	})
	if err != nil {
		t.Fatalf("set up the pooled role: %v", err)
	}
}

// secrets is a SecretSource over a map, for the tests.
type secrets map[string]pool.Secret

func (s secrets) Lookup(_ context.Context, user string) (pool.Secret, error) {
	if sec, ok := s[user]; ok {
		return sec, nil
	}
	return pool.Secret{}, pool.ErrNoSuchUser
}

// pooled is wire.Server with a Pooler in front of the test PostgreSQL.
type pooled struct {
	addr string
	pg   *pgtest.Server
	p    *pool.Pooler
	srv  *wire.Server
	rec  *recorder
}

func testLogger() *slog.Logger {
	if os.Getenv("PGTRACE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startPooled(t *testing.T, mode pool.Mode, configure func(*pool.Config)) *pooled {
	t.Helper()
	pg := pgtest.Managed(t)
	setupRole(t, pg)
	rec := &recorder{}
	srv := &wire.Server{Upstream: pg.Addr(), Observer: rec, Logger: testLogger()}
	cfg := pool.Config{
		Mode: mode, Size: 4, MaxWait: 30 * time.Second, Logger: testLogger(),
		Secrets: secrets{poolUser: {User: poolUser, Kind: pool.SecretPlain, Plain: poolPassword}},
	}
	if configure != nil {
		configure(&cfg)
	}
	p, err := pool.New(cfg, srv.DialUpstream)
	if err != nil {
		t.Fatal(err)
	}
	srv.Pooler = p
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	go p.Run(ctx)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		p.Close()
		cancel()
		<-done
	})
	return &pooled{addr: l.Addr().String(), pg: pg, p: p, srv: srv, rec: rec}
}

func (p *pooled) dsn(user, password string) string {
	return pgtest.DSNAt(p.addr, user, password, p.pg.Database)
}

func (p *pooled) connect(t *testing.T, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.dsn(poolUser, poolPassword))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through the pooler: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// recorder counts the relay's statement events.
type recorder struct {
	mu     sync.Mutex
	events []wire.Event
}

func (r *recorder) Observe(e wire.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) statements(match func(*wire.Statement) bool) []wire.Statement {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []wire.Statement
	for _, e := range r.events {
		if e.Kind == wire.StatementDone && match(e.Stmt) {
			out = append(out, *e.Stmt)
		}
	}
	return out
}

// watchBackends counts, until stop, the most server backends poolUser had
// at once, sampling pg_stat_activity directly.
func watchBackends(t *testing.T, pg *pgtest.Server) (stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := pgx.Connect(ctx, pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	var most atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer c.Close(context.Background())
		for ctx.Err() == nil {
			var n int64
			err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'", poolUser).Scan(&n)
			if err == nil && n > most.Load() {
				most.Store(n)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() int { cancel(); <-done; return int(most.Load()) }
}

// TestTransactionModeDrivers: 32 pgx clients in every query mode share 4
// server connections: transactions, prepared statements by name, errors,
// batches; no client sees an error it did not cause, and the server never
// has more than 4 backends for the user.
func TestTransactionModeDrivers(t *testing.T) {
	p := startPooled(t, pool.ModeTransaction, nil)
	stop := watchBackends(t, p.pg)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
	const clients, rounds = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		c := p.connect(t, modes[i%len(modes)])
		wg.Add(1)
		go func(i int, c *pgx.Conn) {
			defer wg.Done()
			if err := driverWork(c, i, rounds); err != nil {
				errs <- fmt.Errorf("client %d (%v): %w", i, modes[i%len(modes)], err)
			}
		}(i, c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if most := stop(); most > 4 || most == 0 {
		t.Errorf("the user had up to %d server backends, want 1 to 4", most)
	}
}

// driverWork is what one client does: lookups, a transaction that writes
// and reads its write, a statement prepared by name and executed many
// times, an error inside a transaction and the rollback after it, a batch.
func driverWork(c *pgx.Conn, id, rounds int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := fmt.Sprintf("lookup_%d", id)
	if _, err := c.Prepare(ctx, name, "SELECT v FROM pooled_items WHERE id = $1"); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	for r := range rounds {
		key := 1 + (id*rounds+r)%1000
		var v string
		if err := c.QueryRow(ctx, "SELECT v FROM pooled_items WHERE id = $1", key).Scan(&v); err != nil || v != fmt.Sprintf("item %d", key) {
			return fmt.Errorf("lookup %d: %q, %v", key, v, err)
		}
		if err := c.QueryRow(ctx, name, key).Scan(&v); err != nil || v != fmt.Sprintf("item %d", key) {
			return fmt.Errorf("prepared lookup %d: %q, %v", key, v, err)
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		var txid int64
		if err := tx.QueryRow(ctx, "SELECT txid_current()").Scan(&txid); err != nil {
			return fmt.Errorf("txid: %w", err)
		}
		var again int64
		if err := tx.QueryRow(ctx, "SELECT txid_current()").Scan(&again); err != nil || again != txid {
			return fmt.Errorf("a transaction moved between server connections: %d then %d (%v)", txid, again, err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1/0"); err == nil {
			return errors.New("division by zero succeeded")
		}
		if err := tx.Rollback(ctx); err != nil {
			return fmt.Errorf("rollback: %w", err)
		}
		// A batch: one round trip, the prepared statement in it (the
		// simple protocol has no prepared statements: a second count).
		b := &pgx.Batch{}
		b.Queue("SELECT count(*) FROM pooled_items WHERE id < $1", key)
		simple := c.Config().DefaultQueryExecMode == pgx.QueryExecModeSimpleProtocol
		if simple {
			b.Queue("SELECT v FROM pooled_items WHERE id = $1", key)
		} else {
			b.Queue(name, key)
		}
		br := c.SendBatch(ctx, b)
		var n int64
		if err := br.QueryRow().Scan(&n); err != nil || n != int64(key-1) {
			return fmt.Errorf("batch count: %d, %v", n, err)
		}
		if err := br.QueryRow().Scan(&v); err != nil || v != fmt.Sprintf("item %d", key) {
			return fmt.Errorf("batch lookup: %q, %v", v, err)
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("batch close: %w", err)
		}
	}
	if err := c.Deallocate(ctx, name); err != nil {
		return fmt.Errorf("deallocate: %w", err)
	}
	return nil
}

// TestTransactionModeTools: psql and pgbench in every protocol through a
// pool of 4.
func TestTransactionModeTools(t *testing.T) {
	p := startPooled(t, pool.ModeTransaction, nil)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, p.pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	bin, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "PGPASSWORD="+p.pg.Password)
	initCmd := exec.Command(bin+"/pgbench", "-i", "-q", "-s", "1", "-h", p.pg.Host, "-p", fmt.Sprint(p.pg.Port), "-U", p.pg.User, p.pg.Database)
	initCmd.Env = env
	if out, err := initCmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	for _, tbl := range []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"} {
		if _, err := admin.Exec(ctx, "GRANT ALL ON "+tbl+" TO "+poolUser); err != nil {
			t.Fatal(err)
		}
	}
	host, port, _ := net.SplitHostPort(p.addr)
	poolEnv := append(os.Environ(), "PGPASSWORD="+poolPassword)
	stop := watchBackends(t, p.pg)
	for _, mode := range []string{"simple", "extended", "prepared"} {
		cmd := exec.Command(bin+"/pgbench", "-n", "-M", mode, "-c", "32", "-j", "4", "-t", "30", "-h", host, "-p", port, "-U", poolUser, p.pg.Database)
		cmd.Env = poolEnv
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "number of transactions actually processed: 960/960") {
			t.Errorf("pgbench -M %s: %v\n%s", mode, err, out)
		}
	}
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql is not installed (.ci/run installs postgresql-client): %v", err)
	}
	cmd := exec.Command(psql, "-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", poolUser, "-d", p.pg.Database,
		"-c", "BEGIN", "-c", "SELECT count(*) FROM pooled_items", "-c", "COMMIT", "-c", `\copy (SELECT id FROM pooled_items WHERE id <= 3) TO STDOUT`)
	cmd.Env = poolEnv
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "1000") || !strings.Contains(string(out), "3\n") {
		t.Errorf("psql: %v\n%s", err, out)
	}
	if most := stop(); most > 4 {
		t.Errorf("the user had up to %d server backends, want at most 4", most)
	}
}

// TestClientKilledMidTransaction: a client that vanishes inside a
// transaction leaves nothing behind: its server connection is not handed
// to the next client in the transaction.
func TestClientKilledMidTransaction(t *testing.T) {
	p := startPooled(t, pool.ModeTransaction, func(c *pool.Config) { c.Size = 1 })
	ctx := context.Background()
	raw, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := pgconn.ParseConfig(p.dsn(poolUser, poolPassword))
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return raw, nil }
	victim, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Exec(ctx, "BEGIN; UPDATE pooled_items SET v = 'killed' WHERE id = 7").ReadAll(); err != nil {
		t.Fatal(err)
	}
	raw.Close() // gone, in the transaction
	next := p.connect(t, pgx.QueryExecModeExec)
	var v string
	var inTx bool
	if err := next.QueryRow(ctx, "SELECT v, txid_current_if_assigned() IS NOT NULL FROM pooled_items WHERE id = 7").Scan(&v, &inTx); err != nil {
		t.Fatal(err)
	}
	if v != "item 7" || inTx {
		t.Errorf("the next client saw %q, in a transaction: %v; want the row unchanged and no transaction", v, inTx)
	}
	_ = io.EOF
}

// TestPreparedAcrossServerConnections: a client's named statement follows
// it to whichever server connection it gets; a Close and a new Parse of the
// name take effect; the statement events carry the client's own names.
func TestPreparedAcrossServerConnections(t *testing.T) {
	p := startPooled(t, pool.ModeTransaction, func(c *pool.Config) { c.Size = 2 })
	ctx := context.Background()
	c := p.connect(t, pgx.QueryExecModeCacheStatement)
	// Another client holds one server connection in a transaction, so
	// that the first client's transactions alternate between the pool's
	// connections as it holds and releases the other.
	other := p.connect(t, pgx.QueryExecModeExec)
	for round := range 6 {
		if round%2 == 1 {
			tx, err := other.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
		}
		var v string
		if err := c.QueryRow(ctx, "SELECT v FROM pooled_items WHERE id = $1", round+1).Scan(&v); err != nil || v != fmt.Sprintf("item %d", round+1) {
			t.Fatalf("round %d: %q, %v", round, v, err)
		}
	}
	pc := c.PgConn()
	if _, err := pc.Prepare(ctx, "s1", "SELECT 'first'::text", nil); err != nil {
		t.Fatal(err)
	}
	read := func() string {
		t.Helper()
		res := pc.ExecPrepared(ctx, "s1", nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 {
			t.Fatalf("execute s1: %v", res.Err)
		}
		return string(res.Rows[0][0])
	}
	if got := read(); got != "first" {
		t.Fatalf("s1 = %q", got)
	}
	if err := pc.Deallocate(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx, "s1", "SELECT 'second'::text", nil); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "second" {
		t.Fatalf("s1 after Close and Parse = %q, want second", got)
	}
	// Events: the client's statement name, the text it parsed. They
	// reach the observer through the relay's queue.
	var got []wire.Statement
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && len(got) < 2; time.Sleep(10 * time.Millisecond) {
		got = p.rec.statements(func(s *wire.Statement) bool { return s.StatementName == "s1" })
	}
	if len(got) != 2 || got[0].Text != "SELECT 'first'::text" || got[1].Text != "SELECT 'second'::text" {
		t.Errorf("s1's events: %+v", got)
	}
}

// TestPoolMaxWait: a client that waits longer than MaxWait for a server
// connection gets 53300 and says why; the pool goes on serving.
func TestPoolMaxWait(t *testing.T) {
	p := startPooled(t, pool.ModeTransaction, func(c *pool.Config) { c.Size = 1; c.MaxWait = 300 * time.Millisecond })
	ctx := context.Background()
	holder := p.connect(t, pgx.QueryExecModeExec)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waiter := p.connect(t, pgx.QueryExecModeExec)
	start := time.Now()
	_, err = waiter.Exec(ctx, "SELECT 1")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" || !strings.Contains(pgErr.Message, "--pool-size") {
		t.Fatalf("waiter: %v, want 53300 naming --pool-size", err)
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 5*time.Second {
		t.Errorf("gave up after %v, want about 300ms", took)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	next := p.connect(t, pgx.QueryExecModeExec)
	if _, err := next.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("after the holder committed: %v", err)
	}
}

// TestSessionModeReset: in session mode a client keeps its server
// connection; when it leaves, DISCARD ALL runs before the next client gets
// it, so nothing of the first session's state is left.
func TestSessionModeReset(t *testing.T) {
	p := startPooled(t, pool.ModeSession, func(c *pool.Config) { c.Size = 1 })
	ctx := context.Background()
	first := p.connect(t, pgx.QueryExecModeExec)
	var pid1 int
	if err := first.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid1); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SET search_path TO pg_catalog", "PREPARE leftover AS SELECT 1", "LISTEN leftover_channel", "CREATE TEMP TABLE leftover (x int)"} {
		if _, err := first.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var again int
	if err := first.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&again); err != nil || again != pid1 {
		t.Fatalf("session mode changed server connection: %d then %d (%v)", pid1, again, err)
	}
	first.Close(ctx)
	second := p.connect(t, pgx.QueryExecModeExec)
	var pid2 int
	var path string
	var prepared, listening, temps int
	if err := second.QueryRow(ctx, `SELECT pg_backend_pid(), current_setting('search_path'),
		(SELECT count(*) FROM pg_prepared_statements), (SELECT count(*) FROM pg_listening_channels()),
		(SELECT count(*) FROM pg_class WHERE relpersistence = 't')`).Scan(&pid2, &path, &prepared, &listening, &temps); err != nil {
		t.Fatal(err)
	}
	if pid2 != pid1 {
		t.Errorf("the second client got backend %d, want the pooled %d", pid2, pid1)
	}
	if path == "pg_catalog" || prepared != 0 || listening != 0 || temps != 0 {
		t.Errorf("the first session's state is left: search_path %q, %d prepared, %d channels, %d temp tables", path, prepared, listening, temps)
	}
}

// TestTransactionModeCopy: COPY in both directions through a pool of 1,
// with pgx's CopyFrom, which streams without waiting.
func TestTransactionModeCopy(t *testing.T) {
	p := startPooled(t, pool.ModeTransaction, func(c *pool.Config) { c.Size = 1 })
	ctx := context.Background()
	c := p.connect(t, pgx.QueryExecModeCacheStatement)
	table := "pooled_copy" // made by setupRole: a temp table would stay on one server connection
	if _, err := c.Exec(ctx, "TRUNCATE "+table); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, 5000)
	for i := range rows {
		rows[i] = []any{i, strings.Repeat("x", i%50)}
	}
	n, err := c.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "v"}, pgx.CopyFromRows(rows))
	if err != nil || n != 5000 {
		t.Fatalf("CopyFrom: %d, %v", n, err)
	}
	var buf strings.Builder
	res, err := c.PgConn().CopyTo(ctx, &buf, "COPY "+table+" TO STDOUT")
	if err != nil || res.RowsAffected() != 5000 {
		t.Fatalf("CopyTo: %v, %v", res, err)
	}
	// A failing COPY leaves the pool usable.
	if _, err := c.CopyFrom(ctx, pgx.Identifier{"no_such_table"}, []string{"id"}, pgx.CopyFromRows([][]any{{1}})); err == nil {
		t.Fatal("CopyFrom into a missing table succeeded")
	}
	var count int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&count); err != nil || count != 5000 {
		t.Fatalf("count: %d, %v", count, err)
	}
}

// TestLazyParse: while every server connection is held, a client's Parse
// of a named statement is taken without one (libpq's PQprepare waits for
// it, with other transactions open in the same thread under pgbench). A
// text that does not parse fails at its first use instead, and is then
// unknown, as after a failed Parse; a good one runs once a connection is
// free.
func TestLazyParse(t *testing.T) {
	p := startPooled(t, pool.ModeTransaction, func(c *pool.Config) { c.Size = 1 })
	ctx := context.Background()
	holder := p.connect(t, pgx.QueryExecModeExec)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	c, err := pgconn.Connect(ctx, p.dsn(poolUser, poolPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	// The only server connection is in the holder's transaction: both
	// Parses are answered all the same.
	got, err := run(c, []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "bad", Query: "SELEC oops"},
		&pgproto3.Parse{Name: "good", Query: "SELECT $1::int * 2"},
		&pgproto3.Sync{},
	})
	if want := "ParseComplete|ParseComplete|ZI"; err != nil || strings.Join(got, "|") != want {
		t.Fatalf("Parses while the pool is busy: %q, %v; want %s", got, err, want)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		msgs []pgproto3.FrontendMessage
		want string
	}{
		{[]pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "bad"}, &pgproto3.Execute{}, &pgproto3.Sync{}}, "E42601|ZI"},
		{[]pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "bad"}, &pgproto3.Execute{}, &pgproto3.Sync{}}, "E26000|ZI"},
		{[]pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "good", Parameters: [][]byte{[]byte("21")}}, &pgproto3.Execute{}, &pgproto3.Sync{}}, "BindComplete|D 42|C SELECT 1|ZI"},
	} {
		got, err := run(c, step.msgs)
		if err != nil || strings.Join(got, "|") != step.want {
			t.Errorf("%s: %q, %v; want %s", describe(step.msgs), got, err, step.want)
		}
	}
}
