package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxSocketPath is the longest unix socket path Linux accepts (sun_path is 108 bytes with NUL).
const maxSocketPath = 107

// ContainerdOptions configures StartContainerd. The zero value is valid.
type ContainerdOptions struct {
	// Dir is the state root for this instance (config, root, state, sockets, log). Default: a
	// fresh os.MkdirTemp("", "cm"), removed by Close. Keep it short: unix socket paths must stay
	// under 108 bytes.
	Dir string
	// Mirrors maps a registry host name (for example "us-central1-docker.pkg.dev" or "docker.io")
	// to a plain-HTTP registry "127.0.0.1:PORT" (or a full "http://…" URL), written as
	// certs.d/<host>/hosts.toml, so images named after that host are pulled from it.
	Mirrors map[string]string
	// Snapshotter is the CRI snapshotter. Default "overlayfs".
	Snapshotter string
	// Stdout receives containerd's log. Default: the file containerd.log in Dir, appended to
	// across restarts.
	Stdout io.Writer
}

// Containerd is one containerd daemon running as a child process, with its CRI plugin serving on
// Socket. Create it with StartContainerd or NewContainerd, release it with Close.
type Containerd struct {
	// Dir is the instance's state root.
	Dir string
	// Socket is the path of containerd's gRPC (and CRI) unix socket.
	Socket string

	bin         string
	configPath  string
	snapshotter string
	ownDir      bool      // Dir was created by StartContainerd and is removed by Close
	out         io.Writer // log destination
	logFile     *os.File  // non-nil when out is the default log file

	mu     sync.Mutex  // guards the fields below
	proc   *Process    // running process, nil when stopped
	tail   *tailBuffer // output of the current or last run
	closed bool
}

// StartContainerd writes a config under opts.Dir, starts `containerd --config` as a child process
// and waits (at most ~20 s, and while ctx lasts) until its CRI RuntimeService answers Version. On
// failure nothing is left running, and the error includes the tail of containerd's log.
func StartContainerd(ctx context.Context, opts ContainerdOptions) (*Containerd, error) {
	bin, err := lookPath("containerd")
	if err != nil {
		return nil, err
	}
	c := &Containerd{bin: bin, snapshotter: opts.Snapshotter}
	if c.snapshotter == "" {
		c.snapshotter = "overlayfs"
	}
	if opts.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "cm"); err != nil {
			return nil, fmt.Errorf("start containerd: %w", err)
		}
		c.ownDir = true
	} else {
		if c.Dir, err = filepath.Abs(opts.Dir); err != nil {
			return nil, fmt.Errorf("start containerd: %w", err)
		}
	}
	started := false
	defer func() {
		if !started {
			_ = c.Close()
		}
	}()
	c.Socket = filepath.Join(c.Dir, "containerd.sock")
	if len(c.Socket)+len(".ttrpc") > maxSocketPath {
		return nil, fmt.Errorf("start containerd: socket path %s.ttrpc is longer than %d bytes; use a shorter Dir", c.Socket, maxSocketPath)
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	c.configPath = filepath.Join(c.Dir, "config.toml")
	if err := c.writeConfig(opts.Mirrors); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	if c.out, c.logFile, err = openLog(opts.Stdout, filepath.Join(c.Dir, "containerd.log")); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	if err := c.start(ctx); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	started = true
	return c, nil
}

// NewContainerd is StartContainerd for tests: it calls Require(t), skips (fails under CI=true)
// when not running as root, registers Close with t.Cleanup and fails t on error.
func NewContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	Require(t)
	if os.Geteuid() != 0 {
		skipOrFail(t, "lab: containerd needs root (overlayfs mounts)")
	}
	c, err := StartContainerd(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close containerd: %v", err)
		}
	})
	return c
}

// Endpoint returns the CRI endpoint, "unix://" + Socket.
func (c *Containerd) Endpoint() string { return "unix://" + c.Socket }

// ImageFsDir returns the snapshotter directory, the image filesystem CRI ImageFsInfo reports; its
// statfs gives the capacity.
func (c *Containerd) ImageFsDir() string {
	return filepath.Join(c.Dir, "root", "io.containerd.snapshotter.v1."+c.snapshotter)
}

