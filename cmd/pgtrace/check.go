package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/urfave/cli/v2"
	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/dotmac/pgtrace/internal/otelenv"
	"github.com/dotmac/pgtrace/wire"
)

// checkResult is one line of `pgtrace check`.
type checkResult struct {
	Name string
	OK   bool
	Info bool   // neither pass nor fail: something not configured
	Msg  string // what was found, with the address
	Fix  string // what to do, when !OK
}

type checkConfig struct {
	Upstream    string
	Listen      string
	AdminListen string
	User        string
	Password    string
	Database    string
	Timeout     time.Duration
}

func checkCommand() *cli.Command {
	var cc checkConfig
	return &cli.Command{
		Name:  "check",
		Usage: "check that pgtrace can run here: upstream, listen addresses, OTLP endpoints",
		Description: `check connects to the upstream PostgreSQL (and logs in when a user is
given), checks that the listen and admin addresses are free, and probes the OTLP
endpoints named by the OTEL_* variables, traces and metrics each (a collector may
take only one: Jaeger takes traces only). It prints PASS or FAIL per item, with the
address and how to fix each failure, and exits 1 when anything failed.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "upstream", Value: "127.0.0.1:5432", EnvVars: []string{"PGTRACE_UPSTREAM"}, Destination: &cc.Upstream,
				Usage: "`host:port` of the PostgreSQL server, or the path of its Unix socket, as for serve"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:6432", EnvVars: []string{"PGTRACE_LISTEN"}, Destination: &cc.Listen,
				Usage: "`address` serve would listen on; checked to be free (\"\" skips)"},
			&cli.StringFlag{Name: "admin-listen", Value: "127.0.0.1:9187", EnvVars: []string{"PGTRACE_ADMIN_LISTEN"}, Destination: &cc.AdminListen,
				Usage: "`address` of the admin server; checked to be free (\"\" skips)"},
			&cli.StringFlag{Name: "user", EnvVars: []string{"PGUSER"}, Destination: &cc.User,
				Usage: "log in to the upstream as `USER` (no login without it: only the connection is checked)"},
			&cli.StringFlag{Name: "password", EnvVars: []string{"PGPASSWORD"}, Destination: &cc.Password,
				Usage: "password for --user"},
			&cli.StringFlag{Name: "database", EnvVars: []string{"PGDATABASE"}, Destination: &cc.Database,
				Usage: "database for the login (default: the user name)"},
			&cli.DurationFlag{Name: "timeout", Value: 5 * time.Second, Destination: &cc.Timeout,
				Usage: "time allowed for each probe"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				// Flags after a stray word would go unread: refuse, rather
				// than check the defaults.
				return usageError(fmt.Errorf("check takes no arguments, got %q (give the upstream as --upstream)", c.Args().Slice()))
			}
			if cc.Timeout <= 0 {
				return usageError(fmt.Errorf("--timeout: must be positive, got %v", cc.Timeout))
			}
			results := runChecks(c.Context, cc, os.Getenv)
			if n := printChecks(c.App.Writer, results); n > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d checks failed", n, len(results))}
			}
			return nil
		},
	}
}

// printChecks writes one line per result (and a fix line under failures)
// and returns how many failed.
func printChecks(w io.Writer, results []checkResult) (failed int) {
	for _, r := range results {
		status := "PASS"
		switch {
		case r.Info:
			status = "INFO"
		case !r.OK:
			status = "FAIL"
			failed++
		}
		fmt.Fprintf(w, "%-4s  %-9s %s\n", status, r.Name, r.Msg)
		if !r.OK && !r.Info && r.Fix != "" {
			fmt.Fprintf(w, "      %-9s fix: %s\n", "", r.Fix)
		}
	}
	return failed
}

func runChecks(ctx context.Context, cc checkConfig, getenv func(string) string) []checkResult {
	var rs []checkResult
	rs = append(rs, checkUpstream(ctx, cc))
	if cc.Listen != "" {
		rs = append(rs, checkFree("listen", cc.Listen, "--listen"))
	}
	if cc.AdminListen != "" {
		rs = append(rs, checkFree("admin", cc.AdminListen, "--admin-listen"))
	}
	rs = append(rs, checkOTLP(ctx, cc.Timeout, getenv)...)
	return rs
}

func checkUpstream(ctx context.Context, cc checkConfig) checkResult {
	r := checkResult{Name: "upstream"}
	network, addr := wire.Network(cc.Upstream)
	if cc.User == "" {
		// No credentials: prove a PostgreSQL server answers by sending an
		// SSLRequest, which every server answers with one byte.
		d := net.Dialer{Timeout: cc.Timeout}
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			r.Msg = fmt.Sprintf("%s: %v", cc.Upstream, err)
			r.Fix = "start PostgreSQL there, or point --upstream (PGTRACE_UPSTREAM) at it"
			return r
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(cc.Timeout))
		if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
			r.Msg = fmt.Sprintf("%s: write SSLRequest: %v", cc.Upstream, err)
			r.Fix = "check that --upstream names a PostgreSQL server"
			return r
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(conn, b); err != nil || (b[0] != 'S' && b[0] != 'N') {
			r.Msg = fmt.Sprintf("%s answers, but not as PostgreSQL (%q, %v)", cc.Upstream, b, err)
			r.Fix = "check that --upstream names a PostgreSQL server, not another service"
			return r
		}
		r.OK = true
		r.Msg = fmt.Sprintf("%s is a PostgreSQL server (give --user to check a login too)", cc.Upstream)
		return r
	}
	cfg, err := checkLoginConfig(cc, network, addr)
	if err != nil {
		r.Msg = fmt.Sprintf("%q: %v", cc.Upstream, err)
		r.Fix = "give --upstream as host:port or as the path of a Unix socket"
		return r
	}
	cctx, cancel := context.WithTimeout(ctx, cc.Timeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		r.Msg = fmt.Sprintf("%s as %s: %v", cc.Upstream, cc.User, err)
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000"):
			r.Fix = "check --user/--password (PGUSER/PGPASSWORD) and pg_hba.conf on the server"
		default:
			r.Fix = "start PostgreSQL there, or point --upstream (PGTRACE_UPSTREAM) at it"
		}
		return r
	}
	defer conn.Close(ctx)
	r.OK = true
	r.Msg = fmt.Sprintf("%s: logged in as %s (server %s)", cc.Upstream, cc.User, conn.ParameterStatus("server_version"))
	return r
}

// checkLoginConfig is the connection config check logs in with: TLS if
// the server offers it over TCP, none over a Unix socket, which pgconn
// dials at addr whatever its name.
func checkLoginConfig(cc checkConfig, network, addr string) (*pgconn.Config, error) {
	host, port, ssl := "", "", "prefer"
	if network == "unix" {
		host, ssl = filepath.Dir(addr), "disable"
	} else {
		var err error
		if host, port, err = net.SplitHostPort(addr); err != nil {
			return nil, err
		}
	}
	q := url.Values{"host": {host}, "sslmode": {ssl}, "application_name": {"pgtrace-check"},
		"connect_timeout": {fmt.Sprint(int(cc.Timeout.Seconds() + 0.5))}}
	if port != "" {
		q.Set("port", port)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(cc.User, cc.Password), Path: "/" + cc.Database, RawQuery: q.Encode()}
	cfg, err := pgconn.ParseConfig(u.String())
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}
	}
	return cfg, nil
}

func checkFree(name, addr, flag string) checkResult {
	r := checkResult{Name: name}
	if network, path := wire.Network(addr); network == "unix" {
		if err := unixSocketFree(path); err != nil {
			r.Msg = fmt.Sprintf("cannot listen on %s: %v", addr, err)
			r.Fix = fmt.Sprintf("stop what uses %s, or choose another socket with %s", addr, flag)
			return r
		}
		r.OK = true
		r.Msg = addr + " is free"
		return r
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		r.Msg = fmt.Sprintf("cannot listen on %s: %v", addr, err)
		r.Fix = fmt.Sprintf("stop what uses %s, or choose another address with %s", addr, flag)
		return r
	}
	l.Close()
	r.OK = true
	r.Msg = addr + " is free"
	return r
}

// checkOTLP probes each signal's OTLP endpoint, as otelenv.OTLP reads the
// OTEL_* variables (so as the exporters will send): traces and metrics
// separately, because a collector may take one and not the other (Jaeger
// takes traces only). A signal switched off (OTEL_TRACES_EXPORTER=none)
// is not probed.
func checkOTLP(ctx context.Context, timeout time.Duration, getenv func(string) string) []checkResult {
	traces, metrics := otelenv.OTLP("traces", getenv), otelenv.OTLP("metrics", getenv)
	if traces.Off != "" && traces.Off == metrics.Off {
		return []checkResult{{Name: "otlp", OK: true, Info: true,
			Msg: "no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT unset or OTEL_SDK_DISABLED=true): traces and metrics stay off, /metrics still works"}}
	}
	var rs []checkResult
	said := map[string]bool{}
	for _, t := range []otelenv.Target{traces, metrics} {
		// What the variables asked for and pgtrace does otherwise
		// (http/json sent as http/protobuf), once.
		for _, w := range t.Warnings {
			if !said[w] {
				said[w] = true
				rs = append(rs, checkResult{Name: t.Signal, OK: true, Info: true, Msg: w})
			}
		}
		rs = append(rs, checkOTLPSignal(ctx, timeout, t))
	}
	return rs
}

func checkOTLPSignal(ctx context.Context, timeout time.Duration, t otelenv.Target) checkResult {
	r := checkResult{Name: t.Signal}
	if t.Off != "" {
		r.OK, r.Info = true, true
		r.Msg = "OTLP " + t.Signal + " off (" + t.Off + ")"
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if t.Protocol == otelenv.ProtocolHTTP {
		return probeOTLPHTTP(ctx, t)
	}
	return probeOTLPGRPC(ctx, t)
}

// refusedFix is the fix when the collector does not take signal at all.
func refusedFix(signal string) string {
	return fmt.Sprintf("this collector does not take %s (Jaeger takes traces only): set OTEL_%s_EXPORTER=none, "+
		"or point OTEL_EXPORTER_OTLP_%s_ENDPOINT at one that does", signal, strings.ToUpper(signal), strings.ToUpper(signal))
}

func probeOTLPGRPC(ctx context.Context, t otelenv.Target) checkResult {
	r := checkResult{Name: t.Signal}
	target := t.URL
	if u, err := url.Parse(t.URL); err == nil && !t.Custom {
		target = u.Host
	}
	creds := insecure.NewCredentials()
	if !t.Insecure {
		creds = credentials.NewClientTLSFromCert(nil, "")
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		r.Msg = fmt.Sprintf("grpc %s: %v", target, err)
		r.Fix = "set OTEL_EXPORTER_OTLP_ENDPOINT to the collector's OTLP gRPC address, e.g. http://otel-collector:4317"
		return r
	}
	defer conn.Close()
	what := "an empty " + strings.TrimSuffix(t.Signal, "s") + " export"
	if t.Signal == "metrics" {
		_, err = collectormetrics.NewMetricsServiceClient(conn).Export(ctx, &collectormetrics.ExportMetricsServiceRequest{}, grpc.WaitForReady(true))
	} else {
		_, err = collectortrace.NewTraceServiceClient(conn).Export(ctx, &collectortrace.ExportTraceServiceRequest{}, grpc.WaitForReady(true))
	}
	tls := "TLS"
	if t.Insecure {
		tls = "plaintext"
	}
	switch {
	case status.Code(err) == codes.Unimplemented:
		r.Msg = fmt.Sprintf("grpc %s answers but does not accept %s (Unimplemented)", target, t.Signal)
		r.Fix = refusedFix(t.Signal)
	case err != nil:
		r.Msg = fmt.Sprintf("grpc %s (%s): %v", target, tls, err)
		r.Fix = "start the collector, check the address and port (4317 for gRPC), and OTEL_EXPORTER_OTLP_INSECURE=true for a plaintext collector"
	default:
		r.OK = true
		r.Msg = fmt.Sprintf("grpc %s (%s) accepted %s", target, tls, what)
	}
	return r
}

func probeOTLPHTTP(ctx context.Context, t otelenv.Target) checkResult {
	r := checkResult{Name: t.Signal}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.URL, strings.NewReader(""))
	if err != nil {
		r.Msg = fmt.Sprintf("http %s: %v", t.URL, err)
		r.Fix = "set OTEL_EXPORTER_OTLP_ENDPOINT to the collector's OTLP HTTP address, e.g. http://otel-collector:4318"
		return r
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.Msg = fmt.Sprintf("http %s: %v", t.URL, err)
		r.Fix = "start the collector, and check the address and port (4318 for HTTP)"
		return r
	}
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed || resp.StatusCode == http.StatusNotImplemented:
		r.Msg = fmt.Sprintf("http %s answered %s: no %s there", t.URL, resp.Status, t.Signal)
		r.Fix = refusedFix(t.Signal) + "; or check the endpoint's path"
	case resp.StatusCode >= 500:
		r.Msg = fmt.Sprintf("http %s answered %s", t.URL, resp.Status)
		r.Fix = "check that the address is an OTLP/HTTP receiver"
	default:
		r.OK = true
		r.Msg = fmt.Sprintf("http %s answered %s", t.URL, resp.Status)
	}
	return r
}
