// Package k8s deploys cachemachine on a real single-node Kubernetes (internal/k8slab): the
// kustomize dev overlay and the Helm chart, each with only the image and the host paths
// swapped, and checks them as an operator would: the pod is Ready and runs confined, the
// images are cached on the node (through CRI), the status API answers through the Service,
// `cachemachine debug` works through kubectl exec, the agent survives a containerd restart
// without a pod restart, and a config change rolls the agents with the new list.
package k8s

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/internal/k8slab"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/internal/ociimage"
)

// The dev overlay's (and values-dev.yaml's) images, and the one a config change adds. The
// node pulls them from the lab registry through containerd's docker.io mirror.
var (
	devImages = []string{"docker.io/library/busybox:1.37", "docker.io/library/alpine:3.21"}
	newImage  = "docker.io/library/busybox:1.36"
)

const (
	agentTag = "k8s-e2e"
	// ingressHost is what the tests configure the status page's Ingress with.
	ingressHost = "data.example.org"
)

// env is what every deployment check uses.
type env struct {
	cluster *k8slab.Cluster
	reg     *lab.Registry
	cri     *cri.Client
	// image is the agent's image in the lab registry, "127.0.0.1:PORT/cachemachine".
	image string
}

func TestKubernetes(t *testing.T) {
	k8slab.Require(t)
	k8slab.RequireBuilt(t) // before building and pushing the agent image, not after, in New
	lab.Require(t)
	ctx := t.Context()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	for _, ref := range append(slices.Clone(devImages), newImage) {
		repo, tag, _ := strings.Cut(strings.TrimPrefix(ref, "docker.io/"), ":")
		_, err := lab.PushRandomImage(ctx, reg.Addr, repo, []string{tag}, 1<<20, 1, nil)
		require.NoError(t, err)
	}

	// The image `make image` builds, pushed where the node pulls it from.
	start := time.Now()
	img, err := ociimage.Agent(ctx, ociimage.AgentOptions{Dir: "../..", Version: agentTag})
	require.NoError(t, err)
	image := reg.Addr + "/cachemachine"
	ref, err := name.NewTag(image+":"+agentTag, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img, remote.WithContext(ctx)))
	t.Logf("agent image built and pushed in %s", time.Since(start).Round(100*time.Millisecond))

	c := k8slab.New(t, k8slab.Options{Registry: reg.Addr, Mirrors: map[string]string{"docker.io": reg.Addr}})
	client, err := cri.New(ctx, "unix://"+c.ContainerdSocket, cri.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	e := &env{cluster: c, reg: reg, cri: client, image: image}

	for _, d := range []deployment{&kustomizeDeployment{}, &helmDeployment{}} {
		if !t.Run(d.name(), func(t *testing.T) { e.check(t, d) }) {
			return
		}
	}
}

// deployment is one way of installing cachemachine: the kustomize dev overlay or the chart.
type deployment interface {
	name() string
	namespace() string
	// install deploys with the dev images, the agent image and host paths under hostDir.
	install(t *testing.T, e *env, hostDir string)
	// changeConfig rolls out a config whose list adds newImage.
	changeConfig(t *testing.T, e *env)
	uninstall(t *testing.T, e *env)
}

