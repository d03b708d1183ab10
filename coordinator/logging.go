package coordinator

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// memberlistLogger returns the *log.Logger memberlist wants, writing to logger. With drops,
// memberlist's lines about input it rejected are counted and rate-limited there instead.
func memberlistLogger(logger *slog.Logger, drops *dropLog) *log.Logger {
	return log.New(logWriter{log: logger, drops: drops}, "", 0)
}

// logWriter turns memberlist's log lines ("[WARN] memberlist: msg") into slog records at the
// matching level. log.Logger calls Write once per line and serializes the calls.
type logWriter struct {
	log   *slog.Logger
	drops *dropLog // nil: every line is logged as is
}

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
	if w.drops != nil && level >= slog.LevelWarn {
		if reason, count, ok := classifyRejection(line); ok {
			msg, peer := splitFrom(line)
			if count {
				w.drops.reject(reason, msg, peer)
			} else {
				w.drops.note(reason, msg, peer)
			}
			return len(p), nil
		}
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}

// rejectionLines are the starts of memberlist's log lines (v0.7.0, net.go and
// net_transport.go) about inbound packets and streams it refused. memberlist has no hook for
// them, so the log adapter counts them. For the lines marked sub, the reason comes from the
// error the line quotes (see streamErrorReason).
var rejectionLines = []struct {
	prefix string
	reason string
	sub    bool
}{
	// Streams (handleConn). Most are stopped by the guard before memberlist sees them.
	{"failed to receive and remove the stream label header", reasonMalformed, false},
	{"unexpected double stream label header", reasonBadLabel, false},
	{"discarding stream with unacceptable label", reasonBadLabel, false},
	{"failed to receive:", "", true},
	{"Failed to receive user message:", "", true},
	{"Failed to read remote state:", "", true},
	{"Failed to decode ping:", reasonMalformed, false},
	{"Received invalid msgType", reasonMalformed, false},
	{"Too many pending push/pull requests", reasonTooManyStreams, false},
	// Packets (udpListen, ingestPacket, handleCommand and the handlers).
	{"UDP packet too short", reasonMalformed, false},
	{"cannot decode label", reasonMalformed, false},
	{"label header cannot be empty", reasonMalformed, false},
	{"unexpected double packet label header", reasonBadLabel, false},
	{"discarding packet with unacceptable label", reasonBadLabel, false},
	{"Decrypt packet failed:", reasonDecrypt, false},
	{"Got invalid checksum for UDP packet", reasonMalformed, false},
	{"missing message type byte", reasonMalformed, false},
	{"msg type (", reasonMalformed, false},
	{"Message type (", reasonMalformed, false},
	{"Failed to decode ", reasonMalformed, false},
	{"Failed to decompress payload", reasonMalformed, false},
}

// classifyRejection returns the drop reason of a memberlist log line about rejected input,
// and whether to count it (false: the guard has counted it already and the line is only
// rate-limited).
func classifyRejection(line string) (reason string, count, ok bool) {
	for _, l := range rejectionLines {
		if !strings.HasPrefix(line, l.prefix) {
			continue
		}
		if !l.sub {
			return l.reason, true, true
		}
		reason, count = streamErrorReason(line)
		return reason, count, true
	}
	// memberlist answers a stream it could not read with an error message; when the peer
	// is gone, that fails too. Part of the same rejection: rate-limited, not counted.
	if strings.HasPrefix(line, "Failed to send error:") {
		return "error_reply", false, true
	}
	return "", false, false
}

// streamErrorReason classifies the error quoted in a line about a stream memberlist could
// not read.
func streamErrorReason(line string) (string, bool) {
	switch {
	case strings.Contains(line, "i/o timeout"):
		return reasonStreamTimeout, false // counted by guardedConn
	case strings.Contains(line, errStreamTooLong.Error()):
		return reasonOversizedStream, false // counted by guardedConn
	case strings.Contains(line, "decrypt"), strings.Contains(line, "unsupported encryption version"):
		return reasonDecrypt, true
	case strings.Contains(line, "not encrypted"), strings.Contains(line, "encryption is not configured"):
		return reasonUnencrypted, true
	case strings.Contains(line, "larger than limit"), strings.Contains(line, "exceeds limit"):
		return reasonOversizedStream, true
	}
	return reasonMalformed, true
}

// splitFrom splits memberlist's " from=ip:port" suffix off a line.
func splitFrom(line string) (msg, peer string) {
	if i := strings.LastIndex(line, " from="); i >= 0 {
		return line[:i], line[i+len(" from="):]
	}
	return line, ""
}

// dropLogEvery is how often each reason is logged at most.
const dropLogEvery = 10 * time.Second

// dropLog counts rejected gossip input in cachemachine_gossip_dropped_total{reason} and logs
// it at most once per reason per dropLogEvery, with the number of rejections not logged since
// the previous line: garbage on the gossip port must not flood the log. Safe for concurrent
// use; it never blocks on anything but its own mutex.
type dropLog struct {
	log     *slog.Logger
	dropped *prometheus.CounterVec

	mu      sync.Mutex // guards windows
	windows map[string]*dropWindow
}

type dropWindow struct {
	logged     time.Time // when the reason was last logged
	suppressed int       // rejections since then that were not
}

func newDropLog(logger *slog.Logger, dropped *prometheus.CounterVec) *dropLog {
	return &dropLog{log: logger, dropped: dropped, windows: map[string]*dropWindow{}}
}

// reject counts one rejection and logs it unless the reason was logged recently.
func (d *dropLog) reject(reason, detail, peer string) {
	d.dropped.WithLabelValues(reason).Inc()
	d.note(reason, detail, peer)
}

// note logs a rejection (counted elsewhere) unless the reason was logged recently.
func (d *dropLog) note(reason, detail, peer string) {
	now := time.Now()
	d.mu.Lock()
	w := d.windows[reason]
	if w == nil {
		w = &dropWindow{}
		d.windows[reason] = w
	} else if now.Sub(w.logged) < dropLogEvery {
		w.suppressed++
		d.mu.Unlock()
		return
	}
	suppressed := w.suppressed
	w.logged, w.suppressed = now, 0
	d.mu.Unlock()
	args := []any{"reason", reason, "err", detail}
	if peer != "" {
		args = append(args, "peer", peer)
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	d.log.Warn("gossip input rejected", args...)
}
