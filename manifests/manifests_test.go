package manifests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/k8slab"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// printMemLimitEnv makes the test binary print the memory limit the Go runtime read from
// GOMEMLIMIT and exit: the GOMEMLIMIT test runs it to prove that the value the downward
// API produces is one Go accepts (a malformed GOMEMLIMIT is a fatal error at start-up).
const printMemLimitEnv = "CACHEMACHINE_MANIFESTS_PRINT_MEMLIMIT"

func TestMain(m *testing.M) {
	if os.Getenv(printMemLimitEnv) == "1" {
		fmt.Println(debug.SetMemoryLimit(-1))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Names the manifests, the config file and the agent's defaults agree on.
const (
	namespace      = "cachemachine"
	agentName      = "cachemachine"
	gossipService  = "cachemachine-gossip"
	statusService  = "cachemachine"
	gossipSecret   = "cachemachine-gossip-key"
	gossipKeyItem  = "key"
	configPath     = "/etc/cachemachine/config.yaml"
	containerdSock = "/run/containerd/containerd.sock"
	containerdRun  = "/run/containerd"
	httpPort       = 8080
	gossipPort     = 7946
	wiAnnotation   = "iam.gke.io/gcp-service-account"
)

var agentLabels = map[string]string{
	"app.kubernetes.io/name":      "cachemachine",
	"app.kubernetes.io/component": "agent",
}

// allowedHostPaths are the only host paths the agent may mount (design.md §7), with their
// hostPath type. Each is mounted at the same path in the container, so that the config's
// paths and `cachemachine debug` on the node mean the same files.
var allowedHostPaths = map[string]corev1.HostPathType{
	// containerd's directory, never the socket file: a file mount keeps the old socket's
	// inode when containerd restarts, and every CRI call is refused until the pod restarts.
	containerdRun:           corev1.HostPathDirectory,
	"/var/lib/cachemachine": corev1.HostPathDirectoryOrCreate,
	"/run/cachemachine":     corev1.HostPathDirectoryOrCreate,
}

// kustomization is what one rendered kustomization is expected to be.
type kustomization struct {
	name string
	dir  string
	// pullAuth and repoman are the config's agent.pull_auth and the type of its first source.
	pullAuth string
	repoman  string
	// workloadIdentity: the ServiceAccount carries the iam.gke.io annotation.
	workloadIdentity bool
	// nodeSelector must be part of the DaemonSet's nodeSelector.
	nodeSelector map[string]string
	// ingress, when set, is the Ingress the rendering must hold (none otherwise).
	ingress *ingressWant
	// noNamespace: the rendering holds no Namespace object (the Helm chart: the installer
	// creates the release's namespace).
	noNamespace bool
}

// ingressWant is what an Ingress for the status page is configured with.
type ingressWant struct {
	host, class string
	annotations map[string]string
}

var kustomizations = []kustomization{
	{
		name: "base", dir: "base",
		pullAuth: config.PullAuthNone, repoman: config.TypeRubinRepoMan,
		nodeSelector: map[string]string{"kubernetes.io/os": "linux"},
	},
	{
		name: "gke", dir: "overlays/gke",
		pullAuth: config.PullAuthGoogle, repoman: config.TypeRubinRepoGar, workloadIdentity: true,
		nodeSelector: map[string]string{"kubernetes.io/os": "linux", "cloud.google.com/gke-nodepool": "lab"},
	},
	{
		name: "dev", dir: "overlays/dev",
		pullAuth: config.PullAuthNone, repoman: config.TypeSimpleRepoMan,
		nodeSelector: map[string]string{"kubernetes.io/os": "linux"},
	},
	{
		name: "dev+ingress", dir: "testdata/ingress",
		pullAuth: config.PullAuthNone, repoman: config.TypeSimpleRepoMan,
		nodeSelector: map[string]string{"kubernetes.io/os": "linux"},
		ingress: &ingressWant{
			host: "data.example.org", class: "public-nginx",
			annotations: map[string]string{"nginx.ingress.kubernetes.io/limit-rps": "20"},
		},
	},
}

// TestEveryOverlayIsChecked fails when an overlay is added without a row above.
func TestEveryOverlayIsChecked(t *testing.T) {
	t.Parallel()
	found, err := filepath.Glob("overlays/*/kustomization.yaml")
	require.NoError(t, err)
	var dirs []string
	for _, k := range kustomizations {
		dirs = append(dirs, k.dir)
	}
	for _, f := range found {
		assert.Contains(t, dirs, filepath.ToSlash(filepath.Dir(f)), "add %s to kustomizations", filepath.Dir(f))
	}
	assert.FileExists(t, "base/kustomization.yaml")

	// Every component is rendered by some row (through a testdata overlay).
	components, err := filepath.Glob("components/*/kustomization.yaml")
	require.NoError(t, err)
	for _, comp := range components {
		used := false
		for _, k := range kustomizations {
			b, err := os.ReadFile(filepath.Join(k.dir, "kustomization.yaml"))
			require.NoError(t, err)
			used = used || strings.Contains(string(b), filepath.ToSlash(filepath.Dir(comp)))
		}
		assert.True(t, used, "component %s is rendered by no row of kustomizations: add a testdata overlay", filepath.Dir(comp))
	}
}

func TestManifests(t *testing.T) {
	t.Parallel()
	for _, tt := range kustomizations {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkAll(t, tt, decodeAll(t, render(t, tt.dir)))
		})
	}
}

