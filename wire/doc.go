// Package wire is pgtrace's PostgreSQL relay: a transparent, byte-exact
// session-mode proxy that turns the traffic it carries into Events.
//
// A Server accepts client (frontend) connections and opens one upstream
// (backend) connection for each. After the startup packet, every byte the
// client sends reaches the upstream unchanged and every byte the upstream
// sends reaches the client unchanged: the relay frames messages itself
// (1-byte type + int32 length including itself), forwards the original
// bytes, and decodes only the few messages it observes. Authentication
// (trust, password, md5, SCRAM-SHA-256) passes through untouched.
//
// On Linux, once a plain-TCP session's startup packet is upstream, its two
// sockets join an epoll event loop shared with other sessions (one loop per
// two Ps), as in PgBouncer: a readable socket is read once, framed and
// written on in the same goroutine. Sessions with TLS on either side, and
// elsewhere than Linux, use two relay goroutines per session instead.
//
// Observation never slows traffic: the relay hands small Event values to a
// bounded queue, after the bytes that made them were written, and one
// dispatcher goroutine calls the Observer. When the queue is full the event
// is dropped and counted (Server.DroppedEvents).
//
// Message size limits: startup packets must be 8..10000 bytes long (as in
// PostgreSQL); any other message may declare up to MaxMessageLen bytes. A
// client that breaks either limit gets ErrorResponse 08P01 and only its
// session closes. Messages the relay must read whole to observe them (Query,
// Parse and a handful of small backend messages) are buffered up to that
// limit; all others, notably DataRow and CopyData, stream through a small
// fixed per-direction buffer, so a large result does not grow the proxy.
package wire
