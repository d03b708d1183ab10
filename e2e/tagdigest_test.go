package e2e

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// TestTagAndDigestReferenceIsPulledOnce: a desired "repo:tag@digest" (a SimpleRepoMan
// image_url may name both) is pulled by its digest: containerd records the digest and no tag.
// The agent reports it cached by that record and does not pull it again on every pass.
func TestTagAndDigestReferenceIsPulledOnce(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_05"}, 2*mb, 1, nil)
	require.NoError(t, err)
	repo := reg.Addr + "/lsst/lab"
	ref := repo + ":w_2024_05@" + digest

	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), []string{ref}))
	eventually(t, 60*time.Second, "the agent to report the image cached", func() bool {
		v, ok := p.pulls(t)
		return ok && slices.Contains(v.Cached, ref)
	})
	imgs, err := n.cri.ListImages(t.Context())
	require.NoError(t, err)
	held := false
	for _, img := range imgs {
		held = held || slices.Contains(img.Digests, repo+"@"+digest)
	}
	require.True(t, held, "containerd holds %s@%s", repo, digest)
	require.Equal(t, "", tagDigest(t, n.cri, repo+":w_2024_05"), "containerd records no tag for a reference with a digest")

	p.waitPasses(t, 3)
	require.Equal(t, 1, pulledCount(p), "pulled once, not on every pass")
	v, ok := p.pulls(t)
	require.True(t, ok)
	require.Contains(t, v.Cached, ref)
}
