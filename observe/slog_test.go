package observe_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"testing/slogtest"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/dotmac/pgtrace/observe"
)

func TestLogHandlerSlogtest(t *testing.T) {
	var buf bytes.Buffer
	h := observe.NewLogHandler(slog.NewJSONHandler(&buf, nil))
	results := func() []map[string]any {
		var ms []map[string]any
		for _, line := range bytes.Split(buf.Bytes(), []byte{'\n'}) {
			if len(line) == 0 {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatal(err)
			}
			ms = append(ms, m)
		}
		return ms
	}
	if err := slogtest.TestHandler(h, results); err != nil {
		t.Error(err)
	}
}

func TestLogHandlerCorrelation(t *testing.T) {
	tel := newTelemetry(t)
	var buf bytes.Buffer
	log := slog.New(observe.NewLogHandler(slog.NewJSONHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	})))
	ctx, span := tel.tp.Tracer("test").Start(context.Background(), "op")
	ctx = observe.ContextWithTenant(ctx, "acme")
	ctx = observe.ContextWithRequestID(ctx, "req-1")
	log.With("a", 1).WithGroup("g").With("b", 2).InfoContext(ctx, "hello", "c", 3)
	span.End()

	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	sc := span.SpanContext()
	want := map[string]any{
		"level": "INFO", "msg": "hello", "a": 1.0,
		"trace_id": sc.TraceID().String(), "span_id": sc.SpanID().String(),
		"tenant.id": "acme", "request.id": "req-1",
		"g": map[string]any{"b": 2.0, "c": 3.0},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("record (-want +got):\n%s", diff)
	}
}

type codedError struct{ code string }

func (e *codedError) Error() string { return "failed with " + e.code }

func TestLogHandlerErrorMarksSpan(t *testing.T) {
	tel := newTelemetry(t)
	log := slog.New(observe.NewLogHandler(slog.NewJSONHandler(&bytes.Buffer{}, nil)))
	for _, tc := range []struct {
		name     string
		log      func(context.Context)
		wantCode codes.Code
		wantDesc string
		wantType string
	}{
		{"error with error attr", func(ctx context.Context) {
			log.ErrorContext(ctx, "charge failed", "error", fmt.Errorf("charge: %w", &codedError{"E42"}))
		}, codes.Error, "charge: failed with E42", "*observe_test.codedError"},
		{"error with string error attr", func(ctx context.Context) {
			log.ErrorContext(ctx, "charge failed", "error", "boom")
		}, codes.Error, "charge failed", "_OTHER"},
		{"error without error attr", func(ctx context.Context) {
			log.ErrorContext(ctx, "charge failed")
		}, codes.Unset, "", ""},
		{"warn with error attr", func(ctx context.Context) {
			log.WarnContext(ctx, "retrying", "error", errors.New("x"))
		}, codes.Unset, "", ""},
		{"error attr given to the logger", func(ctx context.Context) {
			log.With("error", errors.New("lost the order")).WithGroup("g").ErrorContext(ctx, "charge failed", "n", 1)
		}, codes.Error, "lost the order", "*errors.errorString"},
		{"the record's error attr wins", func(ctx context.Context) {
			log.With("error", errors.New("older")).ErrorContext(ctx, "charge failed", "error", errors.New("newer"))
		}, codes.Error, "newer", "*errors.errorString"},
		{"error attr in a group does not count", func(ctx context.Context) {
			log.WithGroup("g").With("error", errors.New("x")).ErrorContext(ctx, "charge failed")
		}, codes.Unset, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, span := tel.tp.Tracer("test").Start(context.Background(), tc.name)
			tc.log(ctx)
			span.End()
			s := tel.spans.Ended()[len(tel.spans.Ended())-1]
			if s.Status().Code != tc.wantCode || s.Status().Description != tc.wantDesc {
				t.Errorf("status %v, want %v %q", s.Status(), tc.wantCode, tc.wantDesc)
			}
			v, _ := spanAttr(s, attribute.Key("error.type"))
			if v.AsString() != tc.wantType {
				t.Errorf("error.type %q, want %q", v.AsString(), tc.wantType)
			}
		})
	}
}
