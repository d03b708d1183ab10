package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
)

// TestAgentExitsWithStatus2OnABadFileTheConfigNames checks that a missing or malformed
// dockerconfig or gossip key file is a configuration error like any other: status 2 and one
// plain line on stderr naming the setting, the file and the problem, and never the secret.
func TestAgentExitsWithStatus2OnABadFileTheConfigNames(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-Sup3r"
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name     string
		settings string // FILE stands for the file's path
		content  *string
		want     []string
	}{
		{
			name:     "dockerconfig missing",
			settings: "agent:\n  pull_auth: dockerconfig\n  dockerconfig: FILE\ncluster:\n  enabled: false\n",
			want:     []string{"agent.dockerconfig", "no such file or directory"},
		},
		{
			name:     "dockerconfig not JSON",
			settings: "agent:\n  pull_auth: dockerconfig\n  dockerconfig: FILE\ncluster:\n  enabled: false\n",
			content:  ptr(`{"auths": {"ghcr.io": {"password": ` + secret + `}}}`),
			want:     []string{"agent.dockerconfig", "not valid JSON"},
		},
		{
			name:     "dockerconfig entry without a colon",
			settings: "agent:\n  pull_auth: dockerconfig\n  dockerconfig: FILE\ncluster:\n  enabled: false\n",
			content:  ptr(`{"auths": {"ghcr.io": {"auth": "` + b64(secret) + `"}}}`),
			want:     []string{"agent.dockerconfig", `auths["ghcr.io"]`, "no ':'"},
		},
		{
			name:     "gossip key missing",
			settings: "cluster:\n  gossip_key_file: FILE\n",
			want:     []string{"cluster.gossip_key_file", "no such file or directory"},
		},
		{
			name:     "gossip key not base64",
			settings: "cluster:\n  gossip_key_file: FILE\n",
			content:  ptr(secret + "!!"),
			want:     []string{"cluster.gossip_key_file", "not valid base64"},
		},
		{
			name:     "gossip key too short",
			settings: "cluster:\n  gossip_key_file: FILE\n",
			content:  ptr(b64("short")),
			want:     []string{"cluster.gossip_key_file", "key is 5 bytes, must be 16, 24 or 32"},
		},
		{
			name:     "notifications token missing",
			settings: "cluster:\n  enabled: false\nhttp:\n  listen: 127.0.0.1:0\n  notifications_token_file: FILE\n",
			want:     []string{"http.notifications_token_file", "no such file or directory"},
		},
		{
			name:     "notifications token empty",
			settings: "cluster:\n  enabled: false\nhttp:\n  listen: 127.0.0.1:0\n  notifications_token_file: FILE\n",
			content:  ptr(" \n"),
			want:     []string{"http.notifications_token_file", "is empty"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			file := filepath.Join(dir, "secret-file")
			if tt.content != nil {
				require.NoError(t, os.WriteFile(file, []byte(*tt.content), 0o600))
			}
			cfgPath := filepath.Join(dir, "config.yaml")
			cfg := strings.ReplaceAll(tt.settings, "FILE", file)
			if !strings.Contains(cfg, "http:") {
				cfg += "http:\n  listen: 127.0.0.1:0\n"
			}
			require.NoError(t, os.WriteFile(cfgPath, []byte(cfg), 0o600))

			var stdout, stderr bytes.Buffer
			code := realMain([]string{"agent", "--config", cfgPath, "--node-name", "n1",
				"--cri-socket", "unix://" + filepath.Join(dir, "absent.sock"),
				"--state-dir", filepath.Join(dir, "state"), "--debug-socket", filepath.Join(dir, "agent.sock")}, &stdout, &stderr)
			out := stderr.String()
			require.Equal(t, exitUsage, code, out)
			require.Equal(t, 1, strings.Count(out, "\n"), "one line: %q", out)
			require.False(t, json.Valid([]byte(out)), "a plain line, not a log record: %q", out)
			require.Contains(t, out, file)
			for _, w := range tt.want {
				require.Contains(t, out, w)
			}
			require.NotContains(t, out, secret)
			require.NotContains(t, out, b64(secret))
			require.Empty(t, stdout.String())
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestOneDockerconfigForPullsAndListings checks the wiring: the credentials the agent pulls
// with and the keychain the sources list with are the same object, so a re-read serves both.
func TestOneDockerconfigForPullsAndListings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, ".dockerconfigjson")
	require.NoError(t, os.WriteFile(path, []byte(`{"auths": {"ghcr.io": {"username": "u", "password": "p"}}}`), 0o600))
	cfgPath := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(cfgPath, []byte("agent:\n  pull_auth: dockerconfig\n  dockerconfig: "+path+"\ncluster:\n  enabled: false\n"), 0o600))
	cfg, err := config.Load(cfgPath)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())

	f, err := loadFiles(cfg, slog.New(slog.DiscardHandler), nil)
	require.NoError(t, err)
	require.NotNil(t, f.dockerconfig)
	creds, err := pullCredentials(t.Context(), cfg, f)
	require.NoError(t, err)
	require.Same(t, f.dockerconfig, creds)
	require.Same(t, f.dockerconfig, f.keychain())

	cfg.Agent.PullAuth = config.PullAuthNone
	f, err = loadFiles(cfg, slog.New(slog.DiscardHandler), nil)
	require.NoError(t, err)
	require.Nil(t, f.keychain(), "anonymous listing: a nil interface, not a typed nil")
}
