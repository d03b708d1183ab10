package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachemachine/cachemachine/image"
	"github.com/stretchr/testify/require"
)

// startDebug runs an agent over rt and its debug socket; it returns the socket path.
func startDebug(t *testing.T, rt Runtime, opts DebugOptions) (*Agent, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	a, err := New(Config{Node: "n1", ResyncInterval: 50 * time.Millisecond}, rt, nil, nil)
	require.NoError(t, err)
	path := filepath.Join(dir, "run", "agent.sock")
	s, err := NewDebugServer(path, a, opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 2)
	go func() { done <- a.Run(ctx) }()
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		require.NoError(t, <-done)
		require.NoError(t, s.Close())
	})
	return a, path
}

func TestDebugSocketIsRootOnly(t *testing.T) {
	t.Parallel()
	_, path := startDebug(t, newMemRuntime(), DebugOptions{})
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	fi, err = os.Stat(filepath.Dir(path))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
}

func TestDebugCommands(t *testing.T) {
	t.Parallel()
	rt := newMemRuntime()
	const ref = "ghcr.io/lsst/lab:w_2024_01"
	rt.remote[ref] = digestA
	var refreshed atomic.Int32
	a, path := startDebug(t, rt, DebugOptions{Refresh: func(context.Context) error { refreshed.Add(1); return nil }})
	a.SetDesired(Desired{Version: 3, Images: []image.Image{{Ref: image.MustParseRef("ghcr.io/lsst/lab:missing"), Name: "Missing one"}}})

	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := RunDebug(t.Context(), path, args, false, &out)
		return out.String(), err
	}
	out, err := run("pull", ref)
	require.NoError(t, err)
	require.Contains(t, out, digestA)
	require.Equal(t, 1, rt.pullCount(ref))

	out, err = run("pull", "ghcr.io/lsst/lab:nope")
	require.ErrorContains(t, err, "not found")
	require.Empty(t, out)

	out, err = run("desired")
	require.NoError(t, err)
	require.Contains(t, out, "Missing one")
	require.Contains(t, out, "version:")

	out, err = run("reconcile")
	require.NoError(t, err)
	require.Contains(t, out, "reconcile triggered")
	require.Equal(t, int32(1), refreshed.Load())

	out, err = run("cluster")
	require.NoError(t, err)
	require.Contains(t, out, "disabled (standalone agent)")

	var buf bytes.Buffer
	require.Eventually(t, func() bool {
		buf.Reset()
		require.NoError(t, RunDebug(t.Context(), path, []string{"node"}, true, &buf))
		var v NodeView
		require.NoError(t, json.Unmarshal(buf.Bytes(), &v))
		return v.Ready && strings.Contains(buf.String(), ref)
	}, 10*time.Second, 20*time.Millisecond, "the manual pull shows in the inventory")

	for _, bad := range [][]string{{}, {"nodes"}, {"pull"}, {"node", "extra"}} {
		_, err := run(bad...)
		require.True(t, errors.Is(err, ErrUsage), "%v: %v", bad, err)
	}
	_, err = run("pull", "Not A Ref")
	require.ErrorContains(t, err, "invalid")
}
