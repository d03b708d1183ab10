package manifests

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	yamlv3 "gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/helmchart"
)

const chartDir = "chart/cachemachine"

// renderChart renders the chart as `helm template -n cachemachine` with Helm's library.
func renderChart(t *testing.T, files []string, vals map[string]any) string {
	t.Helper()
	for i, f := range files {
		files[i] = chartDir + "/" + f
	}
	out, err := helmchart.Render(t.Context(), helmchart.Release{Chart: chartDir, Namespace: namespace, ValueFiles: files, Values: vals})
	require.NoError(t, err)
	return out
}

// TestChart runs the kustomize renderings' checks on the chart's, for the default values and
// the example values files.
func TestChart(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		kustomization
		files []string
		vals  map[string]any
	}{
		{
			kustomization: kustomization{name: "defaults", pullAuth: config.PullAuthNone, repoman: config.TypeRubinRepoMan,
				nodeSelector: map[string]string{"kubernetes.io/os": "linux"}},
		},
		{
			kustomization: kustomization{name: "dev", pullAuth: config.PullAuthNone, repoman: config.TypeSimpleRepoMan,
				nodeSelector: map[string]string{"kubernetes.io/os": "linux"}},
			files: []string{"values-dev.yaml"},
		},
		{
			kustomization: kustomization{name: "gke", pullAuth: config.PullAuthGoogle, repoman: config.TypeRubinRepoGar, workloadIdentity: true,
				nodeSelector: map[string]string{"kubernetes.io/os": "linux", "cloud.google.com/gke-nodepool": "lab"},
				ingress:      &ingressWant{class: "nginx"}},
			files: []string{"values-gke.yaml"},
		},
		{
			kustomization: kustomization{name: "dev+ingress", pullAuth: config.PullAuthNone, repoman: config.TypeSimpleRepoMan,
				nodeSelector: map[string]string{"kubernetes.io/os": "linux"},
				ingress: &ingressWant{host: "data.example.org", class: "public-nginx",
					annotations: map[string]string{"nginx.ingress.kubernetes.io/limit-rps": "20"}}},
			files: []string{"values-dev.yaml"},
			vals: map[string]any{
				"global":  map[string]any{"host": "data.example.org"},
				"ingress": map[string]any{"enabled": true, "className": "public-nginx", "annotations": map[string]any{"nginx.ingress.kubernetes.io/limit-rps": "20"}},
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.noNamespace = true
			checkAll(t, tt.kustomization, decodeAll(t, []byte(renderChart(t, tt.files, tt.vals))))
		})
	}
}

// TestChartMatchesKustomize: the chart with values-dev.yaml and the kustomize dev overlay
// give the same pod (security contexts, mounts and host paths, probes, ports, env,
// resources, tolerations), Services, NetworkPolicy, ServiceAccount and configuration; only
// the image and the ConfigMap's name (kustomize's hash suffix) differ.
func TestChartMatchesKustomize(t *testing.T) {
	t.Parallel()
	k := decodeAll(t, render(t, "overlays/dev"))
	h := decodeAll(t, []byte(renderChart(t, []string{"values-dev.yaml"}, nil)))

	kpod, hpod := normalisePod(t, k.agent(t)), normalisePod(t, h.agent(t))
	assert.Equal(t, kpod, hpod, "DaemonSet pod spec")
	kds, hds := k.agent(t), h.agent(t)
	assert.Equal(t, kds.Spec.UpdateStrategy, hds.Spec.UpdateStrategy, "updateStrategy")
	assert.Equal(t, kds.Spec.Selector, hds.Spec.Selector, "selector")

	for _, name := range []string{statusService, gossipService} {
		assert.Equal(t, k.service(t, name).Spec, h.service(t, name).Spec, "Service %s", name)
	}
	require.Len(t, h.networkPolicies, 1)
	assert.Equal(t, k.networkPolicies[0].Spec, h.networkPolicies[0].Spec, "NetworkPolicy")
	require.Len(t, h.serviceAccounts, 1)
	assert.Equal(t, k.serviceAccounts[0].AutomountServiceAccountToken, h.serviceAccounts[0].AutomountServiceAccountToken)

	// Marshalled, as the Config carries its source's line numbers.
	kcfg, err := yamlv3.Marshal(parsedConfig(t, k))
	require.NoError(t, err)
	hcfg, err := yamlv3.Marshal(parsedConfig(t, h))
	require.NoError(t, err)
	assert.Equal(t, string(kcfg), string(hcfg), "config.yaml")
}

// normalisePod blanks what legitimately differs between the renderings.
func normalisePod(t *testing.T, ds appsv1.DaemonSet) corev1.PodSpec {
	t.Helper()
	pod := *ds.Spec.Template.Spec.DeepCopy()
	pod.Containers[0].Image = ""
	for i, v := range pod.Volumes {
		if v.Projected == nil {
			continue
		}
		for j, s := range v.Projected.Sources {
			if s.ConfigMap != nil {
				require.True(t, strings.HasPrefix(s.ConfigMap.Name, "cachemachine-config"), s.ConfigMap.Name)
				pod.Volumes[i].Projected.Sources[j].ConfigMap.Name = "cachemachine-config"
			}
		}
	}
	return pod
}

