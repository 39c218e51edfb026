package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/dotmac/pgtrace/observe"
)

const (
	// defaultServiceName names the service unless OTEL_SERVICE_NAME or
	// service.name in OTEL_RESOURCE_ATTRIBUTES does.
	defaultServiceName = "partners"
	defaultAddr        = "127.0.0.1:8080"
	shutdownGrace      = 10 * time.Second
)

// tenantPattern is what the service accepts as a tenant id.
var tenantPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// run is the whole service: it returns when ctx is done (after a graceful
// shutdown) or when it fails. getenv supplies the configuration and stdout
// receives the JSON logs, so that a test can run it in-process.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) (err error) {
	dsn := getenv("PARTNERS_DSN")
	if dsn == "" {
		return errors.New("PARTNERS_DSN is not set")
	}
	addr := getenv("PARTNERS_ADDR")
	if addr == "" {
		addr = defaultAddr
	}

	shutdown, err := observe.Setup(ctx, observe.WithDefaultServiceName(defaultServiceName))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, shutdown(context.WithoutCancel(ctx))) }()

	logger := slog.New(observe.NewLogHandler(slog.NewJSONHandler(stdout, nil), observe.WithLogBridge()))

	db, err := openDB(dsn)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, db.Close()) }()

	if err := migrate(ctx, db); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           newServer(db, logger, observe.NewBusinessMetrics()).handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.InfoContext(ctx, "listening", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.InfoContext(ctx, "shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// openDB opens the pool through observe so that every statement carries a
// sqlcommenter comment. The exec mode is QueryExecModeExec unless the DSN
// says otherwise: pgx's default statement cache keys on SQL text, which a
// traceparent makes unique, and prepares in a separate round trip from the
// execution (see the observe package documentation).
func openDB(dsn string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("PARTNERS_DSN: %w", err)
	}
	if cfg.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement && !hasParam(dsn, "default_query_exec_mode") {
		cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	db := sql.OpenDB(observe.WrapConnector(stdlib.GetConnector(*cfg),
		observe.WithDriverName("pgx"), observe.WithDefaultServiceName(defaultServiceName)))
	db.SetMaxOpenConns(10)
	db.SetMaxIdleConns(10)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, nil
}

func hasParam(dsn, name string) bool {
	return regexp.MustCompile(`(^|[?&\s])` + regexp.QuoteMeta(name) + `\s*=`).MatchString(dsn)
}
