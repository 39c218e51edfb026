package main

import (
	"bytes"
	"errors"
	"github.com/dotmac/pgtrace/pool"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/urfave/cli/v2"
)

// parse runs the command line as pgtrace would, but with serve's action
// replaced by one that records the validated configuration instead of
// serving. It returns the configuration serve would have run with.
func parse(t *testing.T, args []string, env map[string]string) (*config, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var cfg config
	app := newApp(&cfg, strings.NewReader(""), io.Discard, io.Discard)
	cmd := app.Command("serve")
	served := false
	cmd.Action = func(c *cli.Context) error {
		// The real action validates and then serves; stop it at serving by
		// validating the same way first.
		if err := checkServeArgs(c, &cfg); err != nil {
			return err
		}
		served = true
		return nil
	}
	err := app.RunContext(t.Context(), withDefaultCommand(append([]string{"pgtrace"}, args...)))
	if err == nil && !served {
		t.Fatalf("pgtrace %q: serve did not run", args)
	}
	return &cfg, err
}

// defaults is the configuration of a bare `pgtrace`, as documented.
func defaults() config {
	return config{
		Listen:                     "127.0.0.1:6432",
		Upstream:                   "127.0.0.1:5432",
		AdminListen:                "127.0.0.1:9187",
		DialTimeout:                5 * time.Second,
		IO:                         "uring",
		UpstreamSSLMode:            "disable",
		MaxClientConnections:       1000,
		ShutdownTimeout:            30 * time.Second,
		EventQueueSize:             65536,
		LogFormat:                  "json",
		LogLevel:                   "info",
		SlowQueryThreshold:         100 * time.Millisecond,
		NPlusOneThreshold:          5,
		NPlusOneWindow:             time.Second,
		IdleInTransactionThreshold: 10 * time.Second,
		MaxFingerprints:            5000,
		FingerprintCacheSize:       10000,
		TenantTag:                  "tenant_id",
		KeepSlowSpans:              true,
		PoolMode:                   "none",
		PoolSize:                   20,
		PoolMaxWait:                2 * time.Minute,
		ServerIdleTimeout:          10 * time.Minute,
		ServerLifetime:             time.Hour,
		ServerResetQuery:           "DISCARD ALL",
		MaxPreparedStatements:      200,
		IgnoreStartupParams:        "extra_float_digits",
		AuthQuery:                  pool.DefaultAuthQuery,
		AuthDatabase:               "postgres",
		AuthType:                   "scram-sha-256",
		PoolWaitSpanThreshold:      time.Millisecond,
		PoolExhaustedThreshold:     time.Second,
		ServiceNameFrom:            "application_name",
		MaxApplications:            100,
		MetricsHistogram:           "explicit",
		SpanPath:                   "fast",
	}
}

