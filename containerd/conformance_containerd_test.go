package containerd_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/containerd/containerdtest"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// TestConformanceContainerd runs the suite against real containerd holding an image pulled
// through CRI, and checks what CRI then reports as pinned against the containerd version.
func TestConformanceContainerd(t *testing.T) {
	lab.Require(t)
	t.Parallel()
	lab.OnEveryContainerd(t, testConformanceContainerd)
}

func testConformanceContainerd(t *testing.T, v lab.ContainerdVersion) {
	t.Parallel()
	lab.RequireContainerd(t, v)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	ctd := lab.NewContainerd(t, lab.ContainerdOptions{Version: v})
	md, err := lab.PushRandomImage(t.Context(), reg.Addr, "cm/pins", []string{"v1"}, 2<<20, 2, nil)
	require.NoError(t, err)
	_, err = lab.PushRandomImage(t.Context(), reg.Addr, "cm/sandbox", []string{"3.9"}, 1<<20, 1, nil)
	require.NoError(t, err)

	rt, err := cri.New(t.Context(), ctd.Endpoint(), cri.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	repo := reg.Addr + "/cm/pins"
	id, err := rt.PullImage(t.Context(), repo+":v1", nil)
	require.NoError(t, err)
	_, err = rt.PullImage(t.Context(), reg.Addr+"/cm/sandbox:3.9", nil)
	require.NoError(t, err)
	containerdtest.ForeignPin(t, ctd.Endpoint(), reg.Addr+"/cm/sandbox:3.9")

	c, err := containerd.New(t.Context(), ctd.Endpoint(), containerd.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	containerdtest.Conformance(t, c, containerdtest.Fixture{
		Tag: repo + ":v1", DigestRecord: repo + "@" + md, IDRecord: id,
		ManifestDigest: md, Layers: 2, ForeignPinned: reg.Addr + "/cm/sandbox:3.9",
		Labels: func(t *testing.T, name string) map[string]string {
			return containerdtest.Labels(t, ctd.Endpoint(), name)
		},
	})

	rv, err := rt.Version(t.Context())
	require.NoError(t, err)
	_, err = c.Pin(t.Context(), repo+"@"+md)
	require.NoError(t, err)
	want := lab.PinsReported(rv.RuntimeVersion)
	if want {
		require.Eventually(t, func() bool {
			img, err := rt.ImageStatus(t.Context(), repo+":v1")
			return err == nil && img != nil && img.Pinned
		}, 5*time.Second, 50*time.Millisecond, "containerd %s reports the pin to CRI", rv.RuntimeVersion)
	} else {
		time.Sleep(time.Second)
		img, err := rt.ImageStatus(t.Context(), repo+":v1")
		require.NoError(t, err)
		require.False(t, img.Pinned, "containerd %s does not report pins to CRI", rv.RuntimeVersion)
	}
	t.Logf("containerd %s: CRI reports the pin: %v", rv.RuntimeVersion, want)
}

// TestDownloadsOfARealPull watches a CRI pull of a large image: its layers show as downloads
// with growing offsets and their totals, and they belong to the image's manifest.
func TestDownloadsOfARealPull(t *testing.T) {
	lab.Require(t)
	t.Parallel()
	lab.OnEveryContainerd(t, testDownloadsOfARealPull)
}

func testDownloadsOfARealPull(t *testing.T, v lab.ContainerdVersion) {
	t.Parallel()
	lab.RequireContainerd(t, v)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	ctd := lab.NewContainerd(t, lab.ContainerdOptions{Version: v})
	md, err := lab.PushRandomImage(t.Context(), reg.Addr, "cm/big", []string{"v1"}, 200<<20, 4, nil)
	require.NoError(t, err)
	rt, err := cri.New(t.Context(), ctd.Endpoint(), cri.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = rt.Close() })
	c, err := containerd.New(t.Context(), ctd.Endpoint(), containerd.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	done := make(chan error, 1)
	go func() { _, err := rt.PullImage(t.Context(), reg.Addr+"/cm/big:v1", nil); done <- err }()
	seen := map[string]containerd.Download{}
	var blobs []containerd.Blob
poll:
	for {
		select {
		case err := <-done:
			require.NoError(t, err)
			break poll
		case <-time.After(20 * time.Millisecond):
		}
		ds, err := c.Downloads(t.Context())
		require.NoError(t, err)
		for _, d := range ds {
			if strings.HasPrefix(d.Ref, "layer-") && d.Total > 0 {
				seen[d.Digest] = d
			}
		}
		if blobs == nil {
			if b, err := c.ImageBlobs(t.Context(), md); err == nil {
				blobs = b
			} else {
				require.True(t, errors.Is(err, containerd.ErrNotFound), err)
			}
		}
	}
	require.NotEmpty(t, seen, "a layer download was seen in flight")
	require.NotNil(t, blobs, "the manifest was readable while the pull ran")
	sizes := map[string]int64{}
	for _, b := range blobs {
		sizes[b.Digest] = b.Size
	}
	for d, dl := range seen {
		require.Equal(t, sizes[d], dl.Total, "download %s is a layer of the image's manifest", d)
		require.LessOrEqual(t, dl.Offset, dl.Total)
	}
}
