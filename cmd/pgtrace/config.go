package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dotmac/pgtrace/pool"
	"github.com/dotmac/pgtrace/wire"
)

// precedence is stated once, in the help of every command that has flags.
const precedence = "Settings come from flags > environment variables (PGTRACE_*) > defaults. " +
	"OpenTelemetry export is configured with the standard OTEL_* variables."

// config is everything `pgtrace serve` can be told. Flags bind straight into
// its fields (see flags); validate checks it as a whole.
type config struct {
	// Network.
	Listen      string
	Upstream    string
	AdminListen string // "" disables the admin server
	// AdminToken or AdminTokenFile (one of them) protects the admin server
	// beyond /healthz and /readyz; required off loopback.
	AdminToken     string
	AdminTokenFile string
	DialTimeout    time.Duration
	IO             string // relay I/O mode: wire.IOModes

	// TLS.
	TLSCert         string // client-facing certificate (PEM); with TLSKey
	TLSKey          string
	UpstreamSSLMode string // disable|prefer|require|verify-full
	UpstreamCA      string // PEM bundle; "" means the system pool for verify-full

	// Limits and lifecycle.
	MaxClientConnections int // 0 means no cap
	ShutdownTimeout      time.Duration
	EventQueueSize       int

	// Logging.
	LogFormat string // json|text
	LogLevel  string // debug|info|warn|error

	// Detection and analysis (used by the observation pipeline).
	SlowQueryThreshold         time.Duration
	NPlusOneThreshold          int
	NPlusOneWindow             time.Duration
	NPlusOneMinDuration        time.Duration
	IdleInTransactionThreshold time.Duration
	MaxFingerprints            int
	FingerprintCacheSize       int
	TenantTag                  string
	KeepSlowSpans              bool

	// Pooling (pooling.go).
	PoolMode               string // none|session|transaction
	PoolSize               int
	PoolMinIdle            int
	PoolMaxWait            time.Duration
	ServerIdleTimeout      time.Duration
	ServerLifetime         time.Duration
	ServerResetQuery       string
	MaxPreparedStatements  int
	IgnoreStartupParams    string // comma-separated
	AuthFile               string
	AuthQuery              string
	AuthUser               string
	AuthDatabase           string
	AuthType               string // scram-sha-256|md5
	PoolWaitSpanThreshold  time.Duration
	PoolExhaustedThreshold time.Duration

	// Export: what spans and metrics say.
	ServiceNameFrom  string // application_name|sqlcommenter|none
	MaxApplications  int
	MetricsHistogram string // explicit|exponential
	ExportRawErrors  bool
	SpanPath         string // fast|sdk
}

var (
	logFormats   = []string{"json", "text"}
	logLevels    = []string{"debug", "info", "warn", "error"}
	upstreamSSLs = []string{"disable", "prefer", "require", "verify-full"}

	serviceNameFroms  = []string{"application_name", "sqlcommenter", "none"}
	metricsHistograms = []string{"explicit", "exponential"}
	spanPaths         = []string{"fast", "sdk"}
)

// Flag categories, as --help groups them.
const (
	catNetwork   = "Network"
	catTLS       = "TLS"
	catLimits    = "Limits and lifecycle"
	catLogging   = "Logging"
	catDetection = "Detection"
	catExport    = "Export"
	catPooling   = "Pooling"
)

