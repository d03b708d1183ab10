package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cachemachine/cachemachine/image"
	"github.com/stretchr/testify/require"
)

// startDebug runs an agent over rt and its debug socket; it returns the socket path.
func startDebug(t *testing.T, rt Runtime, opts DebugOptions) (*Agent, string) {
	t.Helper()
	path := filepath.Join(tempDir(t), "run", "agent.sock")
	a, _ := startDebugAt(t, rt, path, opts)
	return a, path
}

// tempDir is a fresh directory short enough for unix socket paths, removed at the end.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startDebugAt runs an agent over rt and its debug socket at path until the test ends.
func startDebugAt(t *testing.T, rt Runtime, path string, opts DebugOptions) (*Agent, *DebugServer) {
	t.Helper()
	a, err := New(Config{Node: "n1", ResyncInterval: 50 * time.Millisecond}, rt, nil, nil)
	require.NoError(t, err)
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
	return a, s
}

// answers reports whether a debug server answers on path.
func answers(t *testing.T, path string) bool {
	t.Helper()
	return RunDebug(t.Context(), path, []string{"cluster"}, true, io.Discard) == nil
}

// staleSocket leaves at path a socket nobody listens on, as a crashed agent does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, ln.Close())
	fi, err := os.Lstat(path)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket, fi.Mode().Type())
}

func TestDebugSocketIsRootOnly(t *testing.T) {
	t.Parallel()
	_, path := startDebug(t, newRuntime(), DebugOptions{})
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	fi, err = os.Stat(filepath.Dir(path))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
}

func TestDebugCommands(t *testing.T) {
	t.Parallel()
	rt := newRuntime()
	const ref = "ghcr.io/lsst/lab:w_2024_01"
	rt.AddRemote(ref, digestA, 100)
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
	require.Equal(t, 1, pullCount(rt, ref))

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

func TestDebugSocketLeavesAnExistingSharedDirAsItIs(t *testing.T) {
	t.Parallel()
	dir := tempDir(t)
	const shared = os.ModeSticky | 0o777 // like /tmp
	require.NoError(t, os.Chmod(dir, shared))
	path := filepath.Join(dir, "agent.sock")

	a, err := New(Config{Node: "n1"}, newRuntime(), nil, nil)
	require.NoError(t, err)
	s, err := NewDebugServer(path, a, DebugOptions{})
	require.NoError(t, err)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, shared, fi.Mode()&(os.ModePerm|os.ModeSticky), "the directory's mode after start")
	fi, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "the socket alone keeps it root-only")

	require.NoError(t, s.Close())
	fi, err = os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, shared, fi.Mode()&(os.ModePerm|os.ModeSticky), "the directory's mode after stop")
	_, err = os.Lstat(path)
	require.ErrorIs(t, err, os.ErrNotExist, "its own socket is removed")
}

func TestDebugSocketNeverReplacesWhatIsNotASocket(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		create func(t *testing.T, path string)
	}{
		{name: "regular file", create: func(t *testing.T, path string) {
			require.NoError(t, os.WriteFile(path, []byte("precious"), 0o644))
		}},
		{name: "directory", create: func(t *testing.T, path string) {
			require.NoError(t, os.Mkdir(path, 0o755))
		}},
		{name: "symlink to a stale socket", create: func(t *testing.T, path string) {
			staleSocket(t, path+".real")
			require.NoError(t, os.Symlink(path+".real", path))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(tempDir(t), "agent.sock")
			tt.create(t, path)
			before, err := os.Lstat(path)
			require.NoError(t, err)

			a, err := New(Config{Node: "n1"}, newRuntime(), nil, nil)
			require.NoError(t, err)
			_, err = NewDebugServer(path, a, DebugOptions{})
			require.ErrorContains(t, err, path)
			require.ErrorContains(t, err, "not a socket")

			after, err := os.Lstat(path)
			require.NoError(t, err, "it is still there")
			require.True(t, os.SameFile(before, after), "it is the same file")
			require.Equal(t, before.Mode(), after.Mode())
		})
	}
	t.Run("content kept", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(tempDir(t), "agent.sock")
		require.NoError(t, os.WriteFile(path, []byte("precious"), 0o644))
		a, err := New(Config{Node: "n1"}, newRuntime(), nil, nil)
		require.NoError(t, err)
		_, err = NewDebugServer(path, a, DebugOptions{})
		require.Error(t, err)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, "precious", string(b))
	})
}

func TestDebugSocketRefusesOneALiveAgentAnswersOn(t *testing.T) {
	t.Parallel()
	path := filepath.Join(tempDir(t), "agent.sock")
	startDebugAt(t, newRuntime(), path, DebugOptions{})
	first, err := os.Lstat(path)
	require.NoError(t, err)

	a, err := New(Config{Node: "n2"}, newRuntime(), nil, nil)
	require.NoError(t, err)
	_, err = NewDebugServer(path, a, DebugOptions{})
	require.ErrorIs(t, err, ErrDebugSocketInUse)
	require.ErrorContains(t, err, path)

	now, err := os.Lstat(path)
	require.NoError(t, err)
	require.True(t, os.SameFile(first, now), "the first agent's socket is still in place")
	require.True(t, answers(t, path), "and the first agent still answers on it")
}

func TestDebugSocketReplacesAStaleSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(tempDir(t), "agent.sock")
	staleSocket(t, path)
	require.False(t, answers(t, path))
	startDebugAt(t, newRuntime(), path, DebugOptions{})
	require.True(t, answers(t, path))
}

func TestDebugServerCloseLeavesASocketItDoesNotOwn(t *testing.T) {
	t.Parallel()
	path := filepath.Join(tempDir(t), "agent.sock")
	a, err := New(Config{Node: "n1"}, newRuntime(), nil, nil)
	require.NoError(t, err)
	first, err := NewDebugServer(path, a, DebugOptions{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()

	// The first agent's socket is removed by hand and a second agent takes the path.
	require.NoError(t, os.Remove(path))
	startDebugAt(t, newRuntime(), path, DebugOptions{})
	require.True(t, answers(t, path))

	cancel() // the first agent stops
	require.NoError(t, <-done)
	require.NoError(t, first.Close())
	require.True(t, answers(t, path), "the second agent's socket is still there")
}

func TestListenPrivateCreatesTheSocketMode0600(t *testing.T) {
	t.Parallel()
	path := filepath.Join(tempDir(t), "agent.sock")
	ln, err := listenPrivate(path)
	require.NoError(t, err)
	defer ln.Close()
	fi, err := os.Lstat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "no window in which others may connect")
}

func TestDebugClientHintFitsTheFailure(t *testing.T) {
	t.Parallel()
	const running = "is the agent running"
	const rootOnly = "reachable only by root"
	dir := tempDir(t)
	stale := filepath.Join(dir, "stale.sock")
	staleSocket(t, stale)
	type hintCase struct {
		name      string
		socket    string
		err       error // nil: the real error of connecting to socket
		want, not string
	}
	tests := []hintCase{
		{name: "missing socket", socket: filepath.Join(dir, "nope.sock"), want: running, not: rootOnly},
		{name: "stale socket", socket: stale, want: running, not: rootOnly},
		// As root these cannot happen for real; the errors are the ones os.Stat and the HTTP
		// client return for a user who may not enter the socket's directory or open the socket.
		{name: "stat permission denied", socket: "/run/cachemachine/agent.sock",
			err:  &fs.PathError{Op: "stat", Path: "/run/cachemachine/agent.sock", Err: syscall.EACCES},
			want: rootOnly, not: running},
		{name: "connect permission denied", socket: "/run/cachemachine/agent.sock",
			err: &url.Error{Op: "Get", URL: "http://agent/v1/node", Err: &net.OpError{
				Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}},
			want: rootOnly, not: running},
		{name: "connect not permitted", socket: "/run/cachemachine/agent.sock",
			err: &url.Error{Op: "Get", URL: "http://agent/v1/node", Err: &net.OpError{
				Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EPERM)}},
			want: rootOnly, not: running},
	}
	if os.Geteuid() != 0 {
		// Not root: a socket its owner may not write to is a real permission denied.
		locked := filepath.Join(dir, "locked.sock")
		ln, err := net.Listen("unix", locked)
		require.NoError(t, err)
		t.Cleanup(func() { ln.Close() })
		require.NoError(t, os.Chmod(locked, 0))
		tests = append(tests, hintCase{name: "real permission denied", socket: locked, want: rootOnly, not: running})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var err error
			if tt.err != nil {
				err = reachError(tt.socket, tt.err)
			} else {
				err = RunDebug(t.Context(), tt.socket, []string{"node"}, false, io.Discard)
			}
			require.ErrorContains(t, err, tt.socket)
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), tt.not)
		})
	}
}

// TestDebugClusterShowsWarming: `debug cluster` marks the members the leader package lists as
// warming.
func TestDebugClusterShowsWarming(t *testing.T) {
	t.Parallel()
	until := time.Now().Add(5 * time.Minute)
	_, path := startDebug(t, newRuntime(), DebugOptions{Cluster: func() any {
		return map[string]any{
			"node": "n1", "ready": true, "leader": "n1",
			"members": []map[string]any{{"name": "n1", "state": "alive", "leader": true}, {"name": "n4", "state": "alive"}},
			"warming": []map[string]any{{"name": "n4", "until": until, "missing": []string{"ghcr.io/lsst/lab:w_2024_02", "ghcr.io/lsst/lab:w_2024_01"}}},
		}
	}})
	var out bytes.Buffer
	require.NoError(t, RunDebug(t.Context(), path, []string{"cluster"}, false, &out))
	require.Contains(t, out.String(), "WARMING")
	require.Regexp(t, `n4 .* yes: 2 missing, counts by `+until.Local().Format(time.TimeOnly)+` at the latest`, out.String())
	require.Regexp(t, `n1 .*leader.* -\n`, out.String())
	require.Contains(t, out.String(), "left out of common_cache")
}
