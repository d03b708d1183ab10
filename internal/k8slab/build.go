package k8slab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// Versions of what the lab builds from the Go module proxy.
const (
	KubernetesVersion = "v1.34.4"
	// stagingVersion is the version of the k8s.io/* staging modules of KubernetesVersion.
	stagingVersion = "v0.34.4"
	EtcdVersion    = "v3.6.16"
	CoreDNSVersion = "v1.14.7"
)

// Binaries are the paths of the programs a cluster runs.
type Binaries struct {
	APIServer, ControllerManager, Scheduler, Kubelet, KubeProxy, Kubectl string
	Etcd, CoreDNS, Pause                                                 string
}

// recipe builds one group of binaries in a wrapper module. Its text is the cache key: change
// anything here and the next run builds again.
type recipe struct {
	dir     string // cache subdirectory, e.g. "k8s-v1.34.4"
	gomod   string // go.mod before `go mod tidy`
	mainGo  string // main.go, "" when the packages come from the required module
	pkgs    []string
	ldflags string
	bins    []string // what `go build -o bin/` leaves there (a main in "." is named after the module)
}

// stagingModules are the k8s.io modules that k8s.io/kubernetes replaces with its staging
// directories; a module outside that repository must replace them with their published
// versions (which is also why `go install k8s.io/kubernetes/cmd/...@v1.34.4` is refused).
var stagingModules = []string{
	"api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
	"cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
	"controller-manager", "cri-api", "cri-client", "csi-translation-lib",
	"dynamic-resource-allocation", "endpointslice", "externaljwt", "kms", "kube-aggregator",
	"kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl", "kubelet", "metrics",
	"mount-utils", "pod-security-admission", "sample-apiserver", "sample-cli-plugin",
	"sample-controller",
}

// kubeCommands are built in one go build: they share most packages. kubectl comes along so
// that the client is the cluster's version (and has the cluster's kustomize).
var kubeCommands = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

func kubernetesRecipe() recipe {
	var b strings.Builder
	fmt.Fprintf(&b, "module cachemachine.lab/kubernetes\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n\ntool (\n", KubernetesVersion)
	var pkgs []string
	for _, c := range kubeCommands {
		pkgs = append(pkgs, "k8s.io/kubernetes/cmd/"+c)
		fmt.Fprintf(&b, "\tk8s.io/kubernetes/cmd/%s\n", c)
	}
	b.WriteString(")\n\nreplace (\n")
	for _, m := range stagingModules {
		fmt.Fprintf(&b, "\tk8s.io/%s => k8s.io/%s %s\n", m, m, stagingVersion)
	}
	b.WriteString(")\n")
	// Without the version stamps the binaries say v0.0.0-master, which kubectl cannot parse.
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var ld []string
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ld = append(ld, "-X "+p+".gitVersion="+KubernetesVersion, "-X "+p+".gitMajor="+major,
			"-X "+p+".gitMinor="+minor, "-X "+p+".gitTreeState=clean")
	}
	return recipe{
		dir:     "k8s-" + KubernetesVersion,
		gomod:   b.String(),
		pkgs:    pkgs,
		ldflags: "-s -w " + strings.Join(ld, " "),
		bins:    kubeCommands,
	}
}

func etcdRecipe() recipe {
	return recipe{
		dir:   "etcd-" + EtcdVersion,
		gomod: "module cachemachine.lab/etcd\n\ngo 1.24.0\n\nrequire go.etcd.io/etcd/server/v3 " + EtcdVersion + "\n",
		mainGo: `// Command etcd is etcd's server, built from the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
`,
		pkgs:    []string{"."},
		ldflags: "-s -w",
		bins:    []string{"etcd"},
	}
}

func corednsRecipe() recipe {
	return recipe{
		dir:   "coredns-" + CoreDNSVersion,
		gomod: "module cachemachine.lab/coredns\n\ngo 1.24.0\n\nrequire github.com/coredns/coredns " + CoreDNSVersion + "\n",
		// Only the plugins a lab cluster's DNS uses: the full set doubles the build.
		mainGo: `// Command coredns is CoreDNS with the plugins a lab cluster's DNS needs.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
`,
		pkgs:    []string{"."},
		ldflags: "-s -w",
		bins:    []string{"coredns"},
	}
}

// pauseRecipe is the pod sandbox's process: it waits for SIGTERM or SIGINT and reaps the
// children it inherits as PID 1 of the pod.
func pauseRecipe() recipe {
	return recipe{
		dir:   "pause",
		gomod: "module cachemachine.lab/pause\n\ngo 1.24.0\n",
		mainGo: `// Command pause holds a pod's namespaces: PID 1 of the sandbox.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
`,
		pkgs:    []string{"."},
		ldflags: "-s -w",
		bins:    []string{"pause"},
	}
}

// Cached reports whether every binary is built for the current recipes, without building.
func Cached() bool {
	root, err := lab.CacheDir()
	if err != nil {
		return false
	}
	for _, r := range recipes() {
		if !r.cached(filepath.Join(root, r.dir)) {
			return false
		}
	}
	return true
}

// notBuiltHint is what to do when the cache lacks the lab's binaries.
const notBuiltHint = "run `make k8s-lab` (go run ./internal/k8slab/cmd/k8slab build; make test runs it first)"

