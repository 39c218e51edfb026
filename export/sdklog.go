package export

import (
	"context"
	"log/slog"

	"github.com/dotmac/pgtrace/internal/otelenv"
)

// sdkLogHandler carries the OTel SDK's own log lines (its global logger,
// a logr.Logger) to pgtrace's logger and format, marked
// component=opentelemetry-sdk. It drops one of them: the "parse url" error
// the OTLP clients log for an endpoint without a scheme (127.0.0.1:4317),
// which pgtrace resolved itself (otelenv.OTLP) and passed to them as a URL.
type sdkLogHandler struct {
	slog.Handler
	skip map[string]bool // endpoints whose "parse url" errors are dropped
}

func newSDKLogHandler(h slog.Handler, targets ...otelenv.Target) slog.Handler {
	skip := map[string]bool{}
	for _, t := range targets {
		if t.Off == "" && t.NoScheme {
			skip[t.Endpoint] = true
		}
	}
	return &sdkLogHandler{Handler: h.WithAttrs([]slog.Attr{slog.String("component", "opentelemetry-sdk")}), skip: skip}
}

func (h *sdkLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "parse url" && len(h.skip) > 0 {
		handled := false
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "input" && h.skip[a.Value.String()] {
				handled = true
			}
			return !handled
		})
		if handled {
			return nil
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h *sdkLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &sdkLogHandler{Handler: h.Handler.WithAttrs(attrs), skip: h.skip}
}

func (h *sdkLogHandler) WithGroup(name string) slog.Handler {
	return &sdkLogHandler{Handler: h.Handler.WithGroup(name), skip: h.skip}
}
