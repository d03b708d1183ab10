// Package k8slab runs a real single-node Kubernetes on this machine for end-to-end tests:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet and kube-proxy
// (built once from the Go module proxy and cached outside the repository, see Build),
// Debian's containerd with runc and the CNI bridge, and a slim CoreDNS. Every daemon is a
// child process; all state lives under one temp dir; Close stops exactly what Start started
// and puts the machine back (address, bridge, iptables chains, cgroups, mounts, sysctls).
//
// The settings are the ones shared/reference/k8s-lab.md lists, each found by a failure on
// these machines (no systemd, cgroup v1, no CAP_SYS_RESOURCE, no dummy links, no internet).
// One cluster runs per machine at a time: Start waits for a machine-wide lock. A cluster
// whose test process was killed leaves a record of the machine's state; the next Start
// cleans up after it before it begins.
package k8slab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/internal/ociimage"
)

// The cluster's addresses. The node address lives on lo (these machines have no dummy link
// type); pods get 10.98.0.0/24 from the bridge; Services 10.97.0.0/24.
const (
	NodeName    = "k8slab-node"
	NodeIP      = "10.99.0.1"
	PodCIDR     = "10.98.0.0/24"
	podGateway  = "10.98.0.1"
	ServiceCIDR = "10.97.0.0/24"
	// kubernetesServiceIP is the first address of ServiceCIDR, the "kubernetes" Service.
	kubernetesServiceIP = "10.97.0.1"
	bridgeName          = "k8slab0"
	// ClusterDNS is where CoreDNS answers (a host process on the node address).
	ClusterDNS = NodeIP
)

// Options configure Start.
type Options struct {
	// Registry is a plain-HTTP registry "127.0.0.1:PORT" (a lab.Registry): Start pushes the
	// pod sandbox (pause) image there; the caller pushes its own images.
	Registry string
	// Mirrors maps registry host names (such as "docker.io") to plain-HTTP registries, as
	// containerd hosts.toml mirrors, so images named after them are pulled from the lab.
	Mirrors map[string]string
	// Log receives progress lines. Default: discarded.
	Log io.Writer
}

// Cluster is a running single-node Kubernetes. Its methods are safe for one goroutine.
type Cluster struct {
	// Dir holds everything: PKI, kubeconfigs, etcd's data, the kubelet's root, containerd's
	// root and state, logs.
	Dir string
	// Kubeconfig is the cluster admin's kubeconfig (group system:masters).
	Kubeconfig string
	// RunContainerd is the node's /run/containerd: containerd's state directory, holding its
	// socket containerd.sock.
	RunContainerd string
	// ContainerdSocket is RunContainerd/containerd.sock.
	ContainerdSocket string
	// Bin are the binaries the cluster runs (kubectl too).
	Bin Binaries
	// PauseImage is the pod sandbox image in Options.Registry; it runs as a container too
	// (it waits for SIGTERM), for a pod that only has to be there.
	PauseImage string

	log     io.Writer
	host    *host
	unlock  func()
	spawn   *spawner
	mu      sync.Mutex         // guards daemons
	daemons map[string]*daemon // by name
	order   []string           // start order; Close stops in reverse
	closed  bool
}

// daemon is one child process with its log file.
type daemon struct {
	name string
	bin  string
	args []string
	log  string
	proc *lab.Process
	file *os.File
}

// Require skips t when the machine cannot run a cluster (not root, or containerd, runc,
// iptables, conntrack or the CNI plugins missing), or fails it when CI=true.
func Require(t testing.TB) {
	t.Helper()
	if err := Check(); err != nil {
		lab.SkipOrFail(t, fmt.Sprintf("k8slab: %v", err))
	}
}

// Check reports what the machine lacks to run a cluster.
func Check() error {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("needs root (a kubelet, iptables, mounts)"))
	}
	var missing []string
	for _, b := range []string{"containerd", "runc", "iptables", "conntrack", "ip"} {
		if _, err := lab.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, p)); err != nil {
			missing = append(missing, "CNI plugin "+p)
		}
	}
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("missing %s: apt-get install -y --no-install-recommends containerd runc iptables conntrack iproute2 containernetworking-plugins (make test installs them)", strings.Join(missing, ", ")))
	}
	return errors.Join(errs...)
}

// cniBinDir is where Debian's containernetworking-plugins puts the plugins.
const cniBinDir = "/usr/lib/cni"

