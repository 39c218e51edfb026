package observe

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"reflect"
)

// OpenDB opens a *sql.DB like sql.Open(driverName, dsn) whose connections
// append a sqlcommenter comment (see Comment) to every statement they run,
// with db_driver set to driverName. With the pgx driver:
//
//	import _ "github.com/jackc/pgx/v5/stdlib"
//	db, err := observe.OpenDB("pgx", dsn, observe.WithServiceName("partners"))
//
// Like sql.Open it does not connect. It makes no span per query: the proxy
// makes those, parented under the traceparent it reads from the comment —
// the span of ctx, such as the HTTP server span or a TracedTx span.
func OpenDB(driverName, dsn string, opts ...Option) (*sql.DB, error) {
	probe, err := sql.Open(driverName, dsn)
	if err != nil {
		return nil, fmt.Errorf("observe: open %s: %w", driverName, err)
	}
	d := probe.Driver()
	if err := probe.Close(); err != nil {
		return nil, fmt.Errorf("observe: open %s: %w", driverName, err)
	}
	var connector driver.Connector
	if dc, ok := d.(driver.DriverContext); ok {
		connector, err = dc.OpenConnector(dsn)
		if err != nil {
			return nil, fmt.Errorf("observe: open %s connector: %w", driverName, err)
		}
	} else {
		connector = dsnConnector{dsn: dsn, driver: d}
	}
	opts = append([]Option{WithDriverName(driverName)}, opts...)
	return sql.OpenDB(WrapConnector(connector, opts...)), nil
}

// WrapConnector returns a connector whose connections append a sqlcommenter
// comment to every statement, for use with sql.OpenDB. It is the way to keep
// a driver-specific configuration, for example pgx's:
//
//	cfg, _ := pgx.ParseConfig(dsn)
//	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
//	db := sql.OpenDB(observe.WrapConnector(stdlib.GetConnector(*cfg), observe.WithDriverName("pgx")))
//
// The db_driver tag is WithDriverName's, else the driver's package path.
//
// Statements are commented as they reach the driver: ExecContext and
// QueryContext get all tags of their context. A statement prepared with
// PrepareContext outlives the request that prepared it, so it gets only the
// static tags (application, db_driver) and never a traceparent.
//
// A connection handed out by (*sql.Conn).Raw is this package's wrapper; its
// Unwrap method returns the driver's own connection.
func WrapConnector(c driver.Connector, opts ...Option) driver.Connector {
	cfg := newConfig(opts...)
	name := cfg.DriverName
	if name == "" {
		name = reflect.TypeOf(c.Driver()).Elem().PkgPath()
	}
	return &connector{inner: c, commenter: newCommenter(cfg.application(), name)}
}

type dsnConnector struct {
	dsn    string
	driver driver.Driver
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.driver.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.driver }

type connector struct {
	inner     driver.Connector
	commenter *commenter
}

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &conn{inner: dc, commenter: c.commenter}, nil
}

func (c *connector) Driver() driver.Driver { return c.inner.Driver() }

// conn wraps a driver connection. It implements every optional interface
// database/sql knows; where the inner connection lacks one it answers as
// database/sql would without it (driver.ErrSkip, or the default).
type conn struct {
	inner     driver.Conn
	commenter *commenter
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

// Unwrap returns the driver's connection.
func (c *conn) Unwrap() driver.Conn { return c.inner }

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.inner.Prepare(c.commenter.comment(context.Background(), query, false))
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	query = c.commenter.comment(ctx, query, false)
	if pc, ok := c.inner.(driver.ConnPrepareContext); ok {
		return pc.PrepareContext(ctx, query)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.inner.Prepare(query)
}

func (c *conn) Close() error { return c.inner.Close() }

// Begin is the deprecated driver.Conn method; database/sql calls BeginTx.
func (c *conn) Begin() (driver.Tx, error) {
	return c.inner.Begin() //nolint:staticcheck // required by driver.Conn
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if bt, ok := c.inner.(driver.ConnBeginTx); ok {
		return bt.BeginTx(ctx, opts)
	}
	if opts.Isolation != 0 || opts.ReadOnly {
		return nil, fmt.Errorf("observe: driver %T does not support transaction options", c.inner)
	}
	return c.inner.Begin() //nolint:staticcheck // fallback, as database/sql does
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	ec, ok := c.inner.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	return ec.ExecContext(ctx, c.commenter.comment(ctx, query, true), args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	qc, ok := c.inner.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	return qc.QueryContext(ctx, c.commenter.comment(ctx, query, true), args)
}

func (c *conn) Ping(ctx context.Context) error {
	if p, ok := c.inner.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *conn) ResetSession(ctx context.Context) error {
	if r, ok := c.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *conn) IsValid() bool {
	if v, ok := c.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	if nc, ok := c.inner.(driver.NamedValueChecker); ok {
		return nc.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}