// checkAll runs every check on one rendering (of a kustomization or of the Helm chart).
func checkAll(t *testing.T, tt kustomization, objs *objects) {
	t.Helper()
	ds := objs.agent(t)
	pod := ds.Spec.Template.Spec
	c := agentContainer(t, pod)
	t.Run("objects", func(t *testing.T) { checkObjects(t, tt, objs) })
	t.Run("daemonset", func(t *testing.T) { checkDaemonSet(t, tt, objs, ds) })
	t.Run("security", func(t *testing.T) { checkSecurity(t, pod) })
	t.Run("env", func(t *testing.T) { checkEnv(t, c) })
	t.Run("gomemlimit", func(t *testing.T) { checkGOMEMLIMIT(t, c) })
	t.Run("probes and ports", func(t *testing.T) { checkProbesAndPorts(t, c) })
	t.Run("resources", func(t *testing.T) { checkResources(t, c) })
	t.Run("volumes", func(t *testing.T) { checkVolumes(t, pod, c) })
	t.Run("services", func(t *testing.T) { checkServices(t, objs, pod, c) })
	t.Run("networkpolicy", func(t *testing.T) { checkNetworkPolicy(t, objs, c) })
	t.Run("secrets", func(t *testing.T) { checkSecrets(t, objs) })
	t.Run("serviceaccount", func(t *testing.T) { checkServiceAccount(t, tt, objs, pod) })
	t.Run("config", func(t *testing.T) { checkConfig(t, tt, objs, pod, c) })
	t.Run("dockerfile", func(t *testing.T) { checkDockerfile(t, c) })
	t.Run("ingress", func(t *testing.T) { checkIngress(t, tt.ingress, objs, c) })
}

// render runs `kubectl kustomize dir` with the kubectl the lab Kubernetes builds and caches
// (k8slab.KubernetesVersion; `make k8s-lab`, which make test runs first): a machine's own
// kubectl may be too old for the overlays (Debian's 1.20 knows neither "components" nor the
// patches' "options"). Without it the test is skipped, except in CI (CI=true), where the
// manifests must be checked.
func render(t *testing.T, dir string) []byte {
	t.Helper()
	kubectl, err := k8slab.CachedKubectl()
	if err != nil {
		lab.SkipOrFail(t, fmt.Sprintf("%v: the manifests cannot be rendered", err))
	}
	cmd := exec.CommandContext(t.Context(), kubectl, "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "kubectl kustomize %s: %s", dir, stderr.String())
	return out
}

// objects is one rendered kustomization, decoded by kind.
type objects struct {
	namespaces      []corev1.Namespace
	serviceAccounts []corev1.ServiceAccount
	configMaps      []corev1.ConfigMap
	secrets         []corev1.Secret
	services        []corev1.Service
	daemonSets      []appsv1.DaemonSet
	networkPolicies []networkingv1.NetworkPolicy
	ingresses       []networkingv1.Ingress
	// meta is the metadata of every object, for the checks that apply to all of them.
	meta []objectMeta
}

type objectMeta struct {
	kind, name, namespace string
	labels                map[string]string
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeAll splits the multi-document output and decodes every object strictly into its
// k8s.io/api type. RBAC objects and kinds this
// test does not know are errors.
func decodeAll(t *testing.T, out []byte) *objects {
	t.Helper()
	objs := &objects{}
	for i, doc := range docSeparator.Split(string(out), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(doc), &head), "document %d", i)
		decode := func(into any) {
			t.Helper()
			require.NoError(t, decodeStrict([]byte(doc), into), "document %d: %s %s", i, head.APIVersion, head.Kind)
		}
		gv := head.APIVersion + ", Kind=" + head.Kind
		switch {
		case gv == "v1, Kind=Namespace":
			var o corev1.Namespace
			decode(&o)
			objs.namespaces = append(objs.namespaces, o)
			objs.add(head.Kind, o.ObjectMeta.Name, o.ObjectMeta.Namespace, o.ObjectMeta.Labels)
		case gv == "v1, Kind=ServiceAccount":
			var o corev1.ServiceAccount
			decode(&o)
			objs.serviceAccounts = append(objs.serviceAccounts, o)
			objs.add(head.Kind, o.Name, o.Namespace, o.Labels)
		case gv == "v1, Kind=ConfigMap":
			var o corev1.ConfigMap
			decode(&o)
			objs.configMaps = append(objs.configMaps, o)
			objs.add(head.Kind, o.Name, o.Namespace, o.Labels)
		case gv == "v1, Kind=Secret":
			var o corev1.Secret
			decode(&o)
			objs.secrets = append(objs.secrets, o)
			objs.add(head.Kind, o.Name, o.Namespace, o.Labels)
		case gv == "v1, Kind=Service":
			var o corev1.Service
			decode(&o)
			objs.services = append(objs.services, o)
			objs.add(head.Kind, o.Name, o.Namespace, o.Labels)
		case gv == "apps/v1, Kind=DaemonSet":
			var o appsv1.DaemonSet
			decode(&o)
			objs.daemonSets = append(objs.daemonSets, o)
			objs.add(head.Kind, o.Name, o.Namespace, o.Labels)
		case gv == "networking.k8s.io/v1, Kind=NetworkPolicy":
			var o networkingv1.NetworkPolicy
			decode(&o)
			objs.networkPolicies = append(objs.networkPolicies, o)
			objs.add(head.Kind, o.Name, o.Namespace, o.Labels)
		case gv == "networking.k8s.io/v1, Kind=Ingress":
			var o networkingv1.Ingress
			decode(&o)
			objs.ingresses = append(objs.ingresses, o)
			objs.add(head.Kind, o.Name, o.Namespace, o.Labels)
		case strings.HasPrefix(head.APIVersion, "rbac.authorization.k8s.io/"):
			t.Errorf("document %d: %s: no RBAC at all: the agent never calls the Kubernetes API (design.md §7)", i, gv)
		default:
			t.Errorf("document %d: %s: a kind this test does not check; decode and check it here", i, gv)
		}
	}
	require.NotEmpty(t, objs.meta, "kubectl kustomize rendered nothing")
	return objs
}