// New is Start for tests: Require, RequireBuilt, Start, Close at cleanup (failing t when the
// machine is not left clean), and the daemons' log tails when t failed.
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	Require(t)
	RequireBuilt(t)
	if opts.Log == nil {
		opts.Log = testWriter{t}
	}
	c, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{"kubelet", "containerd", "kube-apiserver", "kube-proxy", "coredns"} {
				t.Logf("--- %s log (tail) ---\n%s", n, c.LogTail(n, 40))
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("k8slab close: %v", err)
		}
	})
	return c
}

// RequireBuilt skips t when the lab's binaries are not in the cache, or fails it when
// CI=true: a test never builds them (5–15 minutes on 2 cores, too long for a test's
// timeout); `make k8s-lab` does, and make test runs it first.
func RequireBuilt(t testing.TB) {
	t.Helper()
	if Cached() {
		return
	}
	dir, _ := lab.CacheDir()
	msg := fmt.Sprintf("k8slab: the lab Kubernetes %s is not built in %s: %s", KubernetesVersion, dir, notBuiltHint)
	lab.SkipOrFail(t, msg)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Start builds what is not cached, takes the machine-wide lock and starts the cluster, and
// returns once the node is Ready and CoreDNS answers. On failure nothing is left running.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if err := Check(); err != nil {
		return nil, fmt.Errorf("k8slab: %w", err)
	}
	bin, err := Build(ctx, opts.Log)
	if err != nil {
		return nil, err
	}
	unlock, err := lockFile(ctx, filepath.Join(os.TempDir(), "cachemachine-k8slab.lock"))
	if err != nil {
		return nil, fmt.Errorf("k8slab: %w", err)
	}
	// Another Kubernetes node first: recovery must not take its pods, cgroups and chains for
	// a crashed lab's.
	if err := checkNoForeignKubelet("kubelet"); err != nil {
		unlock()
		return nil, fmt.Errorf("k8slab: %w", err)
	}
	if err := recoverCrashed(bin.KubeProxy, opts.Log); err != nil {
		unlock()
		return nil, fmt.Errorf("k8slab: %w", err)
	}
	if err := checkHost(); err != nil {
		unlock()
		return nil, fmt.Errorf("k8slab: %w", err)
	}
	// Short: containerd's sockets live below it (unix socket paths < 108 bytes).
	dir, err := os.MkdirTemp("", "cmk")
	if err != nil {
		unlock()
		return nil, fmt.Errorf("k8slab: %w", err)
	}
	c := &Cluster{
		Dir:           dir,
		Bin:           bin,
		log:           opts.Log,
		unlock:        unlock,
		spawn:         newSpawner(),
		daemons:       map[string]*daemon{},
		RunContainerd: filepath.Join(dir, "run", "containerd"),
	}
	c.ContainerdSocket = filepath.Join(c.RunContainerd, "containerd.sock")
	start := time.Now()
	if err := c.start(ctx, opts); err != nil {
		tails := ""
		for _, n := range c.order {
			tails += fmt.Sprintf("\n--- %s ---\n%s", n, c.LogTail(n, 15))
		}
		return nil, errors.Join(fmt.Errorf("k8slab start: %w%s", err, tails), c.Close())
	}
	fmt.Fprintf(c.log, "k8slab: node %s Ready in %s (dir %s)\n", NodeName, time.Since(start).Round(100*time.Millisecond), dir)
	return c, nil
}

