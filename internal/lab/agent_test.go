package lab

import (
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
)

// fakeBinary writes a shell script that stands in for the cachemachine binary: it prints its
// arguments, then runs body.
func fakeBinary(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cachemachine")
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\necho \"args: $*\"\n"+body+"\n"), 0o755))
	return path
}

func TestAgentHarness(t *testing.T) {
	t.Parallel()
	var polls atomic.Int32
	status := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || polls.Add(1) < 3 {
			http.Error(w, "not joined yet", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(status.Close)

	dir := filepath.Join(t.TempDir(), "n1")
	cfg := AgentConfig(dir, "unix:///run/cri.sock")
	LoopbackCluster(&cfg, 7000, 8000, filepath.Join(dir, "gossip.key"), []string{"127.0.0.1:7001"})
	cfg.HTTP.Listen = strings.TrimPrefix(status.URL, "http://")
	a, err := StartAgent(AgentOptions{Binary: fakeBinary(t, "exec sleep 60"), Node: "n1", Dir: dir, Config: cfg, Args: []string{"--join", "x"}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Stop() })

	back, err := config.Load(a.ConfigPath())
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "state"), back.Agent.StateDir)
	require.Equal(t, []string{"127.0.0.1:7001"}, back.Cluster.Join)
	require.Equal(t, "127.0.0.1:7000", a.GossipAddr())
	require.NoError(t, a.WaitReady(t.Context(), 10*time.Second))
	require.GreaterOrEqual(t, polls.Load(), int32(3))
	require.Equal(t, "args: agent --config "+a.ConfigPath()+" --node-name n1 --join x\n", a.Log())
	require.NoError(t, a.ExitErr(), "running")

	require.NoError(t, a.Stop())
	require.True(t, a.Exited())
	require.NoError(t, a.Stop(), "stopping a stopped agent does nothing")
	require.NoError(t, a.Start())
	require.Eventually(t, func() bool { return a.Log() != "" }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 1, strings.Count(a.Log(), "args:"), "Log is the current run's output")
	b, err := os.ReadFile(a.LogPath())
	require.NoError(t, err)
	require.Equal(t, 2, strings.Count(string(b), "args:"), "the file keeps every run")
}

func TestAgentExitBeforeReady(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := AgentConfig(dir, "unix:///run/cri.sock")
	cfg.HTTP.Listen = "127.0.0.1:1"
	a, err := StartAgent(AgentOptions{Binary: fakeBinary(t, "echo 'bad config' >&2; exit 2"), Node: "n1", Dir: dir, Config: cfg})
	require.NoError(t, err)
	err = a.WaitReady(t.Context(), 10*time.Second)
	require.ErrorContains(t, err, "agent n1: exit status 2")
	require.ErrorContains(t, err, "bad config")
	require.Equal(t, err.Error(), a.ExitErr().Error())
	require.NoError(t, a.Stop())
}

func TestFreePort(t *testing.T) {
	t.Parallel()
	// Other tests take loopback ports meanwhile: a port is free at a moment, so the test
	// takes a fresh one for each check rather than asserting on one across time.
	port := Port(t)
	require.Positive(t, port)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	require.False(t, PortFree(l.Addr().(*net.TCPAddr).Port), "taken for TCP")
	u, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer u.Close()
	require.False(t, PortFree(u.LocalAddr().(*net.UDPAddr).Port), "taken for UDP")
}
