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

// ContainerdOptions configures StartContainerd. The zero value is valid: Debian's containerd 1.6.
type ContainerdOptions struct {
	// Version selects the containerd to run (ContainerdVersions). Default Containerd16.
	Version ContainerdVersion
	// Binary, when set, is the containerd binary to run instead of Version's. The config format
	// (version 2 for containerd 1.x, version 3 for 2.x) follows what the binary reports.
	Binary string
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
	version     string // as the binary reports it: "1.6.20~ds1", "v2.4.2"
	major       int    // of version: picks the config format
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
	bin := opts.Binary
	var err error
	if bin == "" {
		if bin, err = opts.Version.Binary(); err != nil {
			return nil, fmt.Errorf("start containerd: %w", err)
		}
	}
	c := &Containerd{bin: bin, snapshotter: opts.Snapshotter}
	if c.version, c.major, err = binaryVersion(ctx, bin); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
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

// NewContainerd is StartContainerd for tests: it calls Require(t) (RequireContainerd for
// opts.Version unless opts.Binary is set), skips (fails under CI=true) when not running as root,
// registers Close with t.Cleanup and fails t on error.
func NewContainerd(t testing.TB, opts ContainerdOptions) *Containerd {
	t.Helper()
	if opts.Binary == "" {
		RequireContainerd(t, opts.Version)
	} else {
		Require(t)
	}
	if os.Geteuid() != 0 {
		SkipOrFail(t, "lab: containerd needs root (overlayfs mounts)")
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

// Version is the version the containerd binary reports, e.g. "1.6.20~ds1" or "v2.4.2".
func (c *Containerd) Version() string { return c.version }

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

// writeConfig writes config.toml in the format of the binary's major version and one
// certs.d/<host>/hosts.toml per mirror.
func (c *Containerd) writeConfig(mirrors map[string]string) error {
	certsDir := filepath.Join(c.Dir, "certs.d")
	if err := WriteMirrors(certsDir, mirrors); err != nil {
		return err
	}
	p := configParams{
		Root:        filepath.Join(c.Dir, "root"),
		State:       filepath.Join(c.Dir, "state"),
		Socket:      c.Socket,
		TTRPC:       c.Socket + ".ttrpc",
		Opt:         filepath.Join(c.Dir, "opt"),
		CDI:         filepath.Join(c.Dir, "cdi"),
		Snapshotter: c.snapshotter,
		CertsDir:    certsDir,
	}
	var cfg string
	switch c.major {
	case 1:
		cfg = p.v2()
	case 2:
		cfg = p.v3()
	default:
		return fmt.Errorf("containerd %s: no config format for major version %d", c.version, c.major)
	}
	return os.WriteFile(c.configPath, []byte(cfg), 0o644)
}

// WriteMirrors writes one certs.d/<host>/hosts.toml per mirror (host -> "127.0.0.1:PORT" or a
// URL) under certsDir; containerd 1.6, 1.7 and 2.x read the same format.
func WriteMirrors(certsDir string, mirrors map[string]string) error {
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
	return nil
}

// configParams are the per-instance paths and settings of a containerd config.
type configParams struct {
	Root, State, Socket, TTRPC, Opt, CDI, Snapshotter, CertsDir string
	// node holds what a kubelet's node needs beyond image calls (k8slab); nil for lab nodes.
	node *KubeletNode
}

// KubeletNode are the settings a containerd under a real kubelet needs beyond the lab's image
// calls: the pause image, the CNI plugin and config directories, and runc as the runtime.
type KubeletNode struct {
	SandboxImage, CNIBinDir, CNIConfDir string
}

// ContainerdConfigV2 returns a containerd 1.6/1.7 config (format version 2) for the state under
// dir (root, state, opt), serving on socket, redirecting registries through the hosts.toml files
// under certsDir (WriteMirrors), with the overlayfs snapshotter, for a kubelet node.
func ContainerdConfigV2(dir, state, socket, certsDir string, node KubeletNode) string {
	return configParams{
		Root: filepath.Join(dir, "root"), State: state, Socket: socket, TTRPC: socket + ".ttrpc",
		Opt: filepath.Join(dir, "opt"), Snapshotter: "overlayfs", CertsDir: certsDir, node: &node,
	}.v2()
}

// v2 is the config for containerd 1.6 and 1.7 (format version 2, one CRI plugin). Settings that
// matter: no TCP service and the streaming server on a random loopback port, so instances do not
// collide; stats_collect_period = 1 because ImageFsInfo's used bytes are refreshed in the
// background at that period (default 10 s: stale right after a pull). A kubelet node also gets
// its pause image, runc and CNI; restrict_oom_score_adj because these VMs lack
// CAP_SYS_RESOURCE, without which runc fails writing oom_score_adj.
func (p configParams) v2() string {
	var b strings.Builder
	fmt.Fprintf(&b, `version = 2
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
`, p.Root, p.State, p.Socket, p.TTRPC, p.Opt)
	if p.node != nil {
		fmt.Fprintf(&b, "    sandbox_image = %q\n    restrict_oom_score_adj = true\n", p.node.SandboxImage)
	}
	fmt.Fprintf(&b, `    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    stats_collect_period = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = %q
`, p.Snapshotter)
	if p.node != nil {
		fmt.Fprintf(&b, `      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %q
      conf_dir = %q
`, p.node.CNIBinDir, p.node.CNIConfDir)
	}
	fmt.Fprintf(&b, `    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = %q
`, p.CertsDir)
	return b.String()
}

// v3 is the config for containerd 2.x (format version 3). The CRI plugin is split in three
// (keys from containerd v2.4.2's internal/cri/config): the gRPC server
// "io.containerd.grpc.v1.cri" keeps the streaming settings; the image service
// "io.containerd.cri.v1.images" has the snapshotter, the image filesystem stats period and the
// registry config_path (for hosts.toml; its transfer-service pulls read the same directory); the
// runtime "io.containerd.cri.v1.runtime" gets a CDI spec dir of its own. NRI, on by default in
// 2.x, would create /var/run/nri/nri.sock shared by every instance: it is off.
func (p configParams) v3() string {
	return fmt.Sprintf(`version = 3
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
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = %q
    stats_collect_period = 1
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = %q
  [plugins."io.containerd.cri.v1.runtime"]
    cdi_spec_dirs = [%q]
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
`, p.Root, p.State, p.Socket, p.TTRPC, p.Opt, p.Snapshotter, p.CertsDir, p.CDI)
}
