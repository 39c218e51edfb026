// Package fingerprint turns the text of a SQL statement, as a client sent it
// to PostgreSQL, into what the rest of pgtrace needs: the sqlcommenter tags
// and W3C trace context of its comment, a fingerprint that groups executions
// of the same query, normalized text that is safe to export (no literals, no
// passwords, no comments) and an OpenTelemetry db.query.summary with the
// operation and target tables.
//
// The package is pure code over strings: it knows nothing of the wire
// protocol or of OpenTelemetry. Parsing uses pg_query_go (PostgreSQL's own
// parser) and falls back to a lexer when the parser rejects a text; the
// result of parsing is cached per comment-stripped text, so the relay's
// steady state costs a look at the ends of the text for its comments and one
// cache lookup.
//
// Comments (DESIGN.md decision 4) are read from the end of the text (the last
// comment wins) or, failing that, from its start, in the sqlcommenter format
// key='value',key2='value2' with URL-encoded keys and values and \' escapes.
// A /* inside a string literal, an E'…' string, a quoted identifier or a
// dollar-quoted body is not a comment; -- comments are never read for tags.
package fingerprint