func (c *Cluster) start(ctx context.Context, opts Options) error {
	h, err := newHost(c.Dir)
	if err != nil {
		return err
	}
	c.host = h
	if err := h.setup(); err != nil {
		return err
	}
	for _, d := range []string{"logs", "etcd", "kubelet", "pod-logs", "cni/net.d", "cni/ipam", "containerd/root", "containerd/certs.d", c.RunContainerd} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return err
		}
	}
	ports, err := freePorts(7)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, kcmPort, schedPort, kubeletPort, dnsReady := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6]

	// Certificates and kubeconfigs.
	p, err := newPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://%s:%d", NodeIP, apiPort)
	apiCert, err := p.issue("apiserver", "kube-apiserver", nil,
		[]net.IP{net.ParseIP(NodeIP), net.ParseIP(kubernetesServiceIP), net.ParseIP("127.0.0.1")},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"})
	if err != nil {
		return err
	}
	kubeletClient, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	saKey, saPub, err := p.serviceAccountKeys()
	if err != nil {
		return err
	}
	kubeconfigs := map[string]struct{ cn, org string }{
		"admin":                   {"k8slab-admin", "system:masters"},
		"kube-controller-manager": {"system:kube-controller-manager", ""},
		"kube-scheduler":          {"system:kube-scheduler", ""},
		"kubelet":                 {"system:node:" + NodeName, "system:nodes"},
		"kube-proxy":              {"system:kube-proxy", ""},
		// CoreDNS reads Services and EndpointSlices; the lab gives it the admin group rather
		// than a ClusterRole of its own.
		"coredns": {"k8slab-coredns", "system:masters"},
	}
	kc := map[string]string{}
	for n, id := range kubeconfigs {
		var orgs []string
		if id.org != "" {
			orgs = []string{id.org}
		}
		cp, err := p.issue(n, id.cn, orgs, nil, nil)
		if err != nil {
			return err
		}
		kc[n] = filepath.Join(c.Dir, n+".kubeconfig")
		if err := p.kubeconfig(kc[n], server, id.cn, cp); err != nil {
			return err
		}
	}
	c.Kubeconfig = kc["admin"]

	// etcd.
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	if err := c.run("etcd", c.Bin.Etcd,
		"--name=k8slab", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=k8slab="+peerURL, "--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "etcd", plainClient, etcdURL+"/health", 30*time.Second); err != nil {
		return err
	}

	// kube-apiserver.
	if err := c.run("kube-apiserver", c.Bin.APIServer,
		"--etcd-servers="+etcdURL,
		"--bind-address="+NodeIP, "--advertise-address="+NodeIP, "--secure-port="+strconv.Itoa(apiPort),
		"--service-cluster-ip-range="+ServiceCIDR,
		"--tls-cert-file="+apiCert.CertFile, "--tls-private-key-file="+apiCert.KeyFile,
		"--client-ca-file="+p.caFile(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate="+kubeletClient.CertFile, "--kubelet-client-key="+kubeletClient.KeyFile,
		// Without it `kubectl logs` and `exec` fail resolving the node name.
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--allow-privileged=true", "--cert-dir="+filepath.Join(c.Dir, "pki", "apiserver-generated"),
		"--profiling=false", "--event-ttl=15m"); err != nil {
		return err
	}
	admin, err := c.adminClient(p)
	if err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "kube-apiserver", admin, server+"/readyz", 60*time.Second); err != nil {
		return err
	}

	// Controllers and scheduler (each controller with its own service account, as kubeadm).
	if err := c.run("kube-controller-manager", c.Bin.ControllerManager,
		"--kubeconfig="+kc["kube-controller-manager"],
		"--authentication-kubeconfig="+kc["kube-controller-manager"], "--authorization-kubeconfig="+kc["kube-controller-manager"],
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(kcmPort),
		"--leader-elect=false", "--use-service-account-credentials=true",
		"--service-account-private-key-file="+saKey, "--root-ca-file="+p.caFile(),
		"--cluster-name=k8slab"); err != nil {
		return err
	}
	if err := c.run("kube-scheduler", c.Bin.Scheduler,
		"--kubeconfig="+kc["kube-scheduler"],
		"--authentication-kubeconfig="+kc["kube-scheduler"], "--authorization-kubeconfig="+kc["kube-scheduler"],
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort), "--leader-elect=false"); err != nil {
		return err
	}

	// The node: sandbox image, CNI, containerd, kubelet, kube-proxy.
	sandbox, err := c.pushPause(ctx, opts.Registry)
	if err != nil {
		return err
	}
	c.PauseImage = sandbox
	if err := c.writeCNI(); err != nil {
		return err
	}
	if err := c.writeContainerdConfig(sandbox, opts.Mirrors); err != nil {
		return err
	}
	if err := c.startContainerd(ctx); err != nil {
		return err
	}
	kubeletConfig, err := c.writeKubeletConfig(p, kubeletPort)
	if err != nil {
		return err
	}
	if err := c.run("kubelet", c.Bin.Kubelet,
		"--config="+kubeletConfig, "--kubeconfig="+kc["kubelet"],
		"--root-dir="+filepath.Join(c.Dir, "kubelet"),
		"--hostname-override="+NodeName, "--node-ip="+NodeIP, "--v=1"); err != nil {
		return err
	}
	proxyConfig, err := c.writeKubeProxyConfig(kc["kube-proxy"])
	if err != nil {
		return err
	}
	if err := c.run("kube-proxy", c.Bin.KubeProxy, "--config="+proxyConfig, "--v=2"); err != nil {
		return err
	}

	// CoreDNS on the node address: without it every lookup in a pod hangs ~5 s per try.
	corefile := filepath.Join(c.Dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(fmt.Sprintf(`cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind %s
    errors
    ready 127.0.0.1:%d
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s k8slab
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
`, ClusterDNS, dnsReady, kc["coredns"])), 0o644); err != nil {
		return err
	}
	if err := c.run("coredns", c.Bin.CoreDNS, "-conf", corefile); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "coredns", plainClient, fmt.Sprintf("http://127.0.0.1:%d/ready", dnsReady), 60*time.Second); err != nil {
		return err
	}
	return c.waitNodeReady(ctx, 90*time.Second)
}

