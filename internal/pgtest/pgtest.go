// Package pgtest gives tests a real PostgreSQL server.
//
// Start returns the server named by PGTRACE_TEST_DSN when it is set, and
// otherwise a throwaway cluster that pgtest creates with the PostgreSQL
// binaries on the machine (initdb into a temporary directory, a free loopback
// port, scram-sha-256 over TCP). Tests never skip for want of a server: when
// no binaries are found, Start fails the test and says what to install.
//
// The cluster is shared by every test of one test binary and stopped by Main,
// which a package that uses pgtest calls from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// PostgreSQL refuses to run as root; when the tests run as root, the cluster
// runs as the "postgres" system user (or PGTRACE_TEST_PGUSER).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Login roles every managed cluster has, one per authentication method.
const (
	SuperUser     = "postgres" // scram-sha-256
	SuperPassword = "pgtrace-test"
	TrustUser     = "trust_user" // trust: no password
	MD5User       = "md5_user"   // md5
	MD5Password   = "md5-pass"
	ScramUser     = "scram_user" // scram-sha-256
	ScramPassword = "scram-pass"
	PlainUser     = "plain_user" // password (cleartext)
	PlainPassword = "plain-pass"
)

// Server is a running PostgreSQL server.
type Server struct {
	Host     string
	Port     int
	User     string
	Password string
	Database string
	// Managed is true for a cluster pgtest started itself; such a cluster has
	// the login roles above.
	Managed bool
	// Dir is the cluster's directory (data, socket, log); "" when not managed.
	Dir string

	cmd  *exec.Cmd
	done chan struct{} // closed when the server process has exited
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Socket is the path of a managed cluster's Unix socket; "" for a server
// given by PGTRACE_TEST_DSN. The roles log in over it as over TCP.
func (s *Server) Socket() string {
	if !s.Managed {
		return ""
	}
	return filepath.Join(s.Dir, ".s.PGSQL."+strconv.Itoa(s.Port))
}

// DSN is a connection URL for the server's superuser.
func (s *Server) DSN() string { return s.DSNFor(s.User, s.Password) }

// DSNFor is a connection URL for the given login on the server.
func (s *Server) DSNFor(user, password string) string {
	return DSNAt(s.Addr(), user, password, s.Database)
}

// DSNAt is a connection URL for addr (host:port) with sslmode=disable: what a
// test uses to reach the server through a proxy listening at addr.
func DSNAt(addr, user, password, database string) string {
	u := url.URL{Scheme: "postgres", Host: addr, Path: "/" + database}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	u.RawQuery = "sslmode=disable"
	return u.String()
}

var (
	mu      sync.Mutex
	shared  *Server
	managed *Server
)

// Start returns the shared test server: PGTRACE_TEST_DSN when set, otherwise
// the managed cluster (started on first use).
func Start(tb testing.TB) *Server {
	tb.Helper()
	if dsn := os.Getenv("PGTRACE_TEST_DSN"); dsn != "" {
		mu.Lock()
		defer mu.Unlock()
		if shared == nil {
			s, err := fromDSN(dsn)
			if err != nil {
				tb.Fatalf("pgtest: PGTRACE_TEST_DSN: %v", err)
			}
			shared = s
		}
		return shared
	}
	return Managed(tb)
}

// Managed returns the shared cluster that pgtest starts itself, whatever
// PGTRACE_TEST_DSN says. Tests that need its login roles (trust, md5) use it.
func Managed(tb testing.TB) *Server {
	tb.Helper()
	mu.Lock()
	defer mu.Unlock()
	if managed == nil {
		s, err := startCluster(Options{})
		if err != nil {
			tb.Fatalf("pgtest: %v", err)
		}
		managed = s
	}
	return managed
}

// Main runs the tests and then stops the managed cluster, if one started.
func Main(m *testing.M) {
	code := m.Run()
	mu.Lock()
	if managed != nil {
		managed.Stop()
	}
	mu.Unlock()
	os.Exit(code)
}

// Options tune a cluster started with StartCluster.
type Options struct {
	MaxConnections int      // default 200
	Settings       []string // extra "name=value" server settings
}

// StartCluster starts a cluster of the caller's own, stopped when tb ends.
func StartCluster(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := startCluster(opts)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

func fromDSN(dsn string) (*Server, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return &Server{
		Host:     cfg.Host,
		Port:     int(cfg.Port),
		User:     cfg.User,
		Password: cfg.Password,
		Database: cfg.Database,
	}, nil
}

// BinDir finds the PostgreSQL server binaries: PGTRACE_PG_BIN, then
// `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin.
func BinDir() (string, error) {
	if d := os.Getenv("PGTRACE_PG_BIN"); d != "" {
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries found (install postgresql, or set PGTRACE_PG_BIN to the directory holding initdb and postgres, or PGTRACE_TEST_DSN to a running server)")
}

func pgVersion(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// runAs returns the credential to run the server with: none unless we are root.
func runAs() (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, -1, -1, nil
	}
	name := os.Getenv("PGTRACE_TEST_PGUSER")
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root and PostgreSQL refuses root: look up user %q to run it as: %w (create it, or set PGTRACE_TEST_PGUSER)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startCluster(opts Options) (s *Server, err error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, uid, gid, err := runAs()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtrace-pg-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(SuperPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if cred != nil {
		os.Chown(pwfile, uid, gid)
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", SuperUser,
		"--pwfile", pwfile, "-A", "scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	hba := strings.Join([]string{
		"local all " + TrustUser + " trust",
		"local all " + MD5User + " md5",
		"local all " + PlainUser + " password",
		"local all all scram-sha-256",
		"host all " + TrustUser + " 127.0.0.1/32 trust",
		"host all " + MD5User + " 127.0.0.1/32 md5",
		"host all " + PlainUser + " 127.0.0.1/32 password",
		"host all all 127.0.0.1/32 scram-sha-256",
		"host all all ::1/128 scram-sha-256",
		"host replication all 127.0.0.1/32 scram-sha-256",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return nil, err
	}
	if cred != nil {
		os.Chown(filepath.Join(data, "pg_hba.conf"), uid, gid)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	maxConns := opts.MaxConnections
	if maxConns == 0 {
		maxConns = 200
	}
	args := []string{"-D", data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=" + strconv.Itoa(maxConns),
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "shared_buffers=128MB",
		"-c", "wal_level=logical", "-c", "max_wal_senders=4",
	}
	for _, set := range opts.Settings {
		args = append(args, "-c", set)
	}
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	// The server dies with the test binary, even when the binary is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	logf.Close()
	s = &Server{
		Host: "127.0.0.1", Port: port,
		User: SuperUser, Password: SuperPassword, Database: "postgres",
		Managed: true, Dir: dir, cmd: cmd,
	}
	s.done = make(chan struct{})
	go func() { cmd.Wait(); close(s.done) }()
	if err := s.waitReady(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
		s.Stop()
		return nil, fmt.Errorf("%w\npostgres log:\n%s", err, log)
	}
	if err := s.createRoles(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) waitReady() error {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return errors.New("postgres exited while starting")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.DSN())
		if err == nil {
			conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("postgres not ready after 60s: %v", last)
}

func (s *Server) createRoles() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE ROLE " + TrustUser + " LOGIN SUPERUSER",
		"SET password_encryption = 'md5'",
		"CREATE ROLE " + MD5User + " LOGIN SUPERUSER PASSWORD '" + MD5Password + "'",
		"SET password_encryption = 'scram-sha-256'",
		"CREATE ROLE " + ScramUser + " LOGIN SUPERUSER PASSWORD '" + ScramPassword + "'",
		"CREATE ROLE " + PlainUser + " LOGIN SUPERUSER PASSWORD '" + PlainPassword + "'",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("create roles: %s: %w", q, err)
		}
	}
	return nil
}

// Stop shuts a managed cluster down (fast shutdown) and removes its files.
// It does nothing for a server given by PGTRACE_TEST_DSN.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	s.cmd = nil
	os.RemoveAll(s.Dir)
}
