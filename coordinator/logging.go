package coordinator

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
)

// memberlistLogger returns the *log.Logger memberlist wants, writing to logger.
func memberlistLogger(logger *slog.Logger) *log.Logger {
	return log.New(logWriter{logger}, "", 0)
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: msg") into slog records at the
// matching level. log.Logger calls Write once per line and serializes the calls.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimRight(p, "\r\n"))
	level := slog.LevelInfo
	if rest, ok := strings.CutPrefix(line, "["); ok {
		if tag, msg, ok := strings.Cut(rest, "]"); ok {
			switch tag {
			case "TRACE", "DEBUG":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN", "WARNING":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			line = strings.TrimSpace(msg)
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	// memberlist logs "Err: ..." without a bracketed level in a few places.
	if strings.HasPrefix(line, "Err: ") {
		level = slog.LevelError
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}