// Stop sends SIGTERM and waits for containerd to exit, sending SIGKILL after 10 s. Stopping a
// stopped instance does nothing. It errors when containerd had already died on its own or
// ignored SIGTERM; it is stopped either way.
func (c *Containerd) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil
	}
	err := c.proc.Stop(stopGrace)
	c.proc = nil
	if err != nil {
		return withTail(fmt.Errorf("stop containerd: %w", err), c.tail)
	}
	return nil
}

// Kill sends SIGKILL and waits for containerd to exit, simulating a crash. Killing a stopped
// instance does nothing.
func (c *Containerd) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		c.proc.Kill()
		c.proc = nil
	}
	return nil
}

// Restart starts containerd again on the same root and config after Stop or Kill, and waits until
// it is ready as StartContainerd does. It fails when containerd is running or closed.
func (c *Containerd) Restart(ctx context.Context) error {
	if err := c.start(ctx); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	return nil
}

// Close stops containerd if it runs and, when StartContainerd created Dir, unmounts anything left
// mounted under it and removes it. Close is idempotent.
func (c *Containerd) Close() error {
	c.mu.Lock()
	closed := c.closed
	c.closed = true
	c.mu.Unlock()
	if closed {
		return nil
	}
	errs := []error{c.Stop()}
	if c.logFile != nil {
		errs = append(errs, c.logFile.Close())
	}
	if c.ownDir {
		if err := unmountUnder(c.Dir); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", c.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// start launches the process and waits for CRI to answer; on failure it kills the process.
func (c *Containerd) start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("closed")
	}
	if c.proc != nil {
		return errors.New("already running")
	}
	c.tail = newTail()
	p, err := StartProcess(c.bin, []string{"--config", c.configPath}, io.MultiWriter(c.out, c.tail))
	if err != nil {
		return err
	}
	if err := c.waitReady(ctx, p); err != nil {
		p.Kill()
		return withTail(err, c.tail)
	}
	c.proc = p
	return nil
}

// waitReady polls RuntimeService.Version: the socket appears before the CRI plugin answers.
func (c *Containerd) waitReady(ctx context.Context, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	// gRPC's default reconnect backoff starts at 1 s; the socket appears within ~0.1 s.
	conn, err := grpc.NewClient(c.Endpoint(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: pollInterval, Multiplier: 1, MaxDelay: pollInterval},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	return waitProcOr(ctx, p, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := rt.Version(ctx, &runtimeapi.VersionRequest{})
		if status.Code(err) == codes.Unimplemented {
			// containerd registers every gRPC service before it serves: the CRI plugin failed
			// to load (its log says why), and waiting will not change that.
			return permanentError{fmt.Errorf("containerd serves no CRI: %w", err)}
		}
		return err
	})
}

// writeConfig writes config.toml and one certs.d/<host>/hosts.toml per mirror.
func (c *Containerd) writeConfig(mirrors map[string]string) error {
	certsDir := filepath.Join(c.Dir, "certs.d")
	if err := os.MkdirAll(certsDir, 0o755); err != nil {
		return err
	}
	hosts := make([]string, 0, len(mirrors))
	for h := range mirrors {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, host := range hosts {
		if host == "" || strings.ContainsAny(host, `/\`) {
			return fmt.Errorf("mirror host %q: want a bare host name", host)
		}
		url := mirrors[host]
		if !strings.Contains(url, "://") {
			url = "http://" + url
		}
		// A hosts.toml with only `server` is rejected as an invalid host tree and containerd
		// silently falls back to https://<host>: the [host] table is required.
		hostsToml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", url, url)
		dir := filepath.Join(certsDir, host)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hostsToml), 0o644); err != nil {
			return err
		}
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %q
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    stats_collect_period = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = %q
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = %q
`,
		filepath.Join(c.Dir, "root"),
		filepath.Join(c.Dir, "state"),
		c.Socket,
		c.Socket+".ttrpc",
		filepath.Join(c.Dir, "opt"),
		c.snapshotter,
		certsDir,
	)
	return os.WriteFile(c.configPath, []byte(cfg), 0o644)
}