func freePorts(n int) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for len(out) < n {
		p, err := lab.FreePort()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// run starts a daemon with its output in logs/<name>.log.
func (c *Cluster) run(name, bin string, args ...string) error {
	d := &daemon{name: name, bin: bin, args: args, log: filepath.Join(c.Dir, "logs", name+".log")}
	if err := c.startDaemon(d); err != nil {
		return err
	}
	c.mu.Lock()
	c.daemons[name] = d
	c.order = append(c.order, name)
	c.mu.Unlock()
	return nil
}

func (c *Cluster) startDaemon(d *daemon) error {
	f, err := os.OpenFile(d.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	proc, err := c.spawn.start(d.bin, d.args, f)
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("start %s: %w", d.name, err)
	}
	d.proc, d.file = proc, f
	if c.host != nil {
		if err := c.host.addDaemon(proc.Pid()); err != nil {
			return fmt.Errorf("record %s: %w", d.name, err)
		}
	}
	return nil
}

// LogTail returns the last n lines of a daemon's log ("kubelet", "containerd", …).
func (c *Cluster) LogTail(name string, n int) string {
	b, err := os.ReadFile(filepath.Join(c.Dir, "logs", name+".log"))
	if err != nil {
		return ""
	}
	return lastLines(string(b), n)
}

func (c *Cluster) adminClient(p *pki) (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(p.dir, "admin.crt"), filepath.Join(p.dir, "admin.key"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.caPEM)
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}, nil
}

// plainClient is for the daemons' plain-HTTP health endpoints: a daemon that accepts a
// connection and never answers fails one attempt, not the whole wait.
var plainClient = &http.Client{Timeout: 2 * time.Second}

// waitHTTP polls url until it answers 200, the daemon exits, or timeout. Each attempt ends
// after 2 s, and with ctx or the timeout, whatever client's own timeout.
func (c *Cluster) waitHTTP(ctx context.Context, name string, client *http.Client, url string, timeout time.Duration) error {
	d := c.daemons[name]
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return poll(ctx, timeout, 100*time.Millisecond, func() error {
		if d.proc.Exited() {
			return permanent{fmt.Errorf("%s exited: %v", name, d.proc.Err())}
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
		if err != nil {
			return permanent{err}
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s %s", url, resp.Status, body)
		}
		return nil
	})
}

// permanent ends a poll at once.
type permanent struct{ error }

// poll calls f every interval until it returns nil or a permanent error, or timeout passes.
func poll(ctx context.Context, timeout, interval time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return p.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w after %s: %v", ctx.Err(), timeout, err)
		case <-time.After(interval):
		}
	}
}

// pushPause builds the sandbox image (the pause binary on an empty base) and pushes it.
func (c *Cluster) pushPause(ctx context.Context, registry string) (string, error) {
	if registry == "" {
		return "", errors.New("Options.Registry is required: the node pulls its pause image from it")
	}
	data, err := os.ReadFile(c.Bin.Pause)
	if err != nil {
		return "", err
	}
	img, err := ociimage.Build(ociimage.Options{
		Files:      []ociimage.File{{Path: "/pause", Mode: 0o555, Data: data}},
		Entrypoint: []string{"/pause"},
		User:       "65535:65535",
		CreatedBy:  "k8slab pause",
	})
	if err != nil {
		return "", err
	}
	ref, err := name.NewTag(registry+"/k8slab/pause:lab", name.Insecure)
	if err != nil {
		return "", err
	}
	// The registry is a local one: a push that takes a minute is stuck.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	return ref.String(), nil
}