// env is the environment variable of flag name: PGTRACE_ and the name in
// upper case with dashes as underscores.
func env(name string) []string {
	return []string{"PGTRACE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))}
}

// flags are the serve flags, bound to c. They are built anew for each App:
// urfave/cli flags keep state from the last parse.
func (c *config) flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name: "listen", Value: "127.0.0.1:6432", Destination: &c.Listen, EnvVars: env("listen"), Category: catNetwork,
			Usage: "`host:port` where pgtrace accepts PostgreSQL clients, or the path of a Unix socket to create " +
				"(name it .s.PGSQL.<port> for psql -h <dir> -p <port>); point the application's DSN here",
		},
		&cli.StringFlag{
			Name: "upstream", Value: "127.0.0.1:5432", Destination: &c.Upstream, EnvVars: env("upstream"), Category: catNetwork,
			Usage: "`host:port` of the PostgreSQL server, or the path of its Unix socket (such as /var/run/postgresql/.s.PGSQL.5432); " +
				"every client connection gets its own upstream connection (session mode)",
		},
		&cli.StringFlag{
			Name: "admin-listen", Value: "127.0.0.1:9187", Destination: &c.AdminListen, EnvVars: env("admin-listen"), Category: catNetwork,
			Usage: "`host:port` of the admin HTTP server (/healthz, /readyz, /metrics, /api/*, the page); empty disables it. " +
				"Any address other than loopback needs --admin-token or --admin-token-file",
		},
		&cli.StringFlag{
			Name: "admin-token", Destination: &c.AdminToken, EnvVars: env("admin-token"), Category: catNetwork,
			Usage: "`token` the admin server asks for on every path but /healthz and /readyz (Authorization: Bearer <token>, " +
				"or as the password in a browser); at least 16 characters, e.g. from openssl rand -hex 32. " +
				"Prefer the variable or --admin-token-file: a flag shows in the process list",
		},
		&cli.StringFlag{
			Name: "admin-token-file", Destination: &c.AdminTokenFile, EnvVars: env("admin-token-file"), Category: catNetwork, TakesFile: true,
			Usage: "`file` holding the admin token (a mounted Kubernetes or compose secret); surrounding whitespace is ignored",
		},
		&cli.StringFlag{
			Name: "io", Value: wire.IOURing, Destination: &c.IO, EnvVars: env("io"), Category: catNetwork,
			Usage: "how plain-TCP and Unix-socket sessions are relayed on Linux: uring (event loops over io_uring: each send and the next receive " +
				"go in the system call that waits; falls back to epoll with one warning where io_uring is not available, as on kernels before 6.1 " +
				"or where a seccomp profile blocks it), epoll (event loops over epoll) or goroutines (two per session, as TLS sessions always use)",
		},
		&cli.DurationFlag{
			Name: "dial-timeout", Value: 5 * time.Second, Destination: &c.DialTimeout, EnvVars: env("dial-timeout"), Category: catNetwork,
			Usage: "how long to wait for the upstream's connection (and TLS handshake) before the client gets a 08001 error",
		},

		&cli.StringFlag{
			Name: "tls-cert", Destination: &c.TLSCert, EnvVars: env("tls-cert"), Category: catTLS, TakesFile: true,
			Usage: "PEM certificate `file` for TLS toward clients (with --tls-key); without both, clients' SSLRequest is answered 'N'",
		},
		&cli.StringFlag{
			Name: "tls-key", Destination: &c.TLSKey, EnvVars: env("tls-key"), Category: catTLS, TakesFile: true,
			Usage: "PEM private key `file` for --tls-cert",
		},
		&cli.StringFlag{
			Name: "upstream-sslmode", Value: "disable", Destination: &c.UpstreamSSLMode, EnvVars: env("upstream-sslmode"), Category: catTLS,
			Usage: "TLS toward the upstream, as libpq's sslmode: disable, prefer (TLS when offered), require (TLS, no verification) " +
				"or verify-full (TLS, certificate and host name verified)",
		},
		&cli.StringFlag{
			Name: "upstream-ca", Destination: &c.UpstreamCA, EnvVars: env("upstream-ca"), Category: catTLS, TakesFile: true,
			Usage: "PEM CA bundle `file` that signs the upstream's certificate, for --upstream-sslmode verify-full; " +
				"without it the system's roots are used",
		},

		&cli.IntFlag{
			Name: "max-client-connections", Value: 1000, Destination: &c.MaxClientConnections, EnvVars: env("max-client-connections"), Category: catLimits,
			Usage: "client connections served at once; more are refused with SQLSTATE 53300 and /readyz fails at the cap. " +
				"0 means no cap (PostgreSQL's max_connections still applies upstream)",
		},
		&cli.DurationFlag{
			Name: "shutdown-timeout", Value: 30 * time.Second, Destination: &c.ShutdownTimeout, EnvVars: env("shutdown-timeout"), Category: catLimits,
			Usage: "on SIGTERM or SIGINT, how long sessions may finish before the rest are closed (a second signal closes them at once)",
		},
		&cli.IntFlag{
			Name: "event-queue-size", Value: 65536, Destination: &c.EventQueueSize, EnvVars: env("event-queue-size"), Category: catLimits,
			Usage: "capacity of the queue between the relay and the observers; when it is full, events are dropped and counted, never waited for",
		},

		&cli.StringFlag{
			Name: "log-format", Value: "json", Destination: &c.LogFormat, EnvVars: env("log-format"), Category: catLogging,
			Usage: "log format on stderr: json or text",
		},
		&cli.StringFlag{
			Name: "log-level", Value: "info", Destination: &c.LogLevel, EnvVars: env("log-level"), Category: catLogging,
			Usage: "least severe level logged: debug, info, warn or error",
		},

		&cli.DurationFlag{
			Name: "slow-query-threshold", Value: 100 * time.Millisecond, Destination: &c.SlowQueryThreshold, EnvVars: env("slow-query-threshold"), Category: catDetection,
			Usage: "a statement taking at least this long is a slow-query finding (and its span is kept, see --keep-slow-spans)",
		},
		&cli.IntFlag{
			Name: "n-plus-one-threshold", Value: 5, Destination: &c.NPlusOneThreshold, EnvVars: env("n-plus-one-threshold"), Category: catDetection,
			Usage: "executions of one query fingerprint under one trace id (whatever their parent spans) that make an N+1 finding; " +
				"without trace context, repeats on one connection within one transaction or within --n-plus-one-window",
		},
		&cli.DurationFlag{
			Name: "n-plus-one-window", Value: time.Second, Destination: &c.NPlusOneWindow, EnvVars: env("n-plus-one-window"), Category: catDetection,
			Usage: "without trace context, the time window in which repeats on one connection count toward --n-plus-one-threshold",
		},
		&cli.DurationFlag{
			Name: "n-plus-one-min-duration", Destination: &c.NPlusOneMinDuration, EnvVars: env("n-plus-one-min-duration"), Category: catDetection,
			Usage: "ignore N+1 patterns whose executions together took less than this; 0 reports them all",
		},
		&cli.DurationFlag{
			Name: "idle-in-transaction-threshold", Value: 10 * time.Second, Destination: &c.IdleInTransactionThreshold, EnvVars: env("idle-in-transaction-threshold"), Category: catDetection,
			Usage: "a session idle inside a transaction for this long is a finding",
		},
		&cli.IntFlag{
			Name: "max-fingerprints", Value: 5000, Destination: &c.MaxFingerprints, EnvVars: env("max-fingerprints"), Category: catDetection,
			Usage: "distinct query fingerprints with statistics (/api/queries); beyond it those with the least total time are evicted and counted",
		},
		&cli.IntFlag{
			Name: "fingerprint-cache-size", Value: 10000, Destination: &c.FingerprintCacheSize, EnvVars: env("fingerprint-cache-size"), Category: catDetection,
			Usage: "entries in the LRU cache of parsed statement texts (comments stripped)",
		},
		&cli.StringFlag{
			Name: "tenant-tag", Value: "tenant_id", Destination: &c.TenantTag, EnvVars: env("tenant-tag"), Category: catDetection,
			Usage: "sqlcommenter tag whose value becomes the tenant attribute of metrics and spans; empty disables tenant attribution",
		},
		&cli.BoolFlag{
			Name: "keep-slow-spans", Value: true, Destination: &c.KeepSlowSpans, EnvVars: env("keep-slow-spans"), Category: catDetection,
			Usage: "export spans of slow, failed and N+1 statements even when the sampler dropped them (--keep-slow-spans=false to disable)",
		},

		&cli.StringFlag{
			Name: "pool-mode", Value: "none", Destination: &c.PoolMode, EnvVars: env("pool-mode"), Category: catPooling,
			Usage: "none: one upstream connection per client, authentication passed through (the default); " +
				"session: clients log in to pgtrace (--auth-file, --auth-query) and each keeps one pooled server connection until it leaves; " +
				"transaction: clients share --pool-size server connections per database and user, a client having one only inside a " +
				"transaction or while a request is unanswered (PgBouncer's pool_mode)",
		},
		&cli.IntFlag{
			Name: "pool-size", Value: 20, Destination: &c.PoolSize, EnvVars: env("pool-size"), Category: catPooling,
			Usage: "server connections per pool (one pool per database and user); clients beyond it wait, see --pool-max-wait",
		},
		&cli.IntFlag{
			Name: "pool-min-idle", Destination: &c.PoolMinIdle, EnvVars: env("pool-min-idle"), Category: catPooling,
			Usage: "idle server connections each pool keeps open once used",
		},
		&cli.DurationFlag{
			Name: "pool-max-wait", Value: 2 * time.Minute, Destination: &c.PoolMaxWait, EnvVars: env("pool-max-wait"), Category: catPooling,
			Usage: "how long a client waits for a server connection before it gets SQLSTATE 53300 (PgBouncer's query_wait_timeout)",
		},
		&cli.DurationFlag{
			Name: "server-idle-timeout", Value: 10 * time.Minute, Destination: &c.ServerIdleTimeout, EnvVars: env("server-idle-timeout"), Category: catPooling,
			Usage: "a server connection idle in its pool this long is closed",
		},
		&cli.DurationFlag{
			Name: "server-lifetime", Value: time.Hour, Destination: &c.ServerLifetime, EnvVars: env("server-lifetime"), Category: catPooling,
			Usage: "a server connection this old is closed when its client is done with it",
		},
		&cli.StringFlag{
			Name: "server-reset-query", Value: "DISCARD ALL", Destination: &c.ServerResetQuery, EnvVars: env("server-reset-query"), Category: catPooling,
			Usage: "session mode: run on a server connection before the next client gets it; empty for none",
		},
		&cli.IntFlag{
			Name: "max-prepared-statements", Value: 200, Destination: &c.MaxPreparedStatements, EnvVars: env("max-prepared-statements"), Category: catPooling,
			Usage: "transaction mode: protocol-level prepared statements each server connection keeps for clients " +
				"(renamed per server connection, as PgBouncer 1.21+ does); the least recently used are closed",
		},
		&cli.StringFlag{
			Name: "ignore-startup-parameters", Value: "extra_float_digits", Destination: &c.IgnoreStartupParams,
			EnvVars: env("ignore-startup-parameters"), Category: catPooling,
			Usage: "pooled modes: comma-separated startup parameters a client may send and that are dropped " +
				"(PgBouncer's ignore_startup_parameters; \"options\" accepts any options string); " +
				"a client that sends another one, other than application_name, client_encoding, DateStyle, IntervalStyle, " +
				"TimeZone and standard_conforming_strings which follow it to every server connection, is refused with SQLSTATE 08P01",
		},
		&cli.StringFlag{
			Name: "auth-file", Destination: &c.AuthFile, EnvVars: env("auth-file"), Category: catPooling, TakesFile: true,
			Usage: "PgBouncer's userlist.txt `file`: \"user\" \"secret\" per line, the secret a plain password, md5… or SCRAM-SHA-256$…; " +
				"pooled modes authenticate clients with it and log in to the server with the same secret",
		},
		&cli.StringFlag{
			Name: "auth-user", Destination: &c.AuthUser, EnvVars: env("auth-user"), Category: catPooling,
			Usage: "user (in --auth-file) that runs --auth-query on the server for users not in --auth-file",
		},
		&cli.StringFlag{
			Name: "auth-dbname", Value: "postgres", Destination: &c.AuthDatabase, EnvVars: env("auth-dbname"), Category: catPooling,
			Usage: "database --auth-user connects to to run --auth-query",
		},
		&cli.StringFlag{
			Name: "auth-query", Value: pool.DefaultAuthQuery, Destination: &c.AuthQuery, EnvVars: env("auth-query"), Category: catPooling,
			Usage: "query that returns a user's name and secret, $1 the user name (with --auth-user)",
		},
		&cli.StringFlag{
			Name: "auth-type", Value: "scram-sha-256", Destination: &c.AuthType, EnvVars: env("auth-type"), Category: catPooling,
			Usage: "how clients prove their password in pooled modes, as PgBouncer's auth_type: scram-sha-256 " +
				"(users need a SCRAM secret or a plain password in --auth-file) or md5 (SCRAM still for SCRAM secrets)",
		},
		&cli.DurationFlag{
			Name: "pool-wait-span-threshold", Value: time.Millisecond, Destination: &c.PoolWaitSpanThreshold, EnvVars: env("pool-wait-span-threshold"), Category: catPooling,
			Usage: "a client that waited longer than this for a server connection gets a pgtrace.pool.wait span",
		},
		&cli.DurationFlag{
			Name: "pool-exhausted-threshold", Value: time.Second, Destination: &c.PoolExhaustedThreshold, EnvVars: env("pool-exhausted-threshold"), Category: catPooling,
			Usage: "a client that waits this long for a server connection, or gives up, makes a pool_exhausted finding " +
				"(once per pool while such waits go on; a minute without one ends the episode)",
		},

		&cli.StringFlag{
			Name: "service-name-from", Value: "application_name", Destination: &c.ServiceNameFrom, EnvVars: env("service-name-from"), Category: catExport,
			Usage: "which client application statement and transaction spans are exported under (service.name), so that each application " +
				"has its own service in the tracing backend: application_name (the session's, else the sqlcommenter application or " +
				"db_driver tag), sqlcommenter (the tag first), or none (everything under pgtrace's own OTEL_SERVICE_NAME); " +
				"connect spans always stay pgtrace's, and metrics name the application in pgtrace.application",
		},
		&cli.IntFlag{
			Name: "max-applications", Value: 100, Destination: &c.MaxApplications, EnvVars: env("max-applications"), Category: catExport,
			Usage: "client applications that get a service and a metric label of their own; later ones share \"other\"",
		},
		&cli.StringFlag{
			Name: "metrics-histogram", Value: "explicit", Destination: &c.MetricsHistogram, EnvVars: env("metrics-histogram"), Category: catExport,
			Usage: "duration histograms: explicit (buckets dense around the 100 ms, 120 ms and 800 ms alert thresholds) or " +
				"exponential (base-2, finer everywhere; on /metrics these are Prometheus native histograms, scraped over protobuf)",
		},
		&cli.BoolFlag{
			Name: "export-raw-errors", Destination: &c.ExportRawErrors, EnvVars: env("export-raw-errors"), Category: catExport,
			Usage: "export PostgreSQL's error messages as they are; by default the values quoted in them (the literal a statement " +
				"failed on) are replaced by \"?\", and the SQLSTATE and the names of relations, columns and constraints are kept",
		},
		&cli.StringFlag{
			Name: "span-path", Value: "fast", Destination: &c.SpanPath, EnvVars: env("span-path"), Category: catExport,
			Usage: "how statement spans are built and sent: fast (built whole and encoded by pgtrace, a fraction of the CPU " +
				"per sampled statement) or sdk (the OpenTelemetry SDK's tracer, batch span processor and OTLP exporter); " +
				"both send the same spans, and pgtrace.spans.dropped counts drops on the fast path only",
		},
	}
}

