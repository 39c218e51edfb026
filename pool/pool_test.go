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
)

func TestMain(m *testing.M) { pgtest.Main(m) }

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
		b := &pgx.Batch{}
		b.Queue("SELECT count(*) FROM pooled_items WHERE id < $1", key)
		b.Queue(name, key)
		br := c.SendBatch(ctx, b)
		var n int64
		if err := br.QueryRow().Scan(&n); err != nil || n != int64(key-1) {
			return fmt.Errorf("batch count: %d, %v", n, err)
		}
		if err := br.QueryRow().Scan(&v); err != nil {
			return fmt.Errorf("batch prepared: %w", err)
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