func (c *Cluster) writeCNI() error {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "k8slab",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      bridgeName,
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": PodCIDR, "gateway": podGateway}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": filepath.Join(c.Dir, "cni", "ipam"),
			},
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Dir, "cni", "net.d", "10-k8slab.conflist"), b, 0o644)
}

func (c *Cluster) writeContainerdConfig(sandbox string, mirrors map[string]string) error {
	certs := filepath.Join(c.Dir, "containerd", "certs.d")
	if err := lab.WriteMirrors(certs, mirrors); err != nil {
		return err
	}
	cfg := lab.ContainerdConfigV2(filepath.Join(c.Dir, "containerd"), c.RunContainerd, c.ContainerdSocket, certs, lab.KubeletNode{
		SandboxImage: sandbox, CNIBinDir: cniBinDir, CNIConfDir: filepath.Join(c.Dir, "cni", "net.d"),
	})
	return os.WriteFile(filepath.Join(c.Dir, "containerd", "config.toml"), []byte(cfg), 0o644)
}

// startContainerd starts containerd (again) and waits until its CRI answers.
func (c *Cluster) startContainerd(ctx context.Context) error {
	c.mu.Lock()
	d, ok := c.daemons["containerd"]
	c.mu.Unlock()
	if !ok {
		bin, err := lab.LookPath("containerd")
		if err != nil {
			return err
		}
		if err := c.run("containerd", bin, "--config", filepath.Join(c.Dir, "containerd", "config.toml")); err != nil {
			return err
		}
		d = c.daemons["containerd"]
	} else if err := c.startDaemon(d); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+c.ContainerdSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	return poll(ctx, 30*time.Second, 100*time.Millisecond, func() error {
		if d.proc.Exited() {
			return permanent{fmt.Errorf("containerd exited: %v\n%s", d.proc.Err(), c.LogTail("containerd", 15))}
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := rt.Version(cctx, &runtimeapi.VersionRequest{})
		return err
	})
}

// RestartContainerd stops containerd (SIGTERM, as a node upgrade or a service restart does)
// and starts it again on the same root and state: the socket file is a new one. Running
// containers keep running (their shims do not depend on the daemon).
func (c *Cluster) RestartContainerd(ctx context.Context) error {
	c.mu.Lock()
	d := c.daemons["containerd"]
	c.mu.Unlock()
	if err := d.proc.Stop(10 * time.Second); err != nil {
		return fmt.Errorf("stop containerd: %w", err)
	}
	_ = d.file.Close()
	if err := c.startContainerd(ctx); err != nil {
		return fmt.Errorf("restart containerd: %w", err)
	}
	return nil
}

func (c *Cluster) writeKubeletConfig(p *pki, port int) (string, error) {
	resolv := filepath.Join(c.Dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+ClusterDNS+"\n"), 0o644); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %s
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://%s
# It sets machine-wide kernel tunables (protectKernelDefaults would refuse to start where
# they differ from its values): host records them before and restores them at Close.
# No systemd here, cgroup v1 (hybrid), swap allowed, nothing reserved.
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
enforceNodeAllocatable: []
clusterDNS: [%s]
clusterDomain: cluster.local
resolvConf: %s
podLogsDir: %s
volumePluginDir: %s
serializeImagePulls: false
# The lab's images stay: image GC would fight the agent the test watches.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
syncFrequency: 10s
`, NodeIP, port, p.caFile(), c.ContainerdSocket, ClusterDNS, resolv,
		filepath.Join(c.Dir, "pod-logs"), filepath.Join(c.Dir, "kubelet", "volume-plugins"))
	path := filepath.Join(c.Dir, "kubelet.yaml")
	return path, os.WriteFile(path, []byte(cfg), 0o644)
}

func (c *Cluster) writeKubeProxyConfig(kubeconfig string) (string, error) {
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
nodePortAddresses: [%s/32]
healthzBindAddress: ""
metricsBindAddress: ""
# No sysctl writes: conntrack limits and timeouts stay as the machine has them.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  # Otherwise kube-proxy sets net.ipv4.conf.all.route_localnet=1.
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
`, kubeconfig, NodeName, PodCIDR, NodeIP)
	path := filepath.Join(c.Dir, "kube-proxy.yaml")
	return path, os.WriteFile(path, []byte(cfg), 0o644)
}

