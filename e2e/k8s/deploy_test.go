package k8s

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/helmchart"
)

// kustomizeDeployment applies the shipped dev overlay through a test overlay that swaps only
// the image and the host paths (and adds the Ingress component with a host).
type kustomizeDeployment struct {
	dir, hostDir string
}

func (k *kustomizeDeployment) name() string      { return "kustomize" }
func (k *kustomizeDeployment) namespace() string { return "cachemachine" }

func (k *kustomizeDeployment) install(t *testing.T, e *env, hostDir string) {
	k.dir, k.hostDir = t.TempDir(), hostDir
	k.write(t, e, "")
	e.createNamespace(t, k.namespace())
	e.kubectl(t, "apply", "-k", k.dir)
}

// write writes the test overlay; config, when set, replaces the dev overlay's config.yaml
// through the configMapGenerator, as an operator's own overlay would.
func (k *kustomizeDeployment) write(t *testing.T, e *env, config string) {
	root := repoRoot(t)
	// kustomize takes no absolute paths to other kustomizations.
	rel := func(p string) string {
		r, err := filepath.Rel(k.dir, filepath.Join(root, p))
		require.NoError(t, err)
		return r
	}
	overlay := fmt.Sprintf(`# Test overlay: the shipped dev overlay with the image and host paths swapped.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
components:
  - %s
images:
  - name: cachemachine
    newName: %s
    newTag: %s
patches:
  - path: hostpaths.yaml
  - target:
      kind: Ingress
      name: cachemachine
    patch: |-
      - op: add
        path: /spec/rules/0/host
        value: %s
`, rel("manifests/overlays/dev"), rel("manifests/components/ingress"), e.image, agentTag, ingressHost)
	if config != "" {
		overlay += `configMapGenerator:
  - name: cachemachine-config
    behavior: replace
    files:
      - config.yaml
    options:
      labels:
        app.kubernetes.io/name: cachemachine
        app.kubernetes.io/component: agent
`
		require.NoError(t, os.WriteFile(filepath.Join(k.dir, "config.yaml"), []byte(config), 0o644))
	}
	hostPaths := fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: cachemachine
  namespace: cachemachine
spec:
  template:
    spec:
      volumes:
        - name: containerd-run
          hostPath:
            path: %s
        - name: state
          hostPath:
            path: %s
        - name: debug-socket
          hostPath:
            path: %s
`, e.cluster.RunContainerd, filepath.Join(k.hostDir, "var/lib/cachemachine"), filepath.Join(k.hostDir, "run/cachemachine"))
	require.NoError(t, os.WriteFile(filepath.Join(k.dir, "kustomization.yaml"), []byte(overlay), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(k.dir, "hostpaths.yaml"), []byte(hostPaths), 0o644))
}

// changeConfig adds newImage to a copy of the dev overlay's config.yaml and applies: the
// ConfigMap's name hash changes, so the DaemonSet's pod template does.
func (k *kustomizeDeployment) changeConfig(t *testing.T, e *env) {
	dev, err := os.ReadFile(filepath.Join(repoRoot(t), "manifests/overlays/dev/config.yaml"))
	require.NoError(t, err)
	const anchor = "        name: Alpine 3.21\n"
	require.Contains(t, string(dev), anchor, "the dev config's last image")
	config := strings.Replace(string(dev), anchor, anchor+"      - image_url: "+newImage+"\n        name: BusyBox 1.36\n", 1)
	k.write(t, e, config)
	e.kubectl(t, "apply", "-k", k.dir)
}

func (k *kustomizeDeployment) uninstall(t *testing.T, e *env) {
	e.kubectl(t, "delete", "-k", k.dir, "--wait=false")
}

// helmDeployment installs the chart with values-dev.yaml and only the image, the host paths
// and the Ingress set on top, through Helm's library.
type helmDeployment struct {
	rel helmchart.Release
}

func (h *helmDeployment) name() string      { return "helm" }
func (h *helmDeployment) namespace() string { return "cachemachine-helm" }

func (h *helmDeployment) install(t *testing.T, e *env, hostDir string) {
	chart := filepath.Join(repoRoot(t), "manifests/chart/cachemachine")
	h.rel = helmchart.Release{
		Chart:      chart,
		Namespace:  h.namespace(),
		ValueFiles: []string{filepath.Join(chart, "values-dev.yaml")},
		Values: map[string]any{
			"image": map[string]any{"repository": e.image, "tag": agentTag},
			"hostPaths": map[string]any{
				"containerd":  e.cluster.RunContainerd,
				"state":       filepath.Join(hostDir, "var/lib/cachemachine"),
				"debugSocket": filepath.Join(hostDir, "run/cachemachine"),
			},
			"ingress": map[string]any{"enabled": true},
			"global":  map[string]any{"host": ingressHost},
		},
	}
	e.createNamespace(t, h.namespace())
	require.NoError(t, helmchart.Install(t.Context(), e.cluster.Kubeconfig, h.rel, true, 2*time.Minute, t.Logf))
}

// changeConfig upgrades the release with newImage added to config.repomen: the pod
// template's config checksum changes.
func (h *helmDeployment) changeConfig(t *testing.T, e *env) {
	var images []any
	for _, ref := range append(devImages[:len(devImages):len(devImages)], newImage) {
		images = append(images, map[string]any{"image_url": ref})
	}
	h.rel.Values["config"] = map[string]any{"repomen": []any{map[string]any{"type": "SimpleRepoMan", "images": images}}}
	require.NoError(t, helmchart.Upgrade(t.Context(), e.cluster.Kubeconfig, h.rel, t.Logf))
}

func (h *helmDeployment) uninstall(t *testing.T, e *env) {
	require.NoError(t, helmchart.Uninstall(e.cluster.Kubeconfig, h.rel, 2*time.Minute, t.Logf))
}
