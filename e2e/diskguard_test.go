package e2e

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// TestDiskGuardKnowsTheSizeOnAFreshNode: on a node that has never held an image, the guard
// used to guess "the largest image seen" (0 B) and let a pull start that could not fit. The
// size now comes from the source (the registry's manifest), so the first image is held, with
// its real size in the reason.
func testDiskGuardKnowsTheSizeOnAFreshNode(t *testing.T, version lab.ContainerdVersion) {
	t.Parallel()
	lab.RequireContainerd(t, version)
	// containerd's root on a 64 MiB tmpfs: a small image filesystem whose free space the
	// test controls.
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	require.NoError(t, unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m,mode=0700"), "mount a tmpfs for containerd's root")
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	cd := lab.NewContainerd(t, lab.ContainerdOptions{Dir: dir + "/cd", Version: version})
	n := node{dir: dir, cd: cd, cri: criClient(t, cd)}

	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	big := reg.Addr + "/lsst/lab:w_2024_10"
	_, err = lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_10"}, 24*mb, 1, nil)
	require.NoError(t, err)

	// 70 % must stay free (44.8 MiB of 64): the 24 MiB image would leave about 40 MiB.
	p, v := startHeld(t, n, big, 70)
	require.Equal(t, big, v.Held[0].Ref)
	require.Contains(t, v.Held[0].Reason, "pull needs 24.0 MiB", "the reason names the image's real size")
	require.Empty(t, v.Pulling)
	p.waitPasses(t, 3)
	require.Equal(t, "", tagDigest(t, n.cri, big))
	t.Logf("held: %s", v.Held[0].Reason)
}
