package e2e

import (
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// TestRuntimeDownIsShownAndUnready: with containerd SIGKILLed (and not back), the node used to
// stay ready and show stale pulls. Now `debug node` and /nodes say the runtime is
// unavailable, readiness fails after 30 s, and both recover when containerd is back.
func TestRuntimeDownIsShownAndUnready(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_11"}, 1*mb, 1, nil)
	require.NoError(t, err)
	ref := reg.Addr + "/lsst/lab:w_2024_11"
	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), []string{ref}))
	httpAddr := p.HTTPAddr()
	readyz := func() int {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, 30*time.Second, "the image cached", func() bool { return tagDigest(t, n.cri, ref) == digest })
	eventually(t, 10*time.Second, "ready", func() bool { return readyz() == http.StatusOK })

	require.NoError(t, n.cd.Kill())
	eventually(t, 10*time.Second, "debug node to say the runtime is unavailable", func() bool {
		out, err := p.debug(t, "node")
		return err == nil && regexp.MustCompile(`ready:\s+false`).MatchString(out) && regexp.MustCompile(`last error:\s+container runtime unavailable`).MatchString(out)
	})
	var nv struct {
		Nodes []struct {
			RuntimeError string `json:"runtime_error"`
		} `json:"nodes"`
	}
	_, ok := getStatus(t, httpAddr, "/cachemachine/jupyter/nodes", &nv)
	require.True(t, ok)
	require.Contains(t, nv.Nodes[0].RuntimeError, "container runtime unavailable")
	killed := time.Now()
	eventually(t, 45*time.Second, "readiness to fail", func() bool { return readyz() == http.StatusServiceUnavailable })
	t.Logf("unready %s after the kill", time.Since(killed).Round(time.Second))

	require.NoError(t, n.cd.Restart(t.Context()))
	eventually(t, 30*time.Second, "ready again", func() bool { return readyz() == http.StatusOK })
	out, err := p.debug(t, "node")
	require.NoError(t, err)
	require.Regexp(t, `ready:\s+true`, out)
	require.NotContains(t, out, "container runtime unavailable")
}
