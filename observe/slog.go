package observe

import (
	"context"
	"log/slog"
	"os"

	"go.opentelemetry.io/contrib/bridges/otelslog"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Keys the log handler adds to every record that has a value for them.
const (
	LogTraceIDKey   = "trace_id"
	LogSpanIDKey    = "span_id"
	LogTenantIDKey  = string(TenantIDKey)
	LogRequestIDKey = string(RequestIDKey)
	// LogErrorKey is the attribute that, on a record of level Error or
	// above, marks the current span failed.
	LogErrorKey = "error"
)

// NewLogHandler wraps next (a JSON handler on os.Stderr if nil) so that
// every record also carries, from its context, trace_id and span_id of the
// current span and tenant.id and request.id (see Tenant and RequestID). They
// are always top-level keys, even under WithGroup, so that a log backend can
// join logs to traces.
//
// A record of level Error or above with an "error" attribute marks the
// current span failed — status Error with the error's text, and error.type
// the Go type of the error — the guide's
// logger.error(..., error=...).
//
// With WithLogBridge, records also go to OpenTelemetry logs through the
// logger provider (WithLoggerProvider, else the global one that Setup
// installs).
func NewLogHandler(next slog.Handler, opts ...Option) slog.Handler {
	c := newConfig(opts...)
	if next == nil {
		next = slog.NewJSONHandler(os.Stderr, nil)
	}
	if c.LogBridge {
		next = slog.NewMultiHandler(next, otelslog.NewHandler(ScopeName,
			otelslog.WithLoggerProvider(c.LoggerProvider),
			otelslog.WithVersion(Version())))
	}
	return &logHandler{next: next}
}

// logHandler forwards attributes given before the first WithGroup to next
// (where they are preformatted) and keeps the groups and attributes that
// follow, so that it can nest them itself and leave the correlation keys at
// the top level.
type logHandler struct {
	next slog.Handler
	goas []groupOrAttrs
	// errAttr is the last top-level "error" attribute given through
	// WithAttrs (logger.With("error", err)): it marks the span as one on
	// the record does.
	errAttr *slog.Value
}

type groupOrAttrs struct {
	group string
	attrs []slog.Attr
}

func (h *logHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	if len(h.goas) == 0 {
		nh := &logHandler{next: h.next.WithAttrs(attrs), errAttr: h.errAttr}
		for _, a := range attrs {
			if a.Key == LogErrorKey {
				v := a.Value
				nh.errAttr = &v
			}
		}
		return nh
	}
	return &logHandler{next: h.next, goas: append(h.goas[:len(h.goas):len(h.goas)], groupOrAttrs{attrs: attrs}), errAttr: h.errAttr}
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &logHandler{next: h.next, goas: append(h.goas[:len(h.goas):len(h.goas)], groupOrAttrs{group: name}), errAttr: h.errAttr}
}

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	span := trace.SpanFromContext(ctx)
	sc := span.SpanContext()
	if r.Level >= slog.LevelError && span.IsRecording() {
		markSpanFromRecord(span, r, h.errAttr)
	}

	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	if sc.IsValid() {
		out.AddAttrs(
			slog.String(LogTraceIDKey, sc.TraceID().String()),
			slog.String(LogSpanIDKey, sc.SpanID().String()))
	}
	if t := Tenant(ctx); t != "" {
		out.AddAttrs(slog.String(LogTenantIDKey, t))
	}
	if id := RequestID(ctx); id != "" {
		out.AddAttrs(slog.String(LogRequestIDKey, id))
	}

	if len(h.goas) == 0 {
		r.Attrs(func(a slog.Attr) bool {
			out.AddAttrs(a)
			return true
		})
		return h.next.Handle(ctx, out)
	}
	// Nest the record's attributes in the groups, innermost first.
	attrs := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		attrs = append(attrs, a)
		return true
	})
	for i := len(h.goas) - 1; i >= 0; i-- {
		g := h.goas[i]
		if g.group == "" {
			attrs = append(g.attrs[:len(g.attrs):len(g.attrs)], attrs...)
			continue
		}
		attrs = []slog.Attr{{Key: g.group, Value: slog.GroupValue(attrs...)}}
	}
	out.AddAttrs(attrs...)
	return h.next.Handle(ctx, out)
}

// markSpanFromRecord sets span's status to Error when r has an "error"
// attribute, or else when the logger was given one (with, if not nil).
func markSpanFromRecord(span trace.Span, r slog.Record, with *slog.Value) {
	var v slog.Value
	found := with != nil
	if found {
		v = *with
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != LogErrorKey {
			return true
		}
		v, found = a.Value, true
		return false
	})
	if !found {
		return
	}
	v = v.Resolve()
	typ, msg := semconv.ErrorTypeOther.Value.AsString(), r.Message
	if err, ok := v.Any().(error); ok && v.Kind() == slog.KindAny {
		typ, msg = errorType(err), err.Error()
	}
	span.SetStatus(codes.Error, msg)
	span.SetAttributes(semconv.ErrorTypeKey.String(typ))
}
