package coordinator

import (
	"bytes"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	secret := "c2VjcmV0LXNlY3JldC1zZWNyZXQ=" // base64 of 20 bytes: wrong length
	tests := []struct {
		name    string
		path    string
		wantLen int
		wantErr string
	}{
		{name: "16 bytes", path: write("k16", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 16))), wantLen: 16},
		{name: "24 bytes", path: write("k24", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 24))+"\n"), wantLen: 24},
		{name: "32 bytes, white space", path: write("k32", "  "+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))+"\n\n"), wantLen: 32},
		{name: "wrong length", path: write("k20", secret), wantErr: "k20: key is 20 bytes, must be 16, 24 or 32"},
		{name: "not base64", path: write("bad", "not*base64!"), wantErr: "bad: not valid base64"},
		{name: "missing", path: filepath.Join(dir, "missing"), wantErr: "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key, err := LoadKey(tt.path)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.NotContains(t, err.Error(), secret, "errors never show the key")
				require.NotContains(t, err.Error(), "not*base64!")
				return
			}
			require.NoError(t, err)
			require.Len(t, key, tt.wantLen)
		})
	}
}

func TestLogWriter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		line  string
		level string
		msg   string
	}{
		{line: "[DEBUG] memberlist: Stream connection from=1.2.3.4\n", level: "DEBUG", msg: "Stream connection from=1.2.3.4"},
		{line: "[INFO] memberlist: Suspect n2 has failed\n", level: "INFO", msg: "Suspect n2 has failed"},
		{line: "[WARN] memberlist: Refuting a suspect message\n", level: "WARN", msg: "Refuting a suspect message"},
		{line: "[ERR] memberlist: Failed to send\n", level: "ERROR", msg: "Failed to send"},
		{line: "[ERROR] memberlist: Failed to compress\n", level: "ERROR", msg: "Failed to compress"},
		{line: "Err: Could not set the deadline\n", level: "ERROR", msg: "Err: Could not set the deadline"},
		{line: "no prefix at all\n", level: "INFO", msg: "no prefix at all"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			l := memberlistLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
			l.Print(tt.line)
			out := buf.String()
			require.Contains(t, out, "level="+tt.level)
			require.Contains(t, out, "msg=\""+tt.msg+"\"")
			require.Equal(t, 1, strings.Count(out, "\n"))
		})
	}
}