// check installs d and runs the operator's checks on it.
func (e *env) check(t *testing.T, d deployment) {
	ctx := t.Context()
	ns := d.namespace()
	// Earlier deployments' images go, so that this one has to pull them itself.
	for _, ref := range append(slices.Clone(devImages), newImage) {
		require.NoError(t, e.cri.RemoveImage(ctx, ref))
	}

	start := time.Now()
	d.install(t, e, filepath.Join(e.cluster.Dir, "hosts", d.name()))
	e.rolledOut(t, ns)
	pod := e.waitNewPod(t, ns, "")
	t.Logf("%s: installed, agent pod %s Ready in %s", d.name(), pod.Metadata.Name, time.Since(start).Round(100*time.Millisecond))
	t.Run("desired images cached on the node (CRI)", func(t *testing.T) {
		e.waitCached(t, devImages)
	})
	t.Run("available through the Service", func(t *testing.T) {
		e.waitAvailable(t, ns, devImages)
	})
	t.Run("runs confined", func(t *testing.T) {
		e.checkConfinement(t, pod)
	})
	t.Run("no RBAC", func(t *testing.T) {
		e.checkNoRBAC(t, ns)
	})
	t.Run("debug node through kubectl exec", func(t *testing.T) {
		view := e.debugNode(t, ns)
		assert.Contains(t, view.Runtime, "containerd")
		assert.True(t, view.Ready)
		assert.Empty(t, view.LastError)
		var tags []string
		for _, img := range view.Images {
			tags = append(tags, img.Tags...)
		}
		assert.Subset(t, tags, devImages)
	})
	t.Run("container mounts follow the host", func(t *testing.T) {
		e.checkMountPropagation(t, pod)
	})
	t.Run("survives a containerd restart without a pod restart", func(t *testing.T) {
		e.checkContainerdRestart(t, ns, pod)
	})
	t.Run("status page Ingress accepted", func(t *testing.T) {
		out, err := e.cluster.Kubectl(ctx, "-n", ns, "get", "ingress", "cachemachine", "-o",
			`jsonpath={.spec.rules[0].host} {.spec.rules[0].http.paths[*].path} {.spec.rules[0].http.paths[0].backend.service.name}`)
		require.NoError(t, err)
		assert.Equal(t, ingressHost+" /cachemachine cachemachine", string(out))
	})
	t.Run("config change rolls the agents with the new list", func(t *testing.T) {
		before := e.agentPod(t, ns)
		d.changeConfig(t, e)
		e.rolledOut(t, ns)
		after := e.waitNewPod(t, ns, before.Metadata.UID)
		assert.NotEqual(t, before.Metadata.Name, after.Metadata.Name)
		want := append(slices.Clone(devImages), newImage)
		e.waitCached(t, want)
		e.waitAvailable(t, ns, want)
	})
	d.uninstall(t, e)
	assert.Empty(t, e.cluster.Exited(), "cluster daemons that died during the checks")
}

// pod is the part of a Pod the checks read.
type pod struct {
	Metadata struct {
		Name, UID string
	}
	Spec struct {
		AutomountServiceAccountToken *bool `json:"automountServiceAccountToken"`
		Volumes                      []struct {
			Name      string          `json:"name"`
			Projected json.RawMessage `json:"projected"`
		}
	}
	Status struct {
		Conditions []struct {
			Type, Status string
		}
		ContainerStatuses []struct {
			ContainerID  string `json:"containerID"`
			RestartCount int    `json:"restartCount"`
			Ready        bool   `json:"ready"`
		} `json:"containerStatuses"`
	}
}

func (p pod) ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

func (p pod) containerID() string {
	if len(p.Status.ContainerStatuses) == 0 {
		return ""
	}
	_, id, _ := strings.Cut(p.Status.ContainerStatuses[0].ContainerID, "://")
	return id
}

// eventually polls f until it succeeds or timeout passes, then fails t with f's last error.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v (last: %v)", what, t.Context().Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (e *env) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.cluster.Kubectl(t.Context(), args...)
	require.NoError(t, err)
	return string(out)
}

// rolledOut waits as `kubectl rollout status` does.
func (e *env) rolledOut(t *testing.T, ns string) {
	t.Helper()
	e.kubectl(t, "-n", ns, "rollout", "status", "ds/cachemachine", "--timeout=120s")
}

// agentPod returns the one agent pod, waiting until there is exactly one.
func (e *env) agentPod(t *testing.T, ns string) pod {
	t.Helper()
	var p pod
	eventually(t, 60*time.Second, "one agent pod", func() error {
		out, err := e.cluster.Kubectl(t.Context(), "-n", ns, "get", "pods", "-l", "app.kubernetes.io/name=cachemachine,app.kubernetes.io/component=agent", "-o", "json")
		if err != nil {
			return err
		}
		var list struct{ Items []pod }
		if err := json.Unmarshal(out, &list); err != nil {
			return err
		}
		if len(list.Items) != 1 {
			return fmt.Errorf("%d agent pods", len(list.Items))
		}
		p = list.Items[0]
		return nil
	})
	return p
}

// waitNewPod waits until the agent pod is a Ready one other than oldUID ("": any).
func (e *env) waitNewPod(t *testing.T, ns, oldUID string) pod {
	t.Helper()
	var p pod
	eventually(t, 120*time.Second, "a new Ready agent pod", func() error {
		p = e.agentPod(t, ns)
		if p.Metadata.UID == oldUID || !p.ready() {
			return fmt.Errorf("pod %s (uid %s) ready=%v", p.Metadata.Name, p.Metadata.UID, p.ready())
		}
		return nil
	})
	return p
}