// CachedKubectl returns the path of the kubectl that Build built (KubernetesVersion, with
// the same kustomize as the cluster), without building: an error saying how to build it
// when the cache lacks it.
func CachedKubectl() (string, error) {
	root, err := lab.CacheDir()
	if err != nil {
		return "", fmt.Errorf("k8slab cache: %w", err)
	}
	r := kubernetesRecipe()
	dir := filepath.Join(root, r.dir)
	if !r.cached(dir) {
		return "", fmt.Errorf("kubectl %s is not built in %s: %s", KubernetesVersion, dir, notBuiltHint)
	}
	return filepath.Join(dir, "bin", "kubectl"), nil
}

func recipes() []recipe {
	return []recipe{kubernetesRecipe(), etcdRecipe(), corednsRecipe(), pauseRecipe()}
}

// Build builds what is missing from the cache (the first time 5–15 minutes on 2 cores,
// most of it Kubernetes) and returns the binaries' paths; a cached build returns at once.
// Progress goes to log. Concurrent callers (two test binaries, two worktrees) wait for each
// other through a lock file next to each build.
func Build(ctx context.Context, log io.Writer) (Binaries, error) {
	root, err := lab.CacheDir()
	if err != nil {
		return Binaries{}, fmt.Errorf("k8slab build: %w", err)
	}
	paths := map[string]string{}
	for _, r := range recipes() {
		dir := filepath.Join(root, r.dir)
		if err := r.build(ctx, dir, log); err != nil {
			return Binaries{}, fmt.Errorf("k8slab build %s: %w", r.dir, err)
		}
		for _, b := range r.bins {
			paths[b] = filepath.Join(dir, "bin", b)
		}
	}
	return Binaries{
		APIServer:         paths["kube-apiserver"],
		ControllerManager: paths["kube-controller-manager"],
		Scheduler:         paths["kube-scheduler"],
		Kubelet:           paths["kubelet"],
		KubeProxy:         paths["kube-proxy"],
		Kubectl:           paths["kubectl"],
		Etcd:              paths["etcd"],
		CoreDNS:           paths["coredns"],
		Pause:             paths["pause"],
	}, nil
}

// key identifies the recipe's output: its text, the Go toolchain and the target.
func (r recipe) key() string {
	h := sha256.New()
	for _, s := range []string{r.gomod, r.mainGo, strings.Join(r.pkgs, " "), r.ldflags, strings.Join(r.bins, " "),
		runtime.Version(), runtime.GOOS, runtime.GOARCH, "CGO_ENABLED=0 -trimpath"} {
		fmt.Fprintf(h, "%d:%s\n", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (r recipe) cached(dir string) bool {
	stamp, err := os.ReadFile(filepath.Join(dir, "stamp"))
	if err != nil || strings.TrimSpace(string(stamp)) != r.key() {
		return false
	}
	for _, b := range r.bins {
		if fi, err := os.Stat(filepath.Join(dir, "bin", b)); err != nil || !fi.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// build makes dir/bin for the recipe unless dir/stamp says it is there: a fresh wrapper
// module in dir/src, `go mod tidy`, one `go build` of every package into dir/bin, then the
// stamp, written last so that an interrupted build is redone.
func (r recipe) build(ctx context.Context, dir string, log io.Writer) error {
	if r.cached(dir) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return err
	}
	defer unlock()
	if r.cached(dir) { // built by whoever held the lock
		return nil
	}
	start := time.Now()
	fmt.Fprintf(log, "k8slab: building %s (once; cached in %s)\n", r.dir, dir)
	src, bin := filepath.Join(dir, "src"), filepath.Join(dir, "bin")
	for _, d := range []string{src, bin, filepath.Join(dir, "stamp")} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(r.gomod), 0o644); err != nil {
		return err
	}
	if r.mainGo != "" {
		if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(r.mainGo), 0o644); err != nil {
			return err
		}
	}
	if err := goCmd(ctx, src, log, "mod", "tidy"); err != nil {
		return err
	}
	tmp := bin + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	args := append([]string{"build", "-trimpath", "-ldflags", r.ldflags, "-o", tmp + "/"}, r.pkgs...)
	if err := goCmd(ctx, src, log, args...); err != nil {
		return err
	}
	if err := os.Rename(tmp, bin); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "stamp"), []byte(r.key()+"\n"), 0o644); err != nil {
		return err
	}
	if !r.cached(dir) {
		return errors.New("built, but binaries are missing: " + strings.Join(r.bins, ", "))
	}
	fmt.Fprintf(log, "k8slab: built %s in %s\n", r.dir, time.Since(start).Round(time.Second))
	return nil
}

// goCmd runs the go command in dir for a static build that ignores the caller's GOFLAGS
// (-race, -cover) and workspace.
func goCmd(ctx context.Context, dir string, log io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOWORK=off", "GOTOOLCHAIN=local")
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, log)
	cmd.Stderr = io.MultiWriter(&out, log)
	// The go command dies with this process (a killed test or `make k8s-lab`) rather than
	// build on for minutes. PR_SET_PDEATHSIG fires when the thread that started the child
	// exits, so the child is started, and waited for, from a locked thread.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		errc <- cmd.Run()
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, lastLines(out.String(), 30))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lockFile takes an exclusive flock on path, polling so that ctx can end the wait.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); _ = f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
