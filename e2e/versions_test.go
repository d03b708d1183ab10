package e2e

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// The pulling and inventory tests run on every containerd a node may have: Debian's 1.6, 1.7
// (GKE up to 1.32) and 2.x (GKE 1.33 on), side by side. The other end-to-end tests use 1.6.

func TestAgentCachesDesiredImagesByTagAndDigest(t *testing.T) {
	t.Parallel()
	lab.OnEveryContainerd(t, testAgentCachesDesiredImagesByTagAndDigest)
}

func TestAgentFinishesAfterContainerdIsKilledMidPull(t *testing.T) {
	t.Parallel()
	lab.OnEveryContainerd(t, testAgentFinishesAfterContainerdIsKilledMidPull)
}

func TestAgentPullsAgainAnImageRemovedBehindItsBack(t *testing.T) {
	t.Parallel()
	lab.OnEveryContainerd(t, testAgentPullsAgainAnImageRemovedBehindItsBack)
}

func TestDiskGuardHoldsAPullThatWouldNotFit(t *testing.T) {
	t.Parallel()
	lab.OnEveryContainerd(t, testDiskGuardHoldsAPullThatWouldNotFit)
}

func TestDiskGuardKnowsTheSizeOnAFreshNode(t *testing.T) {
	t.Parallel()
	lab.OnEveryContainerd(t, testDiskGuardKnowsTheSizeOnAFreshNode)
}

// newNodeOn is one simulated node running containerd version v in its own temp dir.
func newNodeOn(t *testing.T, v lab.ContainerdVersion) node {
	t.Helper()
	lab.RequireContainerd(t, v)
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cd := lab.NewContainerd(t, lab.ContainerdOptions{Version: v})
	return node{dir: dir, cd: cd, cri: criClient(t, cd)}
}