// decodeStrict decodes one YAML document as the API server would, and stricter: field names
// are case-sensitive (encoding/json alone would take readOnlyRootFileSystem), and unknown or
// duplicate fields are errors rather than dropped.
func decodeStrict(doc []byte, into any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, into, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

func (o *objects) add(kind, name, ns string, labels map[string]string) {
	o.meta = append(o.meta, objectMeta{kind: kind, name: name, namespace: ns, labels: labels})
}

func (o *objects) agent(t *testing.T) appsv1.DaemonSet {
	t.Helper()
	require.Len(t, o.daemonSets, 1, "one DaemonSet, the agent")
	ds := o.daemonSets[0]
	require.Equal(t, agentName, ds.Name)
	return ds
}

func (o *objects) service(t *testing.T, name string) corev1.Service {
	t.Helper()
	for _, s := range o.services {
		if s.Name == name {
			return s
		}
	}
	require.Failf(t, "missing Service", "no Service %q", name)
	return corev1.Service{}
}

func (o *objects) configMap(name string) (corev1.ConfigMap, bool) {
	for _, cm := range o.configMaps {
		if cm.Name == name {
			return cm, true
		}
	}
	return corev1.ConfigMap{}, false
}

func agentContainer(t *testing.T, pod corev1.PodSpec) corev1.Container {
	t.Helper()
	require.Len(t, pod.Containers, 1, "one container, the agent")
	require.Equal(t, "agent", pod.Containers[0].Name)
	return pod.Containers[0]
}

func checkObjects(t *testing.T, tt kustomization, objs *objects) {
	if tt.noNamespace {
		assert.Empty(t, objs.namespaces)
	} else {
		require.Len(t, objs.namespaces, 1)
		assert.Equal(t, namespace, objs.namespaces[0].Name)
	}
	for _, m := range objs.meta {
		assert.Equal(t, "cachemachine", m.labels["app.kubernetes.io/name"], "%s %s: label app.kubernetes.io/name", m.kind, m.name)
		if m.kind == "Namespace" {
			continue
		}
		assert.Equal(t, namespace, m.namespace, "%s %s: namespace", m.kind, m.name)
		assert.Equal(t, "agent", m.labels["app.kubernetes.io/component"], "%s %s: label app.kubernetes.io/component", m.kind, m.name)
	}
}

func checkDaemonSet(t *testing.T, tt kustomization, objs *objects, ds appsv1.DaemonSet) {
	pod := ds.Spec.Template.Spec
	require.NotNil(t, ds.Spec.Selector)
	assert.Equal(t, agentLabels, ds.Spec.Selector.MatchLabels, "selector")
	assert.True(t, selects(agentLabels, ds.Spec.Template.Labels), "template labels %v", ds.Spec.Template.Labels)
	assert.True(t, selects(agentLabels, ds.Labels), "labels %v", ds.Labels)

	assert.Equal(t, appsv1.RollingUpdateDaemonSetStrategyType, ds.Spec.UpdateStrategy.Type)
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; assert.NotNil(t, ru) {
		if assert.NotNil(t, ru.MaxUnavailable, "maxUnavailable") {
			assert.NotContains(t, []string{"0", "0%"}, ru.MaxUnavailable.String(), "maxUnavailable must let the rollout progress")
		}
		if ru.MaxSurge != nil {
			assert.Contains(t, []string{"0", "0%"}, ru.MaxSurge.String(), "maxSurge: two agents on a node would share the debug socket and the state dir")
		}
	}

	assert.False(t, pod.HostNetwork, "hostNetwork")
	assert.False(t, pod.HostPID, "hostPID")
	assert.False(t, pod.HostIPC, "hostIPC")
	if assert.NotNil(t, pod.TerminationGracePeriodSeconds, "terminationGracePeriodSeconds") {
		assert.GreaterOrEqual(t, *pod.TerminationGracePeriodSeconds, int64(20), "time for a graceful memberlist leave")
	}
	for k, v := range tt.nodeSelector {
		assert.Equal(t, v, pod.NodeSelector[k], "nodeSelector %s", k)
	}
	assert.Empty(t, pod.InitContainers)

	c := agentContainer(t, pod)
	assert.Equal(t, []string{"agent", "--config", configPath}, c.Args, "args")
	assert.NotEmpty(t, c.Image)
	assert.Regexp(t, `:[A-Za-z0-9_][A-Za-z0-9_.-]*$|@sha256:[0-9a-f]{64}$`, c.Image, "image has an explicit tag or digest")
	assert.False(t, strings.HasSuffix(c.Image, ":latest"), "image %s: no :latest", c.Image)
	assert.Equal(t, corev1.PullIfNotPresent, c.ImagePullPolicy)
}

func checkSecurity(t *testing.T, pod corev1.PodSpec) {
	psc := pod.SecurityContext
	require.NotNil(t, psc, "pod securityContext")
	require.NotNil(t, psc.SeccompProfile, "pod seccompProfile")
	assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, psc.SeccompProfile.Type)
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		require.NotNil(t, sc, "container %s securityContext", c.Name)
		assert.Equal(t, ptrTrue, boolOf(sc.ReadOnlyRootFilesystem), "%s: readOnlyRootFilesystem", c.Name)
		assert.Equal(t, ptrFalse, boolOf(sc.AllowPrivilegeEscalation), "%s: allowPrivilegeEscalation", c.Name)
		assert.NotEqual(t, ptrTrue, boolOf(sc.Privileged), "%s: privileged", c.Name)
		if assert.NotNil(t, sc.Capabilities, "%s: capabilities", c.Name) {
			assert.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop, "%s: capabilities.drop", c.Name)
			assert.Empty(t, sc.Capabilities.Add, "%s: capabilities.add", c.Name)
		}
		if sc.SeccompProfile != nil {
			assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, sc.SeccompProfile.Type, "%s: seccompProfile", c.Name)
		}
		// Root, and only root: the CRI socket is root's (daemonset.yaml says why).
		uid := psc.RunAsUser
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if assert.NotNil(t, uid, "%s: runAsUser", c.Name) {
			assert.Equal(t, int64(0), *uid, "%s: runAsUser", c.Name)
		}
		assert.NotEqual(t, ptrTrue, boolOf(sc.RunAsNonRoot), "%s: runAsNonRoot contradicts runAsUser 0", c.Name)
	}
}

