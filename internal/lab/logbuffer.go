package lab

import (
	"strings"
	"sync"
)

// LogBuffer is an in-memory log sink for slog handlers and log.Loggers that tests read while
// the code under test still writes: Write and String are safe for concurrent use. It is the
// one such buffer of the tests (agent, registry, coordinator and coordinatortest use it).
type LogBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

// Write implements io.Writer; it never fails.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
