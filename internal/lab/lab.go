// Package lab starts real components for end-to-end tests, benchmarks and the demo: one
// containerd per simulated node and a real docker-registry, each as a child process of the
// caller, with all state under one directory per instance.
//
// The core API takes a context and returns errors so that a non-test program (the demo) can use
// it; NewContainerd and NewRegistry are thin testing.TB wrappers that skip when the binaries are
// missing and register cleanup. The types are safe for concurrent use, but their lifecycle
// methods (Stop, Start, Restart, Kill, Close) are meant to be called from one goroutine.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds how long a daemon may take to answer after it was started.
	readyTimeout = 20 * time.Second
	// stopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
	stopGrace = 10 * time.Second
	// pollInterval is the readiness polling period.
	pollInterval = 50 * time.Millisecond
	// tailSize is how much of a daemon's recent output is kept for error messages.
	tailSize = 4 << 10
)

// installHint tells a developer how to get the binaries the lab needs.
const installHint = "install them with `apt-get install -y --no-install-recommends containerd runc docker-registry` (make test installs them)"

// binaries lists the programs the lab runs (runc is only checked: containerd needs it to exist).
var binaries = []string{"containerd", "runc", "docker-registry"}

// Require skips t when containerd, runc or docker-registry are missing, unless CI=true in the
// environment, in which case it fails t with a message naming what is missing and how to install
// it (make test installs them).
func Require(t testing.TB) {
	t.Helper()
	var missing []string
	for _, b := range binaries {
		if _, err := lookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return
	}
	SkipOrFail(t, fmt.Sprintf("lab: missing %s; %s", strings.Join(missing, ", "), installHint))
}

// InCI reports whether the tests run in CI (CI set to a true value, as CI services do),
// where a real component that cannot start fails its test instead of skipping it.
func InCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// SkipOrFail skips t, or fails it in CI, where the environment must be complete.
func SkipOrFail(t testing.TB, msg string) {
	t.Helper()
	if InCI() {
		t.Fatal(msg + " (CI: the real component must run)")
	}
	t.Skip(msg)
}

// lookPath finds a binary in PATH or, since Debian puts runc in /usr/sbin which a non-root PATH
// may lack, in the usual system directories.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"} {
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH: %s", name, installHint)
}

// Process is one child process and the goroutine that waits for it. The goroutine is owned by
// Process: it ends when the process exits, and every stop path waits on done. The demo, the
// benchmarks and the end-to-end tests run the cachemachine binary with it too.
type Process struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed once Wait returned
	err    error         // Wait's result; read only after done is closed
	killed atomic.Bool   // Kill was called: the exit status is no news
}

// StartProcess starts path with args in its own process group (so Ctrl-C at a terminal reaches
// the parent first, which then stops its children in order), sending stdout and stderr to out.
func StartProcess(path string, args []string, out io.Writer) (*Process, error) {
	return StartProcessEnv(path, args, nil, out)
}

// StartProcessEnv is StartProcess with env ("KEY=value") added to this process's
// environment, e.g. PUBSUB_EMULATOR_HOST for an agent.
func StartProcessEnv(path string, args, env []string, out io.Writer) (*Process, error) {
	cmd := exec.Command(path, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = sysProcAttr()
	// A grandchild holding the output pipe must not block Wait forever.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit error (nil for status 0); valid once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has exited and been reaped.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs and waits. It returns an error only
// when the process had already exited on its own with a failure (not after Kill), or ignored
// SIGTERM.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		if p.err != nil && !p.killed.Load() {
			return fmt.Errorf("had exited on its own: %w", p.err)
		}
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // fails only if it exited meanwhile
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("ignored SIGTERM for %s, killed", grace)
}

// Kill sends SIGKILL (a crash, on purpose) and waits for the process.
func (p *Process) Kill() {
	p.killed.Store(true)
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}

// tailBuffer keeps the last max bytes written to it, for error messages.
type tailBuffer struct {
	mu  sync.Mutex // guards buf
	buf []byte
	max int
}

func newTail() *tailBuffer { return &tailBuffer{max: tailSize} }

// Write implements io.Writer; it never fails.
func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if n := len(t.buf); n > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[n-t.max:]...)
	}
	return len(p), nil
}

// String returns the kept output, starting at a line boundary when it was cut.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > t.max {
		b = b[len(b)-t.max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(bytes.TrimSpace(b))
}

// withTail appends a process's recent output to err.
func withTail(err error, t *tailBuffer) error {
	s := t.String()
	if s == "" {
		return err
	}
	return fmt.Errorf("%w\n--- last output ---\n%s", err, s)
}

// FreePort returns a loopback port that was free for TCP and UDP a moment ago (memberlist binds
// both). Another process may take it before the caller binds it; callers that can retry on
// "address already in use". It is the one free-port helper of the tests, the demo and the
// benchmarks.
func FreePort() (int, error) {
	for range 20 {
		if port, err := bindBoth(0); err == nil {
			return port, nil
		}
	}
	return 0, errors.New("free port: no loopback port free for both TCP and UDP")
}

// PortFree reports whether port is free on 127.0.0.1 for TCP and UDP at this moment.
func PortFree(port int) bool {
	_, err := bindBoth(port)
	return err == nil
}

// Port is FreePort for tests: it fails t when no port is free.
func Port(t testing.TB) int {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// bindBoth binds port (0: any) on 127.0.0.1 for TCP, then the same port for UDP, releases both
// and returns the port.
func bindBoth(port int) (int, error) {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	port = l.Addr().(*net.TCPAddr).Port
	u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	return port, u.Close()
}

// permanentError marks a readiness check failure that retrying cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// waitProcOr polls check every pollInterval until it succeeds, fails with a permanentError, p
// exits, or ctx ends.
func waitProcOr(ctx context.Context, p *Process, check func(context.Context) error) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return perm.error
		}
		select {
		case <-p.done:
			if p.err != nil {
				return fmt.Errorf("exited before ready: %w", p.err)
			}
			return errors.New("exited before ready")
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last check: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// openLog returns w, or when w is nil a file at path opened for appending (returned as well so the
// caller can close it).
func openLog(w io.Writer, path string) (io.Writer, *os.File, error) {
	if w != nil {
		return w, nil, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	return f, f, nil
}

// Sleep waits d, or until ctx ends: then it returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