// validate checks the configuration as a whole. Every error names the flag
// at fault; all problems are reported, not only the first.
func (c *config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if err := checkAddr(c.Listen, "6432"); err != nil {
		bad("--listen: %w", err)
	}
	if err := checkAddr(c.Upstream, "5432"); err != nil {
		bad("--upstream: %w", err)
	}
	if c.AdminListen != "" {
		if err := checkHostPort(c.AdminListen, "9187"); err != nil {
			bad("--admin-listen: %w", err)
		} else if !isLoopback(c.AdminListen) && c.AdminToken == "" && c.AdminTokenFile == "" {
			_, port, _ := net.SplitHostPort(c.AdminListen)
			bad("--admin-listen %s is reachable from other hosts and the admin API would be open to them: "+
				"set --admin-token or --admin-token-file (PGTRACE_ADMIN_TOKEN, PGTRACE_ADMIN_TOKEN_FILE), or listen on 127.0.0.1:%s", c.AdminListen, port)
		}
	}
	if c.AdminToken != "" && c.AdminTokenFile != "" {
		bad("--admin-token and --admin-token-file: give one, not both")
	}
	if c.AdminToken != "" {
		if err := checkToken(c.AdminToken); err != nil {
			bad("--admin-token: %w", err)
		}
	}
	if c.DialTimeout <= 0 {
		bad("--dial-timeout: must be positive, got %v", c.DialTimeout)
	}
	if !slices.Contains(wire.IOModes, c.IO) {
		bad("--io: %q is not one of %s", c.IO, strings.Join(wire.IOModes, ", "))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("--tls-cert and --tls-key must be given together")
	}
	if !slices.Contains(upstreamSSLs, c.UpstreamSSLMode) {
		bad("--upstream-sslmode: %q is not one of %s", c.UpstreamSSLMode, strings.Join(upstreamSSLs, ", "))
	}
	if network, _ := wire.Network(c.Upstream); network == "unix" && (c.UpstreamSSLMode == "require" || c.UpstreamSSLMode == "verify-full") {
		bad("--upstream-sslmode %s: PostgreSQL has no TLS on a Unix socket; use disable or prefer with --upstream %s", c.UpstreamSSLMode, c.Upstream)
	}
	if c.UpstreamCA != "" && c.UpstreamSSLMode != "verify-full" {
		bad("--upstream-ca is only used with --upstream-sslmode verify-full (got %q)", c.UpstreamSSLMode)
	}
	if c.MaxClientConnections < 0 {
		bad("--max-client-connections: must be 0 (no cap) or more, got %d", c.MaxClientConnections)
	}
	if c.ShutdownTimeout < 0 {
		bad("--shutdown-timeout: must not be negative, got %v", c.ShutdownTimeout)
	}
	if c.EventQueueSize <= 0 {
		bad("--event-queue-size: must be positive, got %d", c.EventQueueSize)
	}
	if !slices.Contains(logFormats, c.LogFormat) {
		bad("--log-format: %q is not one of %s", c.LogFormat, strings.Join(logFormats, ", "))
	}
	if !slices.Contains(logLevels, c.LogLevel) {
		bad("--log-level: %q is not one of %s", c.LogLevel, strings.Join(logLevels, ", "))
	}
	if c.SlowQueryThreshold <= 0 {
		bad("--slow-query-threshold: must be positive, got %v", c.SlowQueryThreshold)
	}
	if c.NPlusOneThreshold < 2 {
		bad("--n-plus-one-threshold: must be at least 2, got %d", c.NPlusOneThreshold)
	}
	if c.NPlusOneWindow <= 0 {
		bad("--n-plus-one-window: must be positive, got %v", c.NPlusOneWindow)
	}
	if c.NPlusOneMinDuration < 0 {
		bad("--n-plus-one-min-duration: must not be negative, got %v", c.NPlusOneMinDuration)
	}
	if c.IdleInTransactionThreshold <= 0 {
		bad("--idle-in-transaction-threshold: must be positive, got %v", c.IdleInTransactionThreshold)
	}
	if c.MaxFingerprints <= 0 {
		bad("--max-fingerprints: must be positive, got %d", c.MaxFingerprints)
	}
	if c.FingerprintCacheSize <= 0 {
		bad("--fingerprint-cache-size: must be positive, got %d", c.FingerprintCacheSize)
	}
	c.validatePooling(bad)
	if !slices.Contains(serviceNameFroms, c.ServiceNameFrom) {
		bad("--service-name-from: %q is not one of %s", c.ServiceNameFrom, strings.Join(serviceNameFroms, ", "))
	}
	if c.MaxApplications <= 0 {
		bad("--max-applications: must be positive, got %d", c.MaxApplications)
	}
	if !slices.Contains(metricsHistograms, c.MetricsHistogram) {
		bad("--metrics-histogram: %q is not one of %s", c.MetricsHistogram, strings.Join(metricsHistograms, ", "))
	}
	if !slices.Contains(spanPaths, c.SpanPath) {
		bad("--span-path: %q is not one of %s", c.SpanPath, strings.Join(spanPaths, ", "))
	}
	if len(errs) <= 1 {
		return errors.Join(errs...)
	}
	// One problem per indented line; every one stays reachable by errors.Is.
	args := []any{len(errs)}
	for _, e := range errs {
		args = append(args, e)
	}
	return fmt.Errorf("%d problems with the configuration:"+strings.Repeat("\n  %w", len(errs)), args...)
}