// parsedConfig decodes and validates the config.yaml the DaemonSet mounts.
func parsedConfig(t *testing.T, objs *objects) *config.Config {
	t.Helper()
	pod := objs.agent(t).Spec.Template.Spec
	src, ok := fileAt(pod, agentContainer(t, pod), configPath)
	require.True(t, ok)
	cm, ok := objs.configMap(src.name)
	require.True(t, ok)
	cfg, err := config.Parse(cm.Name, []byte(cm.Data[src.key]))
	require.NoError(t, err)
	return cfg
}

// TestChartAutostart: a Phalanx values file of the Python cachemachine (autostart.jupyter as
// JSON) installs as it is.
func TestChartAutostart(t *testing.T) {
	t.Parallel()
	const autostart = `{
  "name": "jupyter",
  "labels": {"k": "v"},
  "repomen": [
    {"type": "RubinRepoGar", "registry_url": "us-central1-docker.pkg.dev", "gar_repository": "sciplat",
     "gar_image": "sciplat-lab", "project_id": "rubin-shared-services-71ec", "location": "us-central1",
     "recommended_tag": "recommended", "num_releases": 1, "num_weeklies": 2, "num_dailies": 3},
    {"type": "SimpleRepoMan", "images": [
      {"image_url": "us-central1-docker.pkg.dev/rubin-shared-services-71ec/sciplat/sciplat-lab:w_2022_40", "name": "Weekly 2022_40"}]}
  ]
}`
	objs := decodeAll(t, []byte(renderChart(t, nil, map[string]any{
		"autostart":      map[string]any{"jupyter": autostart},
		"serviceAccount": map[string]any{"annotations": map[string]any{wiAnnotation: "cachemachine-wi@science-platform-stable-6994.iam.gserviceaccount.com"}},
	})))
	cfg := parsedConfig(t, objs)
	env := map[string]string{"NODE_NAME": "node-1", "POD_IP": "10.1.2.3"}
	cfg.ApplyEnv(func(k string) string { return env[k] })
	require.NoError(t, cfg.Validate())
	assert.Equal(t, "jupyter", cfg.Name)
	assert.Equal(t, map[string]string{"k": "v"}, cfg.Labels)
	require.Len(t, cfg.Repomen, 2)
	assert.Equal(t, config.TypeRubinRepoGar, cfg.Repomen[0].Type)
	assert.Equal(t, 2, cfg.Repomen[0].NumWeeklies)
	assert.Equal(t, config.TypeSimpleRepoMan, cfg.Repomen[1].Type)
	// The chart's own settings stay.
	assert.Equal(t, "unix://"+containerdSock, cfg.Agent.CRISocket)
	assert.Equal(t, []string{"cachemachine-gossip.cachemachine.svc.cluster.local"}, cfg.Cluster.Join)

	for _, bad := range []map[string]any{
		{"jupyter": "{not json"},
		{"jupyter": "{}", "other": "{}"},
	} {
		_, err := helmchart.Render(t.Context(), helmchart.Release{Chart: chartDir, Namespace: namespace, Values: map[string]any{"autostart": bad}})
		assert.Error(t, err, "autostart %v", bad)
	}
}

// TestChartSettings: the values that reach the DaemonSet and its config.
func TestChartSettings(t *testing.T) {
	t.Parallel()
	objs := decodeAll(t, []byte(renderChart(t, nil, map[string]any{
		"image":         map[string]any{"repository": "registry.example/cachemachine", "tag": "v1.2.3"},
		"gossip":        map[string]any{"keySecretName": "gossip-from-vault"},
		"notifications": map[string]any{"enabled": true, "tokenSecretName": "push-token"},
		"hostPaths":     map[string]any{"containerd": "/run/k3s/containerd"},
		"config":        map[string]any{"cluster": map[string]any{"join": []any{"peers.example:7946"}}},
		"networkPolicy": map[string]any{"enabled": false},
	})))
	ds := objs.agent(t)
	pod := ds.Spec.Template.Spec
	c := agentContainer(t, pod)
	assert.Equal(t, "registry.example/cachemachine:v1.2.3", c.Image)
	assert.NotEmpty(t, ds.Spec.Template.Annotations["checksum/config"], "a config change rolls the agents")
	assert.Empty(t, objs.networkPolicies)

	key, ok := fileAt(pod, c, "/etc/cachemachine/gossip/key")
	require.True(t, ok)
	assert.Equal(t, "gossip-from-vault", key.name)
	token, ok := fileAt(pod, c, "/etc/cachemachine/notifications/token")
	require.True(t, ok, "the notifications token is mounted")
	assert.Equal(t, fileSource{"secret", "push-token", "token"}, token)

	for _, v := range pod.Volumes {
		if v.Name == "containerd-run" {
			assert.Equal(t, "/run/k3s/containerd", v.HostPath.Path, "k3s keeps containerd elsewhere")
		}
	}
	cm, ok := objs.configMap("cachemachine-config")
	require.True(t, ok)
	text := cm.Data["config.yaml"]
	assert.Contains(t, text, "notifications_token_file: /etc/cachemachine/notifications/token")
	assert.Contains(t, text, "- peers.example:7946", "cluster.join given in config wins")
	assert.Contains(t, text, "cri_socket: unix:///run/containerd/containerd.sock", "the socket path in the container stays")

	// Another config, another checksum.
	other := decodeAll(t, []byte(renderChart(t, nil, map[string]any{
		"image":  map[string]any{"repository": "registry.example/cachemachine", "tag": "v1.2.3"},
		"config": map[string]any{"refresh_interval": "10m"},
	})))
	assert.NotEqual(t, ds.Spec.Template.Annotations["checksum/config"], other.agent(t).Spec.Template.Annotations["checksum/config"])
}
