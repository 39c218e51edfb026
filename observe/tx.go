package observe

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// TracedTx runs fn in a transaction of db under a span called name, the
// guide's traced_transaction. Statements fn runs through tx with the context
// it is given carry that span as their traceparent (when db comes from OpenDB
// or WrapConnector), so the proxy parents them under it.
//
// If fn returns an error or panics, the transaction is rolled back and the
// span marked failed; the error (joined with a rollback error, if any) is
// returned and a panic continues. Otherwise the transaction is committed and
// a commit error is returned. WithTxOptions sets the transaction's options and
// WithSpanAttributes adds span attributes.
func TracedTx(ctx context.Context, db *sql.DB, name string, fn func(ctx context.Context, tx *sql.Tx) error, opts ...Option) error {
	c := newConfig(opts...)
	return TracedOp(ctx, name, func(ctx context.Context) error {
		tx, err := db.BeginTx(ctx, c.TxOptions)
		if err != nil {
			return fmt.Errorf("%s: begin: %w", name, err)
		}
		defer func() {
			if p := recover(); p != nil {
				span := trace.SpanFromContext(ctx)
				span.SetStatus(codes.Error, fmt.Sprint("panic: ", p))
				span.SetAttributes(semconv.ErrorTypeKey.String("panic"))
				_ = tx.Rollback()
				panic(p) // TracedOp's deferred span.End still runs
			}
		}()
		if err := fn(ctx, tx); err != nil {
			if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
				return errors.Join(err, fmt.Errorf("%s: rollback: %w", name, rbErr))
			}
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("%s: commit: %w", name, err)
		}
		return nil
	}, opts...)
}

// TracedOp runs fn under a span called name, the guide's
// traced_db_operation: statements fn runs with the context it is given carry
// that span as their traceparent. An error fn returns marks the span failed
// and is returned as is. WithSpanAttributes adds span attributes, for example
// semconv.DBCollectionName("partners").
func TracedOp(ctx context.Context, name string, fn func(ctx context.Context) error, opts ...Option) (err error) {
	c := newConfig(opts...)
	ctx, span := c.tracer().Start(ctx, name,
		trace.WithSpanKind(trace.SpanKindInternal),
		trace.WithAttributes(c.SpanAttributes...))
	defer func() {
		if err != nil {
			setSpanError(span, err)
		}
		span.End()
	}()
	return fn(ctx)
}

// setSpanError marks span failed the way otelhttp does: error status and
// error.type, without an exception event.
func setSpanError(span trace.Span, err error) {
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
}

// errorType is the error.type of err: its Go type, such as "*pgconn.PgError",
// looking through the wrappers fmt.Errorf("...: %w") makes.
func errorType(err error) string {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || fmt.Sprintf("%T", err) != "*fmt.wrapError" {
			return fmt.Sprintf("%T", err)
		}
		err = u.Unwrap()
	}
}