// tristate distinguishes an unset *bool from false: a security setting must be explicit.
type tristate int

const (
	ptrNil tristate = iota
	ptrFalse
	ptrTrue
)

func boolOf(b *bool) tristate {
	switch {
	case b == nil:
		return ptrNil
	case *b:
		return ptrTrue
	default:
		return ptrFalse
	}
}

func checkEnv(t *testing.T, c corev1.Container) {
	fields := map[string]string{
		"NODE_NAME":     "spec.nodeName",
		"POD_IP":        "status.podIP",
		"POD_NAMESPACE": "metadata.namespace",
	}
	for name, fieldPath := range fields {
		e, ok := envVar(c, name)
		if !assert.True(t, ok, "env %s", name) {
			continue
		}
		if assert.NotNil(t, e.ValueFrom, "env %s from the downward API", name) && assert.NotNil(t, e.ValueFrom.FieldRef, "env %s fieldRef", name) {
			assert.Equal(t, fieldPath, e.ValueFrom.FieldRef.FieldPath, "env %s", name)
		}
	}
	e, ok := envVar(c, "GOMEMLIMIT")
	require.True(t, ok, "env GOMEMLIMIT")
	require.NotNil(t, e.ValueFrom, "GOMEMLIMIT from the downward API")
	ref := e.ValueFrom.ResourceFieldRef
	require.NotNil(t, ref, "GOMEMLIMIT resourceFieldRef")
	assert.Equal(t, "limits.memory", ref.Resource)
	assert.Contains(t, []string{"", c.Name}, ref.ContainerName)
	assert.Equal(t, int64(1), divisor(ref), "divisor 1: the value is a byte count, which GOMEMLIMIT reads as bytes")
}

func envVar(c corev1.Container, name string) (corev1.EnvVar, bool) {
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == name })
	if i < 0 {
		return corev1.EnvVar{}, false
	}
	return c.Env[i], true
}

// divisor returns a resourceFieldRef's divisor; unset means 1.
func divisor(ref *corev1.ResourceFieldSelector) int64 {
	if ref.Divisor.IsZero() {
		return 1
	}
	return ref.Divisor.Value()
}