// checkAddr accepts host:port or the path of a Unix socket. The socket
// need not exist yet (an upstream may start later, and /readyz says so;
// --listen creates it), but a directory is refused with the name
// PostgreSQL's clients look for in it: .s.PGSQL.<port>.
func checkAddr(s, port string) error {
	network, path := wire.Network(s)
	if network == "tcp" {
		return checkHostPort(s, port)
	}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return nil
	case fi.IsDir():
		return fmt.Errorf("%q is a directory: give the socket in it, such as %s", s, filepath.Join(path, ".s.PGSQL."+port))
	case fi.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("%q is not a Unix socket", s)
	}
	return nil
}

// checkHostPort accepts host:port with a numeric port; the host may be empty
// (all interfaces), as net.Listen allows. defPort makes the example of the
// error message; a bare port number is shown back on loopback.
func checkHostPort(s, defPort string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		example := "127.0.0.1:" + defPort
		switch {
		case isDigits(s): // a port alone
			example = "127.0.0.1:" + s
		case s != "" && !strings.ContainsAny(s, ": /"): // a host alone
			example = net.JoinHostPort(s, defPort)
		}
		return fmt.Errorf("%q is not host:port: want host:port, e.g. %s", s, example)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", s, port)
	}
	return nil
}

// isLoopback reports whether the host of hostPort is a loopback address or
// "localhost": only this host can connect. An empty host or 0.0.0.0 is
// every interface.
func isLoopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// minTokenLength is the shortest admin token accepted.
const minTokenLength = 16

