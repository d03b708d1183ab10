package k8slab

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKubeletSysctls: every sysctl the kubelet sets is one the host records (they exist on
// this kernel), and a value that differs from the record is a leftover.
func TestKubeletSysctls(t *testing.T) {
	t.Parallel()
	recorded := map[string]string{}
	for _, name := range []string{"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops", "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes"} {
		require.Contains(t, kubeletSysctls, name)
		b, err := os.ReadFile(sysctlPath(name))
		require.NoError(t, err)
		recorded[name] = strings.TrimSpace(string(b))
	}
	assert.Empty(t, changedSysctls(recorded))
	recorded["kernel.panic"] += "7"
	left := changedSysctls(recorded)
	require.Len(t, left, 1)
	assert.Contains(t, left[0], "sysctl kernel.panic=")
}
