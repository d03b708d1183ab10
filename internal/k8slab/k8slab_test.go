package k8slab

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSplitRule(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, line string
		want       []string
	}{
		{"plain", "-A INPUT -j KUBE-FIREWALL", []string{"-A", "INPUT", "-j", "KUBE-FIREWALL"}},
		{"comment", `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule" -j KUBE-NODEPORTS`,
			[]string{"-A", "KUBE-SERVICES", "-m", "comment", "--comment", "kubernetes service nodeports; NOTE: this must be the last rule", "-j", "KUBE-NODEPORTS"}},
		{"escaped quote", `-A X -m comment --comment "a \"b\"" -j Y`, []string{"-A", "X", "-m", "comment", "--comment", `a "b"`, "-j", "Y"}},
		{"empty comment", `-A X --comment "" -j Y`, []string{"-A", "X", "--comment", "", "-j", "Y"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, splitRule(tt.line))
		})
	}
}

func TestIsLabChain(t *testing.T) {
	t.Parallel()
	assert.True(t, isLabChain("iptables/nat/KUBE-SERVICES"))
	assert.True(t, isLabChain("ip6tables/mangle/KUBE-KUBELET-CANARY"))
	assert.True(t, isLabChain("iptables/nat/CNI-HOSTPORT-DNAT"))
	assert.False(t, isLabChain("iptables/filter/DOCKER"))
	assert.False(t, isLabChain("iptables/filter/INPUT"))
}

// TestRecipes: the wrapper modules replace every staging module, stamp the version, and each
// recipe has its own cache key.
func TestRecipes(t *testing.T) {
	t.Parallel()
	k := kubernetesRecipe()
	for _, m := range stagingModules {
		assert.Contains(t, k.gomod, "k8s.io/"+m+" => k8s.io/"+m+" "+stagingVersion)
	}
	assert.Contains(t, k.ldflags, "k8s.io/component-base/version.gitVersion="+KubernetesVersion)
	assert.Contains(t, k.ldflags, "gitMinor=34")
	require.Len(t, k.pkgs, len(kubeCommands))
	keys := map[string]string{}
	for _, r := range recipes() {
		assert.Len(t, r.key(), 64)
		assert.NotContains(t, keys, r.key(), "%s shares a key with %s", r.dir, keys[r.key()])
		keys[r.key()] = r.dir
		assert.True(t, strings.HasPrefix(r.gomod, "module cachemachine.lab/"), r.dir)
	}
}

// TestCachedKubectl: the manifest checks' kubectl comes from the cache, never from a build,
// and an empty cache says how to fill it.
func TestCachedKubectl(t *testing.T) {
	t.Setenv("CACHEMACHINE_CACHE", t.TempDir())
	_, err := CachedKubectl()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "make k8s-lab")
	assert.False(t, Cached())
}
