package actors

import (
	"context"
	"log/slog"
	"time"
)

// RequestLine writes a per-request log line (a WebSocket request's, an HTTP call's access line)
// at level with attrs, as Logger.LogAttrs writes it, but without the caller's program counter:
// LogAttrs takes it with runtime.Callers on every line, whether the handler shows the source
// or not, and that stack walk was about 4k instructions a line, a quarter of the line's cost
// (callgrind, docs/performance.md "Round four"). The server's handlers are built without
// AddSource (cmd/switchboard newLogger), so the line is the same; a handler that has it shows
// no source for these lines. The caller checks Enabled first.
func RequestLine(ctx context.Context, l *slog.Logger, level slog.Level, msg string, attrs ...slog.Attr) {
	r := slog.NewRecord(time.Now(), level, msg, 0)
	r.AddAttrs(attrs...)
	_ = l.Handler().Handle(ctx, r)
}
