// Package clients holds end-to-end tests of pgtrace with real clients in
// several languages: a Go service using observe, Node's pg with
// @opentelemetry/instrumentation-pg, and Python's SQLAlchemy with a
// sqlcommenter hook. Each test starts PostgreSQL (internal/pgtest), pgtrace
// in-process and an OTLP receiver (internal/otlptest), runs the client
// against the proxy, and checks the spans pgtrace exports (parented under
// the client's spans, with its trace id) and its findings (the N+1).
//
// The Node and Python clients need what .ci/run installs: `npm ci` in
// node/, and Debian's python3-sqlalchemy and python3-psycopg2. A test whose
// client is missing fails, naming what to install; it does not skip.
package clients