// checkGOMEMLIMIT computes the value the kubelet gives GOMEMLIMIT (the limit divided by the
// divisor, rounded up, as a decimal integer) and starts a Go program with it.
func checkGOMEMLIMIT(t *testing.T, c corev1.Container) {
	e, ok := envVar(c, "GOMEMLIMIT")
	require.True(t, ok && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil, "GOMEMLIMIT from a resourceFieldRef")
	limit := c.Resources.Limits.Memory()
	require.False(t, limit.IsZero(), "limits.memory: without it the downward API gives the node's allocatable memory")
	d := divisor(e.ValueFrom.ResourceFieldRef)
	value := strconv.FormatInt(int64(math.Ceil(float64(limit.Value())/float64(d))), 10)

	cmd := exec.CommandContext(t.Context(), os.Args[0])
	// GORACE: a race-enabled binary otherwise sleeps 1 s before it exits.
	cmd.Env = append(os.Environ(), printMemLimitEnv+"=1", "GOMEMLIMIT="+value, "GORACE=atexit_sleep_ms=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "GOMEMLIMIT=%s: %s", value, out)
	assert.Equal(t, strconv.FormatInt(limit.Value(), 10), strings.TrimSpace(string(out)), "GOMEMLIMIT=%s must be the memory limit in bytes", value)
}

func checkProbesAndPorts(t *testing.T, c corev1.Container) {
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"liveness", c.LivenessProbe, "/healthz"},
		{"readiness", c.ReadinessProbe, "/readyz"},
	} {
		if !assert.NotNil(t, p.probe, "%sProbe", p.name) || !assert.NotNil(t, p.probe.HTTPGet, "%sProbe.httpGet", p.name) {
			continue
		}
		assert.Equal(t, p.path, p.probe.HTTPGet.Path, "%sProbe path", p.name)
		assert.Equal(t, httpPort, containerPort(t, c, p.probe.HTTPGet.Port.String(), corev1.ProtocolTCP), "%sProbe port", p.name)
	}

	want := []string{fmt.Sprintf("%d/TCP", httpPort), fmt.Sprintf("%d/TCP", gossipPort), fmt.Sprintf("%d/UDP", gossipPort)}
	var got []string
	for _, p := range c.Ports {
		got = append(got, fmt.Sprintf("%d/%s", p.ContainerPort, protocol(p.Protocol)))
		assert.Zero(t, p.HostPort, "port %s: no hostPort", p.Name)
	}
	assert.ElementsMatch(t, want, got, "container ports")
}

// containerPort resolves a port number or name to the container's port number; 0 if none.
func containerPort(t *testing.T, c corev1.Container, port string, proto corev1.Protocol) int {
	t.Helper()
	if n, err := strconv.Atoi(port); err == nil {
		return n
	}
	for _, p := range c.Ports {
		if p.Name == port && protocol(p.Protocol) == proto {
			return int(p.ContainerPort)
		}
	}
	t.Errorf("no %s container port named %q", proto, port)
	return 0
}

func protocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func checkResources(t *testing.T, c corev1.Container) {
	r := c.Resources
	assert.False(t, r.Requests.Cpu().IsZero(), "requests.cpu")
	assert.False(t, r.Requests.Memory().IsZero(), "requests.memory")
	require.False(t, r.Limits.Memory().IsZero(), "limits.memory")
	assert.LessOrEqual(t, r.Requests.Memory().Cmp(*r.Limits.Memory()), 0, "requests.memory <= limits.memory")
}

// checkVolumes allows only the listed host paths, each at the same path in the container,
// writable only where the agent writes, and asserts that nothing else is writable.
func checkVolumes(t *testing.T, pod corev1.PodSpec, c corev1.Container) {
	seen := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.HostPath == nil {
			assert.True(t, v.ConfigMap != nil || v.Secret != nil || v.Projected != nil, "volume %s: only hostPath, configMap, secret and projected volumes", v.Name)
			continue
		}
		want, ok := allowedHostPaths[v.HostPath.Path]
		if !assert.True(t, ok, "volume %s: hostPath %s is not one the agent needs", v.Name, v.HostPath.Path) {
			continue
		}
		seen[v.HostPath.Path] = true
		if assert.NotNil(t, v.HostPath.Type, "volume %s: hostPath type", v.Name) {
			assert.Equal(t, want, *v.HostPath.Type, "volume %s: hostPath type", v.Name)
		}
		mounts := mountsOf(c, v.Name)
		if assert.Len(t, mounts, 1, "volume %s mounted once", v.Name) {
			assert.Equal(t, v.HostPath.Path, mounts[0].MountPath, "volume %s: same path as on the host", v.Name)
			assert.Empty(t, mounts[0].SubPath, "volume %s: subPath", v.Name)
		}
	}
	for p := range allowedHostPaths {
		assert.True(t, seen[p], "hostPath %s not mounted", p)
	}
}

func mountsOf(c corev1.Container, volume string) []corev1.VolumeMount {
	var out []corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			out = append(out, m)
		}
	}
	return out
}

func checkServices(t *testing.T, objs *objects, pod corev1.PodSpec, c corev1.Container) {
	labels := objs.agent(t).Spec.Template.Labels
	assert.Len(t, objs.services, 2)

	g := objs.service(t, gossipService)
	assert.Equal(t, corev1.ClusterIPNone, g.Spec.ClusterIP, "%s is headless", gossipService)
	assert.True(t, g.Spec.PublishNotReadyAddresses, "%s publishes not-ready agents: they are ready only after they joined", gossipService)
	assert.Equal(t, agentLabels, g.Spec.Selector)
	assert.True(t, selects(g.Spec.Selector, labels))
	var got []string
	for _, p := range g.Spec.Ports {
		got = append(got, fmt.Sprintf("%d->%d/%s", p.Port, containerPort(t, c, targetPort(p), protocol(p.Protocol)), protocol(p.Protocol)))
	}
	assert.ElementsMatch(t, []string{
		fmt.Sprintf("%d->%d/TCP", gossipPort, gossipPort),
		fmt.Sprintf("%d->%d/UDP", gossipPort, gossipPort),
	}, got, "%s ports", gossipService)

	s := objs.service(t, statusService)
	assert.Contains(t, []corev1.ServiceType{"", corev1.ServiceTypeClusterIP}, s.Spec.Type)
	assert.NotEqual(t, corev1.ClusterIPNone, s.Spec.ClusterIP)
	assert.Equal(t, agentLabels, s.Spec.Selector)
	if assert.Len(t, s.Spec.Ports, 1) {
		p := s.Spec.Ports[0]
		assert.Equal(t, int32(80), p.Port)
		assert.Equal(t, corev1.ProtocolTCP, protocol(p.Protocol))
		assert.Equal(t, httpPort, containerPort(t, c, targetPort(p), corev1.ProtocolTCP), "%s targetPort", statusService)
	}
}