// waitCached waits until the node's containerd holds every ref (CRI ListImages).
func (e *env) waitCached(t *testing.T, refs []string) {
	t.Helper()
	eventually(t, 90*time.Second, "images cached on the node", func() error {
		imgs, err := e.cri.ListImages(t.Context())
		if err != nil {
			return err
		}
		var tags []string
		for _, img := range imgs {
			tags = append(tags, img.Tags...)
		}
		for _, r := range refs {
			if !slices.Contains(tags, r) {
				return fmt.Errorf("%s missing; node has %v", r, tags)
			}
		}
		return nil
	})
}

// statusURL resolves the Service's name through the cluster DNS (as the spawner does) and
// returns the status API's URL on the Service's ClusterIP, reached through kube-proxy.
func (e *env) statusURL(t *testing.T, ns, path string) string {
	t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(k8slab.ClusterDNS, "53"))
	}}
	host := "cachemachine." + ns + ".svc.cluster.local"
	addrs, err := r.LookupHost(t.Context(), host)
	require.NoError(t, err, "cluster DNS")
	require.Len(t, addrs, 1, "%s: one ClusterIP", host)
	clusterIP := strings.TrimSpace(e.kubectl(t, "-n", ns, "get", "svc", "cachemachine", "-o", "jsonpath={.spec.clusterIP}"))
	require.Equal(t, clusterIP, addrs[0], "%s resolves to the Service's ClusterIP", host)
	return "http://" + clusterIP + path
}

