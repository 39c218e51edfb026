// Package pool makes pgtrace a connection pooler: in session and transaction
// pool modes, clients log in to the proxy, which authenticates them itself,
// and share server connections that the proxy logs in with its own
// credentials, as PgBouncer does.
//
// The package splits by job:
//
//   - userlist.go: PgBouncer's auth_file format (userlist.txt).
//   - scram.go: SCRAM-SHA-256, both as the server (toward clients) and as
//     the client (toward PostgreSQL), with pass-through of a client's key.
//   - auth.go: authenticating a client from its secret (SCRAM or md5).
//   - authquery.go: finding a secret with an auth_query on the server.
//   - login.go: logging in a server connection (trust, password, md5,
//     SCRAM).
//   - pool.go: the pools, one per (database, user): sizes, waiters, idle
//     and lifetime limits.
//   - relay.go: one client session in a pooled mode: which server
//     connection serves it, and when it goes back.
//   - prepared.go: protocol-level prepared statements across server
//     connections (transaction mode).
//
// wire/ stays the relay's owner: it accepts clients, negotiates TLS, reads
// the startup packet and observes every statement; in a pooled mode it
// hands the session to this package after the startup packet.
package pool