// targetPort is a Service port's target as a number or name; unset means the port itself.
func targetPort(p corev1.ServicePort) string {
	if tp := p.TargetPort.String(); tp != "" && tp != "0" {
		return tp
	}
	return strconv.Itoa(int(p.Port))
}

// checkIngress: the optional Ingress exposes only the status API's /cachemachine path
// (not /metrics, /healthz or /readyz) of the status Service, with the configured host, class
// and annotations.
func checkIngress(t *testing.T, want *ingressWant, objs *objects, c corev1.Container) {
	if want == nil {
		assert.Empty(t, objs.ingresses, "no Ingress unless asked for")
		return
	}
	require.Len(t, objs.ingresses, 1, "one Ingress")
	ing := objs.ingresses[0]
	assert.Equal(t, namespace, ing.Namespace)
	if assert.NotNil(t, ing.Spec.IngressClassName, "ingressClassName") {
		assert.Equal(t, want.class, *ing.Spec.IngressClassName)
	}
	for k, v := range want.annotations {
		assert.Equal(t, v, ing.Annotations[k], "annotation %s", k)
	}
	assert.Nil(t, ing.Spec.DefaultBackend, "no default backend: only /cachemachine")
	require.Len(t, ing.Spec.Rules, 1, "one rule")
	r := ing.Spec.Rules[0]
	assert.Equal(t, want.host, r.Host, "host")
	require.NotNil(t, r.HTTP)
	require.Len(t, r.HTTP.Paths, 1, "one path")
	p := r.HTTP.Paths[0]
	assert.Equal(t, "/cachemachine", p.Path)
	if assert.NotNil(t, p.PathType) {
		assert.Equal(t, networkingv1.PathTypePrefix, *p.PathType, "Prefix: /cachemachine and below, not /cachemachinex")
	}
	require.NotNil(t, p.Backend.Service, "backend is a Service")
	assert.Equal(t, statusService, p.Backend.Service.Name)
	s := objs.service(t, statusService)
	bp := p.Backend.Service.Port
	var sp *corev1.ServicePort
	for i := range s.Spec.Ports {
		if bp.Name != "" && s.Spec.Ports[i].Name == bp.Name || bp.Name == "" && s.Spec.Ports[i].Port == bp.Number {
			sp = &s.Spec.Ports[i]
		}
	}
	if assert.NotNil(t, sp, "backend port %v is a port of Service %s", bp, statusService) {
		assert.Equal(t, httpPort, containerPort(t, c, targetPort(*sp), corev1.ProtocolTCP), "backend reaches the status API")
	}
}

// checkNetworkPolicy: gossip is admitted only from agent pods, the status port from any
// pod in the cluster.
func checkNetworkPolicy(t *testing.T, objs *objects, c corev1.Container) {
	require.Len(t, objs.networkPolicies, 1, "one NetworkPolicy")
	np := objs.networkPolicies[0]
	assert.Equal(t, agentLabels, np.Spec.PodSelector.MatchLabels, "podSelector")
	assert.Empty(t, np.Spec.PodSelector.MatchExpressions)
	assert.Contains(t, np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)

	admits := func(r networkingv1.NetworkPolicyIngressRule, port int, proto corev1.Protocol) bool {
		if len(r.Ports) == 0 {
			return true
		}
		for _, p := range r.Ports {
			if protocol(derefProto(p.Protocol)) != proto {
				continue
			}
			if p.Port == nil {
				return true
			}
			n := containerPort(t, c, p.Port.String(), proto)
			end := n
			if p.EndPort != nil {
				end = int(*p.EndPort)
			}
			if n <= port && port <= end {
				return true
			}
		}
		return false
	}
	fromAgentsOnly := func(r networkingv1.NetworkPolicyIngressRule) bool {
		if len(r.From) == 0 {
			return false // no peers: from everywhere
		}
		for _, peer := range r.From {
			if peer.NamespaceSelector != nil || peer.IPBlock != nil || peer.PodSelector == nil ||
				len(peer.PodSelector.MatchExpressions) > 0 || !selects(agentLabels, peer.PodSelector.MatchLabels) ||
				!selects(peer.PodSelector.MatchLabels, agentLabels) {
				return false
			}
		}
		return true
	}
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		admitted := false
		for i, r := range np.Spec.Ingress {
			if !admits(r, gossipPort, proto) {
				continue
			}
			admitted = true
			assert.True(t, fromAgentsOnly(r), "ingress[%d] admits gossip %d/%s from other than agent pods", i, gossipPort, proto)
		}
		assert.True(t, admitted, "gossip %d/%s not admitted", gossipPort, proto)
	}
	admitted := false
	for _, r := range np.Spec.Ingress {
		admitted = admitted || admits(r, httpPort, corev1.ProtocolTCP)
	}
	assert.True(t, admitted, "status port %d/TCP not admitted", httpPort)
}