// waitAvailable waits until /cachemachine/jupyter/available, through the Service, lists
// every ref, with the Content-Type the spawner insists on.
func (e *env) waitAvailable(t *testing.T, ns string, refs []string) {
	t.Helper()
	url := e.statusURL(t, ns, "/cachemachine/jupyter/available")
	// A fresh connection per poll, through the rules kube-proxy has now. With keep-alive,
	// one connection opened while the rollout's rules were not translating the ClusterIP
	// went out the default route (in this sandbox to a proxy, Server "keryx", that answers
	// 404 with no body to everything) and every later poll reused it for 90 s.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer func() {
		if t.Failed() {
			e.dumpService(t, ns)
		}
	}()
	eventually(t, 90*time.Second, "GET "+url, func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s (Server %q): %s", resp.Status, resp.Header.Get("Server"), body)
		}
		if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
			return fmt.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
		}
		var doc struct {
			Images []struct {
				ImageURL string `json:"image_url"`
			} `json:"images"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return err
		}
		var got []string
		for _, i := range doc.Images {
			got = append(got, i.ImageURL)
		}
		for _, r := range refs {
			if !slices.Contains(got, r) {
				return fmt.Errorf("%s not available yet: %s", r, body)
			}
		}
		return nil
	})
}

// dumpService logs what routes the Service: its EndpointSlices, kube-proxy's rules for its
// ClusterIP, and the agent pod answering directly.
func (e *env) dumpService(t *testing.T, ns string) {
	ctx := context.Background()
	out, _ := e.cluster.Kubectl(ctx, "-n", ns, "get", "svc,endpointslices,pods", "-o", "wide")
	t.Logf("%s:\n%s", ns, out)
	ip, _ := e.cluster.Kubectl(ctx, "-n", ns, "get", "svc", "cachemachine", "-o", "jsonpath={.spec.clusterIP}")
	nat, _ := exec.Command("iptables-save", "-t", "nat").Output()
	var rules []string
	for _, l := range strings.Split(string(nat), "\n") {
		if strings.Contains(l, string(ip)+"/32") || strings.Contains(l, ns+"/cachemachine") {
			rules = append(rules, l)
		}
	}
	t.Logf("nat rules for %s (%d lines in the table):\n%s", ip, strings.Count(string(nat), "\n"), strings.Join(rules, "\n"))
	podIP, _ := e.cluster.Kubectl(ctx, "-n", ns, "get", "pods", "-l", "app.kubernetes.io/name=cachemachine", "-o", "jsonpath={.items[0].status.podIP}")
	if resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://" + string(podIP) + ":8080/cachemachine/jupyter/available"); err != nil {
		t.Logf("pod %s directly: %v", podIP, err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		t.Logf("pod %s directly: %s %s", podIP, resp.Status, b)
	}
	t.Logf("daemons not running: %v; kube-proxy log:\n%s", e.cluster.Exited(), e.cluster.LogTail("kube-proxy", 30))
}

// agentProcess finds the agent's process on the node: the container's entrypoint and
// command, in the pod's cgroup.
func (e *env) agentProcess(t *testing.T, p pod) int {
	t.Helper()
	want := strings.Join(append(slices.Clone(ociimage.AgentEntrypoint), ociimage.AgentCmd...), "\x00") + "\x00"
	var found int
	eventually(t, 30*time.Second, "agent process of pod "+p.Metadata.Name, func() error {
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return err
		}
		for _, de := range entries {
			pid, err := strconv.Atoi(de.Name())
			if err != nil {
				continue
			}
			cmdline, err := os.ReadFile(filepath.Join("/proc", de.Name(), "cmdline"))
			if err != nil || string(cmdline) != want {
				continue
			}
			cg, err := os.ReadFile(filepath.Join("/proc", de.Name(), "cgroup"))
			if err == nil && strings.Contains(string(cg), "pod"+p.Metadata.UID) {
				found = pid
				return nil
			}
		}
		return fmt.Errorf("no process %q in a cgroup of pod %s", want, p.Metadata.UID)
	})
	return found
}

// checkConfinement looks at the running agent from the node: no capabilities, no privilege
// escalation, seccomp on, a read-only root filesystem, no service account token.
func (e *env) checkConfinement(t *testing.T, p pod) {
	pid := e.agentProcess(t, p)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	for _, c := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		assert.Equal(t, "0000000000000000", fields[c], "%s: no capabilities", c)
	}
	assert.Equal(t, "1", fields["NoNewPrivs"], "no privilege escalation")
	assert.Equal(t, "2", fields["Seccomp"], "seccomp filter (RuntimeDefault)")

	mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	require.NoError(t, err)
	rootRO := false
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		if f[4] == "/" {
			rootRO = slices.Contains(strings.Split(f[5], ","), "ro") // the last mount on / wins
		}
		assert.NotContains(t, f[4], "serviceaccount", "no service account token mounted")
		if f[4] == "/run/containerd" {
			assert.Contains(t, strings.Split(f[5], ","), "ro", "/run/containerd is mounted read-only")
		}
	}
	assert.True(t, rootRO, "root filesystem read-only")

	if assert.NotNil(t, p.Spec.AutomountServiceAccountToken) {
		assert.False(t, *p.Spec.AutomountServiceAccountToken)
	}
	for _, v := range p.Spec.Volumes {
		assert.False(t, strings.HasPrefix(v.Name, "kube-api-access"), "volume %s: a service account token", v.Name)
	}
}

// checkNoRBAC: nothing grants the agent's service account anything, and it can do nothing.
func (e *env) checkNoRBAC(t *testing.T, ns string) {
	assert.Empty(t, strings.TrimSpace(e.kubectl(t, "-n", ns, "get", "roles,rolebindings", "-o", "name")), "no Roles or RoleBindings")
	out := e.kubectl(t, "get", "clusterrolebindings", "-o", "json")
	var crbs struct {
		Items []struct {
			Metadata struct{ Name string }
			Subjects []struct{ Kind, Name, Namespace string }
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &crbs))
	for _, b := range crbs.Items {
		for _, s := range b.Subjects {
			assert.False(t, s.Namespace == ns || s.Name == "cachemachine", "ClusterRoleBinding %s binds %s %s/%s", b.Metadata.Name, s.Kind, s.Namespace, s.Name)
		}
	}
	sa := "system:serviceaccount:" + ns + ":cachemachine"
	for _, verb := range [][]string{{"get", "pods"}, {"list", "nodes"}, {"create", "pods"}, {"get", "secrets"}} {
		out, _ := e.cluster.Kubectl(t.Context(), "auth", "can-i", verb[0], verb[1], "--as", sa, "-n", ns)
		assert.Equal(t, "no", strings.TrimSpace(string(out)), "can-i %s %s as %s", verb[0], verb[1], sa)
	}
}

// debugNode runs `cachemachine debug node -o json` in the agent's container.
func (e *env) debugNode(t *testing.T, ns string) agent.NodeView {
	t.Helper()
	var v agent.NodeView
	out := e.kubectl(t, "-n", ns, "exec", "ds/cachemachine", "--", "/cachemachine", "debug", "node", "-o", "json")
	require.NoError(t, json.Unmarshal([]byte(out), &v), "debug node -o json: %s", out)
	// The readable form works too.
	table := e.kubectl(t, "-n", ns, "exec", "ds/cachemachine", "--", "/cachemachine", "debug", "node")
	assert.Contains(t, table, devImages[0])
	return v
}

// checkMountPropagation: a container that starts after the agent appears in the agent's
// view of /run/containerd, and its root filesystem goes from there when it stops: the
// HostToContainer propagation of the containerd directory mount, without which stopped
// containers' filesystems would stay mounted in the agent's pod.
func (e *env) checkMountPropagation(t *testing.T, p pod) {
	ctx := t.Context()
	ns := "propagation-" + strings.ToLower(rand.Text()[:6])
	e.kubectl(t, "create", "namespace", ns)
	defer func() { _, _ = e.cluster.Kubectl(context.Background(), "delete", "namespace", ns, "--wait=false") }()
	e.kubectl(t, "-n", ns, "run", "sleeper", "--image="+e.cluster.PauseImage, "--restart=Never")
	e.kubectl(t, "-n", ns, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
	var sleeper pod
	require.NoError(t, json.Unmarshal([]byte(e.kubectl(t, "-n", ns, "get", "pod", "sleeper", "-o", "json")), &sleeper))
	rootfs := "/run/containerd/io.containerd.runtime.v2.task/k8s.io/" + sleeper.containerID() + "/rootfs"
	pid := e.agentProcess(t, p)
	mounted := func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		require.NoError(t, err)
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[4] == rootfs {
				return true
			}
		}
		return false
	}
	assert.True(t, mounted(), "%s (started after the agent) is visible in the agent's mount namespace", rootfs)
	_, err := e.cluster.Kubectl(ctx, "-n", ns, "delete", "pod", "sleeper", "--grace-period=0", "--wait=true", "--timeout=60s")
	require.NoError(t, err)
	eventually(t, 30*time.Second, "stopped container's rootfs unmounted in the agent's pod", func() error {
		if mounted() {
			return fmt.Errorf("%s still mounted in the agent's mount namespace", rootfs)
		}
		return nil
	})
}

// checkContainerdRestart restarts containerd under the running agent: the agent keeps its
// pod (same container, no restart), answers again, and talks to the new containerd (an
// image removed behind its back is pulled again).
func (e *env) checkContainerdRestart(t *testing.T, ns string, before pod) {
	ctx := t.Context()
	start := time.Now()
	require.NoError(t, e.cluster.RestartContainerd(ctx))
	t.Logf("containerd restarted in %s", time.Since(start).Round(100*time.Millisecond))

	// Only the new containerd can give the image back. `debug reconcile` makes the agent
	// look now rather than at its next resync; it reports the sources' state too, and the
	// dev overlay's SimpleRepoMan cannot resolve digests without the internet, so its exit
	// status is not the point here.
	require.NoError(t, e.cri.RemoveImage(ctx, devImages[0]))
	if out, err := e.cluster.Kubectl(ctx, "-n", ns, "exec", "ds/cachemachine", "--", "/cachemachine", "debug", "reconcile"); err != nil {
		t.Logf("debug reconcile: %v %s", err, out)
	}
	e.waitCached(t, devImages)
	eventually(t, 60*time.Second, "agent ready with a fresh inventory", func() error {
		v := e.debugNode(t, ns)
		if !v.Ready || v.LastError != "" {
			return fmt.Errorf("ready=%v last_error=%q", v.Ready, v.LastError)
		}
		return nil
	})
	e.waitAvailable(t, ns, devImages)

	after := e.agentPod(t, ns)
	assert.Equal(t, before.Metadata.UID, after.Metadata.UID, "same pod")
	assert.Equal(t, before.containerID(), after.containerID(), "same container")
	if assert.Len(t, after.Status.ContainerStatuses, 1) {
		assert.Zero(t, after.Status.ContainerStatuses[0].RestartCount, "no container restart")
	}
	assert.True(t, after.ready(), "pod Ready")
}

// gossipKey is a fresh key for the cachemachine-gossip-key Secret, as README step 1 makes.
func gossipKey() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// createNamespace creates ns as an operator does: labelled for hostPath volumes, with the
// gossip key Secret.
func (e *env) createNamespace(t *testing.T, ns string) {
	e.kubectl(t, "create", "namespace", ns)
	e.kubectl(t, "label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged")
	e.kubectl(t, "-n", ns, "create", "secret", "generic", "cachemachine-gossip-key", "--from-literal=key="+gossipKey())
}

// repoRoot is the checkout's root, for the shipped manifests and chart.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	return root
}