func TestConfigFromArgsAndEnv(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want func(*config)
	}{
		{name: "no arguments", want: func(*config) {}},
		{name: "serve", args: []string{"serve"}, want: func(*config) {}},
		{
			name: "flags without the serve command",
			args: []string{"--listen", ":7000", "--upstream=db.internal:5433"},
			want: func(c *config) { c.Listen = ":7000"; c.Upstream = "db.internal:5433" },
		},
		{
			name: "every kind of flag",
			args: []string{"serve",
				"--admin-listen=", "--dial-timeout=250ms", "--max-client-connections=0", "--shutdown-timeout=1m",
				"--event-queue-size=8", "--log-format=text", "--log-level=debug",
				"--slow-query-threshold=2s", "--n-plus-one-threshold=10", "--n-plus-one-window=3s",
				"--n-plus-one-min-duration=5ms", "--idle-in-transaction-threshold=1m", "--max-fingerprints=7",
				"--fingerprint-cache-size=9", "--tenant-tag=org", "--keep-slow-spans=false", "--span-path=sdk", "--io=epoll"},
			want: func(c *config) {
				c.AdminListen = ""
				c.DialTimeout = 250 * time.Millisecond
				c.MaxClientConnections = 0
				c.ShutdownTimeout = time.Minute
				c.EventQueueSize = 8
				c.LogFormat, c.LogLevel = "text", "debug"
				c.SlowQueryThreshold = 2 * time.Second
				c.NPlusOneThreshold, c.NPlusOneWindow, c.NPlusOneMinDuration = 10, 3*time.Second, 5*time.Millisecond
				c.IdleInTransactionThreshold = time.Minute
				c.MaxFingerprints, c.FingerprintCacheSize = 7, 9
				c.TenantTag = "org"
				c.KeepSlowSpans = false
				c.SpanPath = "sdk"
				c.IO = "epoll"
			},
		},
		{
			// The socket need not exist yet: /readyz says when it does.
			name: "upstream on a Unix socket",
			args: []string{"--upstream", "/run/pg-not-started/.s.PGSQL.5432", "--upstream-sslmode", "prefer"},
			want: func(c *config) { c.Upstream = "/run/pg-not-started/.s.PGSQL.5432"; c.UpstreamSSLMode = "prefer" },
		},
		{
			name: "TLS on both legs",
			args: []string{"--tls-cert", "c.pem", "--tls-key", "k.pem", "--upstream-sslmode", "verify-full", "--upstream-ca", "ca.pem"},
			want: func(c *config) {
				c.TLSCert, c.TLSKey, c.UpstreamSSLMode, c.UpstreamCA = "c.pem", "k.pem", "verify-full", "ca.pem"
			},
		},
		{
			name: "environment variables",
			env: map[string]string{
				"PGTRACE_UPSTREAM": "pg:5432", "PGTRACE_ADMIN_LISTEN": "", "PGTRACE_SLOW_QUERY_THRESHOLD": "250ms",
				"PGTRACE_N_PLUS_ONE_THRESHOLD": "3", "PGTRACE_KEEP_SLOW_SPANS": "false", "PGTRACE_UPSTREAM_SSLMODE": "require",
			},
			want: func(c *config) {
				c.Upstream = "pg:5432"
				c.SlowQueryThreshold = 250 * time.Millisecond
				c.NPlusOneThreshold = 3
				c.KeepSlowSpans = false
				c.UpstreamSSLMode = "require"
				// A variable set to empty counts: this disables the admin server.
				c.AdminListen = ""
			},
		},
		{
			name: "admin server off loopback with a token from the environment",
			args: []string{"--admin-listen", "0.0.0.0:9187"},
			env:  map[string]string{"PGTRACE_ADMIN_TOKEN": "0123456789abcdef0123"},
			want: func(c *config) { c.AdminListen = "0.0.0.0:9187"; c.AdminToken = "0123456789abcdef0123" },
		},
		{
			// The file is read at start (serve), not while parsing.
			name: "admin server off loopback with a token file",
			args: []string{"--admin-listen", ":9187", "--admin-token-file", "/run/secrets/pgtrace-admin-token"},
			want: func(c *config) { c.AdminListen = ":9187"; c.AdminTokenFile = "/run/secrets/pgtrace-admin-token" },
		},
		{
			name: "loopback needs no token",
			args: []string{"--admin-listen", "[::1]:9187"},
			want: func(c *config) { c.AdminListen = "[::1]:9187" },
		},
		{
			name: "localhost needs no token",
			args: []string{"--admin-listen", "localhost:9187"},
			want: func(c *config) { c.AdminListen = "localhost:9187" },
		},
		{
			name: "flags beat environment variables",
			args: []string{"serve", "--listen", "0.0.0.0:6432", "--log-level", "warn"},
			env:  map[string]string{"PGTRACE_LISTEN": "127.0.0.1:1", "PGTRACE_LOG_LEVEL": "error", "PGTRACE_LOG_FORMAT": "text"},
			want: func(c *config) { c.Listen = "0.0.0.0:6432"; c.LogLevel = "warn"; c.LogFormat = "text" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(t, tt.args, tt.env)
			if err != nil {
				t.Fatalf("pgtrace %q: %v", tt.args, err)
			}
			want := defaults()
			tt.want(&want)
			if diff := cmp.Diff(want, *got); diff != "" {
				t.Errorf("pgtrace %q: config mismatch (-want +got):\n%s", tt.args, diff)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // each must appear in the error
	}{
		{"cert without key", []string{"--tls-cert", "c.pem"}, nil, []string{"--tls-cert and --tls-key must be given together"}},
		{"key without cert", []string{"--tls-key", "k.pem"}, nil, []string{"--tls-cert and --tls-key must be given together"}},
		{"bad sslmode", []string{"--upstream-sslmode", "x"}, nil,
			[]string{`--upstream-sslmode: "x" is not one of disable, prefer, require, verify-full`}},
		{"ca without verify-full", []string{"--upstream-ca", "ca.pem"}, nil, []string{"--upstream-ca is only used with --upstream-sslmode verify-full"}},
		{"listen not host:port", []string{"--listen", "6432"}, nil, []string{`--listen: "6432" is not host:port: want host:port, e.g. 127.0.0.1:6432`}},
		{"upstream without a port", []string{"--upstream", "db"}, nil, []string{`--upstream: "db" is not host:port: want host:port, e.g. db:5432`}},
		{"listen port out of range", []string{"--listen", "127.0.0.1:70000"}, nil, []string{`--listen: "127.0.0.1:70000": port "70000"`}},
		{"upstream port not a number", []string{"--upstream", "db:pg"}, nil, []string{`--upstream: "db:pg": port "pg"`}},
		{"listen socket directory", []string{"--listen", "/"}, nil,
			[]string{`--listen: "/" is a directory: give the socket in it, such as /.s.PGSQL.6432`}},
		{"upstream socket directory", []string{"--upstream", "/"}, nil,
			[]string{`--upstream: "/" is a directory: give the socket in it, such as /.s.PGSQL.5432`}},
		{"upstream not a socket", []string{"--upstream", "/dev/null"}, nil, []string{`--upstream: "/dev/null" is not a Unix socket`}},
		{"TLS over a Unix socket", []string{"--upstream", "/run/pg/.s.PGSQL.5432", "--upstream-sslmode", "require"}, nil,
			[]string{"--upstream-sslmode require: PostgreSQL has no TLS on a Unix socket"}},
		{"bad admin-listen", []string{"--admin-listen", "x"}, nil, []string{"--admin-listen:"}},
		{"admin on every interface without a token", []string{"--admin-listen", "0.0.0.0:9187"}, nil,
			[]string{"--admin-listen 0.0.0.0:9187 is reachable from other hosts", "set --admin-token or --admin-token-file", "or listen on 127.0.0.1:9187"}},
		{"admin on an empty host without a token", nil, map[string]string{"PGTRACE_ADMIN_LISTEN": ":9187"},
			[]string{"--admin-listen :9187 is reachable from other hosts"}},
		{"admin on a host name without a token", []string{"--admin-listen", "pgtrace.internal:9187"}, nil,
			[]string{"--admin-listen pgtrace.internal:9187 is reachable from other hosts"}},
		{"admin token and file", []string{"--admin-token", "0123456789abcdef0123", "--admin-token-file", "t"}, nil,
			[]string{"--admin-token and --admin-token-file: give one, not both"}},
		{"short admin token", []string{"--admin-listen", "0.0.0.0:9187", "--admin-token", "s3cret"}, nil,
			[]string{"--admin-token: the token has 6 characters, want at least 16"}},
		{"placeholder admin token", []string{"--admin-listen", "0.0.0.0:9187", "--admin-token", "CHANGE-ME-openssl-rand-hex-32"}, nil,
			[]string{"--admin-token: the token is the placeholder of the example manifests: replace it"}},
		{"admin token with a space", []string{"--admin-token", "0123456789 abcdef0123"}, nil,
			[]string{"--admin-token: the token must be printable ASCII without spaces"}},
		{"log format", []string{"--log-format", "xml"}, nil, []string{`--log-format: "xml" is not one of json, text`}},
		{"relay io", []string{"--io", "kqueue"}, nil, []string{`--io: "kqueue" is not one of uring, epoll, goroutines`}},
		{"log level", []string{"--log-level", "verbose"}, nil, []string{`--log-level: "verbose" is not one of debug, info, warn, error`}},
		{"span path", []string{"--span-path", "slow"}, nil, []string{`--span-path: "slow" is not one of fast, sdk`}},
		{"negative cap", []string{"--max-client-connections", "-1"}, nil, []string{"--max-client-connections: must be 0 (no cap) or more"}},
		{"zero dial timeout", []string{"--dial-timeout", "0s"}, nil, []string{"--dial-timeout: must be positive"}},
		{"negative grace", []string{"--shutdown-timeout", "-1s"}, nil, []string{"--shutdown-timeout: must not be negative"}},
		{"empty queue", []string{"--event-queue-size", "0"}, nil, []string{"--event-queue-size: must be positive"}},
		{"n+1 threshold", []string{"--n-plus-one-threshold", "1"}, nil, []string{"--n-plus-one-threshold: must be at least 2"}},
		{"n+1 window", []string{"--n-plus-one-window", "0s"}, nil, []string{"--n-plus-one-window: must be positive"}},
		{"fingerprint limits", []string{"--max-fingerprints", "0", "--fingerprint-cache-size", "-3"}, nil,
			[]string{"--max-fingerprints: must be positive", "--fingerprint-cache-size: must be positive"}},
		{"pool thresholds", []string{"--pool-exhausted-threshold", "0s", "--pool-wait-span-threshold", "-1ms"}, nil,
			[]string{"--pool-exhausted-threshold: must be positive", "--pool-wait-span-threshold: must not be negative"}},
		{"every problem is reported", []string{"--log-format", "xml", "--tls-key", "k.pem", "--listen", "nope"}, nil,
			[]string{"--log-format:", "--tls-cert and --tls-key", "--listen:"}},
		{"bad value from the environment", nil, map[string]string{"PGTRACE_LOG_LEVEL": "loud"}, []string{`--log-level: "loud"`}},
		{"unparsable environment variable", nil, map[string]string{"PGTRACE_DIAL_TIMEOUT": "soon"},
			[]string{`PGTRACE_DIAL_TIMEOUT (for --dial-timeout): "soon" is not a duration with a unit, e.g. 5s`}},
		{"unparsable flag value", []string{"--dial-timeout", "soon"}, nil, []string{`--dial-timeout: "soon" is not a duration with a unit, e.g. 5s`}},
		{"duration without a unit", []string{"--slow-query-threshold=100"}, nil,
			[]string{`--slow-query-threshold: "100" is not a duration with a unit, e.g. 100ms or 100s (see pgtrace serve --help)`}},
		{"not a whole number", []string{"--max-fingerprints", "1e3"}, nil, []string{`--max-fingerprints: "1e3" is not a whole number, e.g. 5000`}},
		{"not a boolean", []string{"--keep-slow-spans=maybe"}, nil, []string{`--keep-slow-spans: "maybe" is not true or false`}},
		{"missing value", []string{"--listen"}, nil, []string{"--listen needs a value (host:port, e.g. 127.0.0.1:6432)"}},
		{"unknown flag", []string{"--nope"}, nil, []string{"unknown flag --nope (see pgtrace serve --help for the flags)"}},
		{"unknown flag near a real one", []string{"--slow-threshold=1s"}, nil,
			[]string{"unknown flag --slow-threshold: did you mean --slow-query-threshold?"}},
		{"misspelt flag", []string{"--upstrem", "db:5432"}, nil, []string{"unknown flag --upstrem: did you mean --upstream?"}},
		{"stray argument", []string{"serve", "extra"}, nil, []string{"serve takes no arguments"}},
		{"unknown command", []string{"sreve"}, nil, []string{`no command "sreve"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.args, tt.env)
			if err == nil {
				t.Fatalf("pgtrace %q: no error, want one containing %q", tt.args, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("pgtrace %q: error %q does not contain %q", tt.args, err, w)
				}
			}
			if code := exitCode(err); code != 2 {
				t.Errorf("pgtrace %q: exit code %d, want 2 (usage)", tt.args, code)
			}
			// Flags are named as users type them, with two dashes.
			// (openssl's own option, in the advice for a token, is not ours.)
			if m := singleDashFlag.FindString(strings.ReplaceAll(err.Error(), "openssl rand -hex", "")); m != "" {
				t.Errorf("pgtrace %q: error %q names a flag with one dash: %q", tt.args, err, m)
			}
		})
	}
}

// singleDashFlag matches a flag written with one dash, as Go's flag package
// writes them ("-dial-timeout").
var singleDashFlag = regexp.MustCompile(`(^|[\s(])-[a-z][a-z-]+`)

func TestExitCodes(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("boom"), 1},
		{errSigInt, 130},
		{errSigTerm, 0}, // a graceful stop, as systemd and Kubernetes ask for
		{usageError(errors.New("bad flag")), 2},
		{errors.Join(errors.New("shutdown"), errSigTerm), 1},
		{errors.Join(errors.New("shutdown"), errSigInt), 130},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestHelpNamesEveryFlagDefaultAndVariable(t *testing.T) {
	var out bytes.Buffer
	if code := execute(t.Context(), []string{"pgtrace", "serve", "--help"}, nil, &out, io.Discard); code != 0 {
		t.Fatalf("serve --help: exit %d", code)
	}
	help := out.String()
	if !strings.Contains(help, "flags > environment variables") {
		t.Errorf("help does not state the precedence:\n%s", help)
	}
	var cfg config
	for _, f := range cfg.flags() {
		df := f.(cli.DocGenerationFlag)
		name := f.Names()[0]
		if !strings.Contains(help, "--"+name) {
			t.Errorf("help lacks --%s", name)
		}
		for _, v := range df.GetEnvVars() {
			if !strings.Contains(help, "$"+v) {
				t.Errorf("help lacks $%s for --%s", v, name)
			}
		}
		def := df.GetValue()
		if _, ok := f.(*cli.StringFlag); ok {
			def = `"` + def + `"`
		}
		if df.TakesValue() && def != `""` && def != "" && !strings.Contains(help, "(default: "+def) {
			t.Errorf("help lacks the default %q of --%s", def, name)
		}
		if df.GetUsage() == "" {
			t.Errorf("--%s has no usage text", name)
		}
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := execute(t.Context(), []string{"pgtrace", "version"}, nil, &out, io.Discard); code != 0 {
		t.Fatalf("pgtrace version: exit %d", code)
	}
	for _, want := range []string{"pgtrace " + version, "commit ", "go1."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("pgtrace version = %q, lacks %q", out.String(), want)
		}
	}
}

func TestCommandsAreRegistered(t *testing.T) {
	var out bytes.Buffer
	code := execute(t.Context(), []string{"pgtrace", "fingerprint", "SELECT * FROM users WHERE id = 1"}, strings.NewReader(""), &out, io.Discard)
	if code != 0 || !strings.Contains(out.String(), `"summary":"SELECT users"`) {
		t.Errorf("pgtrace fingerprint: exit %d, output %q", code, out.String())
	}
	if code := execute(t.Context(), []string{"pgtrace", "fingerprint", "--nope"}, strings.NewReader(""), io.Discard, io.Discard); code != 2 {
		t.Errorf("pgtrace fingerprint --nope: exit %d, want 2", code)
	}
	out.Reset()
	if code := execute(t.Context(), []string{"pgtrace", "--help"}, nil, &out, io.Discard); code != 0 {
		t.Fatalf("pgtrace --help: exit %d", code)
	}
	for _, name := range []string{"serve", "fingerprint", "version"} {
		if !strings.Contains(out.String(), name) {
			t.Errorf("pgtrace --help does not list %s:\n%s", name, out.String())
		}
	}
	// The README runs `pgtrace --upstream …`: the first line of the root
	// help says that serve is the default and where its flags are.
	first, _, _ := strings.Cut(out.String(), "\n")
	if !strings.Contains(first, "runs serve, the default") || !strings.Contains(out.String(), "`pgtrace serve --help` lists its flags") {
		t.Errorf("pgtrace --help does not start by naming serve as the default and its --help:\n%s", out.String())
	}
}