// waitNodeReady polls the node's Ready condition through kubectl.
func (c *Cluster) waitNodeReady(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, 250*time.Millisecond, func() error {
		for _, n := range []string{"kubelet", "containerd", "kube-proxy"} {
			if d := c.daemons[n]; d.proc.Exited() {
				return permanent{fmt.Errorf("%s exited: %v", n, d.proc.Err())}
			}
		}
		out, err := c.Kubectl(ctx, "get", "node", NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(out)) != "True" {
			return fmt.Errorf("node %s Ready=%q", NodeName, out)
		}
		return nil
	})
}

// Kubectl runs the cluster's kubectl (the same version as the cluster) as the admin and
// returns its stdout; the error carries stderr.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.KubectlStdin(ctx, nil, args...)
}

// KubectlStdin is Kubectl with stdin.
func (c *Cluster) KubectlStdin(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Bin.Kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Stdin = stdin
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Close stops every daemon in reverse start order after removing every pod sandbox through
// CRI (so containerd stops the containers, releases their networks and unmounts their
// filesystems), then restores the machine. It returns an error naming whatever it could not
// put back. Close is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	var errs []error
	stop := func(name string, grace time.Duration) {
		d, ok := c.daemons[name]
		if !ok || d.proc == nil {
			return
		}
		// A daemon that died on its own is news: the cluster ran without it.
		if err := d.proc.Stop(grace); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w\n%s", name, err, c.LogTail(name, 10)))
		}
		d.proc = nil
		_ = d.file.Close()
	}
	// The kubelet first, so that it restarts nothing; then the pods, through containerd.
	stop("kubelet", 10*time.Second)
	if d, ok := c.daemons["containerd"]; ok && !d.proc.Exited() {
		if err := c.removeSandboxes(); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(c.order) - 1; i >= 0; i-- {
		stop(c.order[i], 10*time.Second)
	}
	if c.host != nil {
		kubeProxy := ""
		if _, ok := c.daemons["kube-proxy"]; ok {
			kubeProxy = c.Bin.KubeProxy
		}
		if err := c.host.restore(kubeProxy); err != nil {
			errs = append(errs, err)
		}
		if left := c.host.leftovers(); len(left) > 0 {
			errs = append(errs, fmt.Errorf("left on the machine: %s", strings.Join(left, "; ")))
		} else if err := c.host.forget(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	c.spawn.close()
	if c.unlock != nil {
		c.unlock()
	}
	return errors.Join(errs...)
}

// Exited lists the daemons that are not running (they died, or Close stopped them).
func (c *Cluster) Exited() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, n := range c.order {
		if d := c.daemons[n]; d.proc == nil || d.proc.Exited() {
			out = append(out, n)
		}
	}
	return out
}

// spawner starts every daemon from one OS thread that lives as long as the cluster. The
// children are started with PR_SET_PDEATHSIG (lab.StartProcess), which the kernel sends when
// the thread that forked them exits, not the process: a daemon started from an ordinary
// goroutine dies whenever the Go runtime retires that thread. From a locked thread they die
// only with the test process, or at close.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	bin   string
	args  []string
	out   io.Writer
	reply chan spawnReply
}

type spawnReply struct {
	proc *lab.Process
	err  error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		// Never unlocked: when this goroutine returns, its thread exits with it.
		runtime.LockOSThread()
		for r := range s.reqs {
			p, err := lab.StartProcess(r.bin, r.args, r.out)
			r.reply <- spawnReply{p, err}
		}
	}()
	return s
}

func (s *spawner) start(bin string, args []string, out io.Writer) (*lab.Process, error) {
	reply := make(chan spawnReply, 1)
	s.reqs <- spawnReq{bin: bin, args: args, out: out, reply: reply}
	r := <-reply
	return r.proc, r.err
}

// close ends the thread, once every daemon is stopped.
func (s *spawner) close() {
	close(s.reqs)
	<-s.done
}

// removeSandboxes stops and removes every pod sandbox through CRI.
func (c *Cluster) removeSandboxes() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+c.ContainerdSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, s := range list.Items {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s: %w", s.Metadata.GetName(), err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox %s: %w", s.Metadata.GetName(), err))
		}
	}
	return errors.Join(errs...)
}