func derefProto(p *corev1.Protocol) corev1.Protocol {
	if p == nil {
		return ""
	}
	return *p
}

// checkSecrets: the gossip key is never in git, so no rendered Secret carries data.
func checkSecrets(t *testing.T, objs *objects) {
	for _, s := range objs.secrets {
		assert.Empty(t, s.Data, "Secret %s carries data: secrets are created by the operator, never committed", s.Name)
		assert.Empty(t, s.StringData, "Secret %s carries stringData: secrets are created by the operator, never committed", s.Name)
	}
}

func checkServiceAccount(t *testing.T, tt kustomization, objs *objects, pod corev1.PodSpec) {
	assert.Equal(t, agentName, pod.ServiceAccountName)
	assert.Equal(t, ptrFalse, boolOf(pod.AutomountServiceAccountToken), "pod automountServiceAccountToken")
	require.Len(t, objs.serviceAccounts, 1)
	sa := objs.serviceAccounts[0]
	assert.Equal(t, pod.ServiceAccountName, sa.Name)
	assert.Equal(t, ptrFalse, boolOf(sa.AutomountServiceAccountToken), "ServiceAccount automountServiceAccountToken")
	assert.Empty(t, sa.Secrets)
	assert.Empty(t, pod.ImagePullSecrets, "no image pull secret (GAR pulls use workload identity)")
	gsa, ok := sa.Annotations[wiAnnotation]
	if !tt.workloadIdentity {
		assert.False(t, ok, "%s belongs in the gke overlay", wiAnnotation)
		return
	}
	assert.Regexp(t, `^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\.iam\.gserviceaccount\.com$`, gsa, wiAnnotation)
}

// checkConfig decodes the mounted config.yaml with the config package, validates it as the
// agent would (with the downward API's environment), and checks that every path and port
// it names is what the DaemonSet provides.
func checkConfig(t *testing.T, tt kustomization, objs *objects, pod corev1.PodSpec, c corev1.Container) {
	src, ok := fileAt(pod, c, configPath)
	require.True(t, ok, "%s is not mounted", configPath)
	require.Equal(t, "configMap", src.kind, "%s comes from a ConfigMap", configPath)
	cm, ok := objs.configMap(src.name)
	require.True(t, ok, "ConfigMap %s (mounted at %s) is not rendered", src.name, configPath)
	data, ok := cm.Data[src.key]
	require.True(t, ok, "ConfigMap %s has no key %s", cm.Name, src.key)

	cfg, err := config.Parse("ConfigMap "+cm.Name+" "+src.key, []byte(data))
	require.NoError(t, err)
	env := map[string]string{"NODE_NAME": "node-1", "POD_IP": "10.1.2.3"}
	cfg.ApplyEnv(func(k string) string { return env[k] })
	require.NoError(t, cfg.Validate())

	assert.Equal(t, tt.pullAuth, cfg.Agent.PullAuth, "agent.pull_auth")
	if assert.NotEmpty(t, cfg.Repomen, "repomen") {
		assert.Equal(t, tt.repoman, cfg.Repomen[0].Type, "repomen[0].type")
	}
	if cfg.Agent.PullAuth == config.PullAuthDockerconfig {
		_, ok := fileAt(pod, c, cfg.Agent.Dockerconfig)
		assert.True(t, ok, "agent.dockerconfig %s is not mounted", cfg.Agent.Dockerconfig)
	}

	// The CRI socket is the hostPath Socket.
	sock, ok := strings.CutPrefix(cfg.Agent.CRISocket, "unix://")
	if !ok {
		sock = cfg.Agent.CRISocket
	}
	assert.Equal(t, containerdSock, sock, "agent.cri_socket")
	checkCRISocketMount(t, pod, c, sock)
	// The agent writes only to host directories; the root filesystem is read-only.
	assert.Equal(t, "/var/lib/cachemachine", hostDirOf(t, pod, c, cfg.Agent.StateDir), "agent.state_dir")
	// `cachemachine debug` without --socket, in the pod and on the node, finds the socket.
	assert.Equal(t, config.Default().Agent.DebugSocket, cfg.Agent.DebugSocket, "agent.debug_socket")
	assert.Equal(t, path.Dir(cfg.Agent.DebugSocket), hostDirOf(t, pod, c, path.Dir(cfg.Agent.DebugSocket)), "agent.debug_socket's dir")

	_, port, err := net.SplitHostPort(cfg.HTTP.Listen)
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(httpPort), port, "http.listen")

	require.True(t, cfg.Cluster.Enabled, "cluster.enabled")
	assert.False(t, cfg.Cluster.InsecureGossip, "cluster.insecure_gossip")
	assert.Equal(t, gossipPort, cfg.Cluster.BindPort, "cluster.bind_port")
	assert.Equal(t, env["POD_IP"], cfg.Cluster.AdvertiseAddr, "cluster.advertise_addr comes from $POD_IP")
	assert.Contains(t, cfg.Cluster.Join, fmt.Sprintf("%s.%s.svc.cluster.local", gossipService, namespace), "cluster.join names the headless Service")
	key, ok := fileAt(pod, c, cfg.Cluster.GossipKeyFile)
	if assert.True(t, ok, "cluster.gossip_key_file %s is not mounted", cfg.Cluster.GossipKeyFile) {
		assert.Equal(t, fileSource{kind: "secret", name: gossipSecret, key: gossipKeyItem}, key, "cluster.gossip_key_file")
	}
}

