package actors

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
)

// TestRequestLineIsLogAttrsLine: RequestLine writes what Logger.LogAttrs writes, with the
// logger's own attributes, on the text and the JSON handler (the time left out to compare).
func TestRequestLineIsLogAttrsLine(t *testing.T) {
	noTime := &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}
	attrs := []slog.Attr{slog.Int("pkg_id", 1), slog.String("req_id", "a b\"c"), slog.Float64("duration_ms", 0.25)}
	for name, mk := range map[string]func(*bytes.Buffer) slog.Handler{
		"text": func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, noTime) },
		"json": func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, noTime) },
	} {
		var want, got bytes.Buffer
		slog.New(mk(&want)).With("lib", "x").LogAttrs(context.Background(), slog.LevelInfo, "ws request", attrs...)
		RequestLine(context.Background(), slog.New(mk(&got)).With("lib", "x"), slog.LevelInfo, "ws request", attrs...)
		if got.String() != want.String() {
			t.Errorf("%s: got %q, want %q", name, got.String(), want.String())
		}
	}
}