// checkToken rejects an admin token too short to resist guessing, or one
// that cannot travel in an HTTP header.
func checkToken(token string) error {
	if strings.HasPrefix(strings.ToUpper(token), "CHANGE-ME") {
		return errors.New("the token is the placeholder of the example manifests: replace it (e.g. openssl rand -hex 32)")
	}
	if len(token) < minTokenLength {
		return fmt.Errorf("the token has %d characters, want at least %d (e.g. openssl rand -hex 32)", len(token), minTokenLength)
	}
	for _, r := range token {
		if r <= ' ' || r == 0x7f || r > 0x7e {
			return errors.New("the token must be printable ASCII without spaces (e.g. openssl rand -hex 32)")
		}
	}
	return nil
}

// adminToken is the admin token from --admin-token or the file
// --admin-token-file names, or "" when neither is set. validate must have
// accepted c.
func (c *config) adminToken() (string, error) {
	if c.AdminTokenFile == "" {
		return c.AdminToken, nil
	}
	b, err := os.ReadFile(c.AdminTokenFile)
	if err != nil {
		return "", fmt.Errorf("--admin-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if err := checkToken(token); err != nil {
		return "", fmt.Errorf("--admin-token-file %s: %w", c.AdminTokenFile, err)
	}
	return token, nil
}

// logger builds the process logger on w as --log-format and --log-level say.
// validate must have accepted c.
func (c *config) logger(w interface{ Write([]byte) (int, error) }) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.LogLevel)) // validated
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// clientTLS loads the client-facing certificate; nil when TLS toward clients
// is not configured.
func (c *config) clientTLS() (*tls.Config, error) {
	if c.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// upstreamTLS builds the upstream TLS settings: the server name is the host
// of --upstream, the roots --upstream-ca or the system's.
func (c *config) upstreamTLS() (wire.UpstreamTLS, error) {
	u := wire.UpstreamTLS{Mode: c.UpstreamSSLMode}
	if host, _, err := net.SplitHostPort(c.Upstream); err == nil {
		u.ServerName = host
	}
	if c.UpstreamCA != "" {
		pem, err := os.ReadFile(c.UpstreamCA)
		if err != nil {
			return u, fmt.Errorf("--upstream-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return u, fmt.Errorf("--upstream-ca: no PEM certificate in %s", c.UpstreamCA)
		}
		u.RootCAs = pool
	}
	return u, nil
}