// checkCRISocketMount: the CRI socket is reached through a mount of its host directory
// (type Directory, the same path in the container), read-only, with HostToContainer
// propagation so that container root filesystems that containerd unmounts below it do not
// stay mounted in the agent's pod.
func checkCRISocketMount(t *testing.T, pod corev1.PodSpec, c corev1.Container, sock string) {
	t.Helper()
	var found bool
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 || pod.Volumes[i].HostPath == nil {
			continue
		}
		if sock == m.MountPath {
			t.Errorf("agent.cri_socket %s is mounted as a file (volume %s): it goes stale when containerd restarts; mount its directory", sock, m.Name)
			continue
		}
		if path.Dir(sock) != m.MountPath {
			continue
		}
		found = true
		hp := pod.Volumes[i].HostPath
		assert.Equal(t, m.MountPath, hp.Path, "volume %s: same path as on the host", m.Name)
		if assert.NotNil(t, hp.Type, "volume %s: hostPath type", m.Name) {
			assert.Equal(t, corev1.HostPathDirectory, *hp.Type, "volume %s: hostPath type", m.Name)
		}
		assert.True(t, m.ReadOnly, "volume %s: read-only (connecting to a socket needs no write access)", m.Name)
		if assert.NotNil(t, m.MountPropagation, "volume %s: mountPropagation", m.Name) {
			assert.Equal(t, corev1.MountPropagationHostToContainer, *m.MountPropagation, "volume %s: mountPropagation", m.Name)
		}
	}
	assert.True(t, found, "agent.cri_socket %s: its directory is not a hostPath mount", sock)
}

// fileSource is where a file in the container comes from.
type fileSource struct {
	kind, name, key string // kind: configMap or secret
}

// fileAt finds the ConfigMap or Secret key that the container sees at file.
func fileAt(pod corev1.PodSpec, c corev1.Container, file string) (fileSource, bool) {
	for _, m := range c.VolumeMounts {
		var rel string
		switch {
		case m.SubPath != "" && file == m.MountPath:
			rel = m.SubPath
		case m.SubPath == "" && strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/"):
			rel = strings.TrimPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		default:
			continue
		}
		i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			continue
		}
		v := pod.Volumes[i]
		var sources []corev1.VolumeProjection
		switch {
		case v.Projected != nil:
			sources = v.Projected.Sources
		case v.ConfigMap != nil:
			sources = []corev1.VolumeProjection{{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: v.ConfigMap.LocalObjectReference, Items: v.ConfigMap.Items}}}
		case v.Secret != nil:
			sources = []corev1.VolumeProjection{{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: v.Secret.SecretName}, Items: v.Secret.Items}}}
		}
		for _, s := range sources {
			switch {
			case s.ConfigMap != nil:
				if key, ok := itemKey(s.ConfigMap.Items, rel); ok {
					return fileSource{"configMap", s.ConfigMap.Name, key}, true
				}
			case s.Secret != nil:
				if key, ok := itemKey(s.Secret.Items, rel); ok {
					return fileSource{"secret", s.Secret.Name, key}, true
				}
			}
		}
	}
	return fileSource{}, false
}

// itemKey returns the key projected to rel: through items if there are any, else every key
// is a file of its own name.
func itemKey(items []corev1.KeyToPath, rel string) (string, bool) {
	if len(items) == 0 {
		return rel, !strings.Contains(rel, "/")
	}
	for _, it := range items {
		if path.Clean(it.Path) == rel {
			return it.Key, true
		}
	}
	return "", false
}

// hostDirOf returns the host path of the writable hostPath mount holding dir, "" if none.
func hostDirOf(t *testing.T, pod corev1.PodSpec, c corev1.Container, dir string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if dir != m.MountPath && !strings.HasPrefix(dir, m.MountPath+"/") {
			continue
		}
		i := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 || pod.Volumes[i].HostPath == nil {
			continue
		}
		assert.False(t, m.ReadOnly, "%s must be writable", dir)
		return pod.Volumes[i].HostPath.Path + strings.TrimPrefix(dir, m.MountPath)
	}
	return ""
}

// selects reports whether every key of selector has its value in labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return len(selector) > 0
}

// checkDockerfile: the image's ENTRYPOINT and CMD are what the DaemonSet runs, so the image
// works with or without the DaemonSet's command and args.
func checkDockerfile(t *testing.T, c corev1.Container) {
	data, err := os.ReadFile("../Dockerfile")
	require.NoError(t, err)
	execForm := func(instr string) []string {
		re := regexp.MustCompile(`(?m)^` + instr + `\s+(\[.*\])\s*$`)
		m := re.FindAllStringSubmatch(string(data), -1)
		require.NotEmpty(t, m, "Dockerfile has no %s in exec form", instr)
		var out []string
		require.NoError(t, json.Unmarshal([]byte(m[len(m)-1][1]), &out), "Dockerfile %s", instr)
		return out
	}
	assert.Equal(t, c.Command, execForm("ENTRYPOINT"), "DaemonSet command vs Dockerfile ENTRYPOINT")
	assert.Equal(t, c.Args, execForm("CMD"), "DaemonSet args vs Dockerfile CMD")
}
