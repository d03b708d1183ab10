package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDebugSocketInASharedDirChangesNothingAroundItAndIsNotTakenOver runs the agent with its
// debug socket in a directory like /tmp (mode 1777): the directory is left as it is, and a
// second agent given the same socket path refuses to start instead of taking the socket over.
func TestDebugSocketInASharedDirChangesNothingAroundItAndIsNotTakenOver(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	shared, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(shared) })
	const sharedMode = os.ModeDir | os.ModeSticky | 0o777
	require.NoError(t, os.Chmod(shared, sharedMode))
	socket := filepath.Join(shared, "agent.sock")
	requireMode := func(when string) {
		t.Helper()
		fi, err := os.Stat(shared)
		require.NoError(t, err)
		require.Equal(t, sharedMode, fi.Mode(), "the shared directory's mode %s", when)
	}
	// An image nobody serves: the agent has something to work on, the test needs no registry.
	images := []string{"127.0.0.1:1/lsst/lab:w_2024_01"}

	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), images), "--debug-socket", socket)
	p.socket = socket
	eventually(t, 30*time.Second, "the debug socket to answer", func() bool {
		_, err := p.debug(t, "node")
		return err == nil
	})
	requireMode("after the agent started")
	fi, err := os.Lstat(socket)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket|0o600, fi.Mode(), "the socket alone is root-only")

	// A second agent, same socket path, its own state dir.
	dir2, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir2) })
	cfg2 := filepath.Join(dir2, "config.yaml")
	second := standalone(dir2, n.cd.Endpoint(), images)
	require.NoError(t, second.WriteFile(cfg2))
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "agent", "--config", cfg2, "--node-name", "node-b", "--debug-socket", socket).CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the second agent must not run: %s", out)
	require.NotEqual(t, 0, exit.ExitCode(), string(out))
	require.Contains(t, string(out), socket, "the error names the path")
	require.Contains(t, string(out), "in use by a running agent")

	fi2, err := os.Lstat(socket)
	require.NoError(t, err, "the first agent's socket is still there")
	require.True(t, os.SameFile(fi, fi2), "and it is the same socket")
	out2, err := p.debug(t, "node")
	require.NoError(t, err, "the first agent still answers: %s", out2)
	require.Contains(t, out2, "node-a")
	requireMode("after the second agent gave up")

	p.stop(t)
	requireMode("after the agent stopped")
	_, err = os.Lstat(socket)
	require.ErrorIs(t, err, os.ErrNotExist, "the agent removes its own socket when it stops")
}
