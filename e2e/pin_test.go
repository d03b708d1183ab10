package e2e

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/containerd/containerdtest"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// imageGC plays the kubelet's image garbage collection at its most aggressive: it lists the
// images through CRI and removes every image that is not pinned, by ID, as the kubelet's
// freeSpace does once the disk is over its high threshold. It returns what it removed.
func imageGC(t *testing.T, c *cri.Client) []cri.Image {
	t.Helper()
	imgs, err := c.ListImages(t.Context())
	require.NoError(t, err)
	var removed []cri.Image
	for _, img := range imgs {
		if img.Pinned {
			continue
		}
		require.NoError(t, c.RemoveImage(t.Context(), img.ID))
		removed = append(removed, img)
	}
	return removed
}

// holds reports whether img is one of digests (by its repo digests).
func holds(img cri.Image, digests ...string) bool {
	for _, rd := range img.Digests {
		if _, d, ok := strings.Cut(rd, "@"); ok && slices.Contains(digests, d) {
			return true
		}
	}
	return false
}

// nodeView is the part of the agent's GET /v1/node the pin tests read.
type nodeView struct {
	Pinning struct {
		Status string `json:"status"`
		Detail string `json:"detail"`
	} `json:"pinning"`
	Pinned []string `json:"pinned"`
}

func (p *agentProc) node(t *testing.T) (v nodeView, ok bool) {
	out, err := p.debug(t, "-o", "json", "node")
	if err != nil {
		return v, false
	}
	require.NoError(t, json.Unmarshal([]byte(out), &v), out)
	return v, true
}

// waitPinVerdict waits until the agent judged the runtime's pins, and checks the verdict
// against the containerd version.
func waitPinVerdict(t *testing.T, p *agentProc, honours bool, desired int) nodeView {
	t.Helper()
	want := "unsupported"
	if honours {
		want = "honoured"
	}
	var v nodeView
	eventually(t, 30*time.Second, "the agent's verdict on pins: "+want, func() bool {
		var ok bool
		v, ok = p.node(t)
		return ok && v.Pinning.Status == want && (!honours || len(v.Pinned) == desired)
	})
	return v
}

func pulledCount(p *agentProc) int { return strings.Count(p.Log(), `"msg":"pulled"`) }

// TestImageGCSparesPinnedImages: the agent pins every desired image; a kubelet-style image GC
// then removes every unpinned image. On containerd that reports pins (1.6.25+, 1.7.10+, 2.x)
// every desired image survives and nothing is pulled again; on one that does not (1.6.20)
// they are removed, and the agent says so once and pulls them again.
func TestImageGCSparesPinnedImages(t *testing.T) {
	t.Parallel()
	lab.OnEveryContainerd(t, testImageGCSparesPinnedImages)
}

func testImageGCSparesPinnedImages(t *testing.T, cv lab.ContainerdVersion) {
	t.Parallel()
	n := newNodeOn(t, cv)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	var refs, digests []string
	for i, tag := range []string{"w_2024_01", "w_2024_02", "d_2024_01_03"} {
		d, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/gc", []string{tag}, int64(2+i)*mb, 2, nil)
		require.NoError(t, err)
		refs, digests = append(refs, reg.Addr+"/lsst/gc:"+tag), append(digests, d)
	}
	other, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/other", []string{"v1"}, mb, 1, nil)
	require.NoError(t, err)
	_, err = n.cri.PullImage(t.Context(), reg.Addr+"/lsst/other:v1", nil)
	require.NoError(t, err)
	v, err := n.cri.Version(t.Context())
	require.NoError(t, err)
	honours := lab.PinsReported(v.RuntimeVersion)

	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), refs, digests...))
	eventually(t, 60*time.Second, "every desired image cached", func() bool {
		pv, ok := p.pulls(t)
		return ok && len(pv.Cached) == len(refs)
	})
	view := waitPinVerdict(t, p, honours, len(refs))
	out, err := p.debug(t, "node")
	require.NoError(t, err)
	require.Contains(t, out, "pinning:")
	require.Contains(t, out, view.Pinning.Status)
	for i, ref := range refs { // the agent's own label sits on the digest and ID records
		repo := ref[:strings.LastIndexByte(ref, ':')]
		require.Contains(t, containerdtest.Labels(t, n.cd.Endpoint(), repo+"@"+digests[i]), containerd.OwnLabel)
		require.NotContains(t, containerdtest.Labels(t, n.cd.Endpoint(), ref), containerd.OwnLabel, "never the tag record")
	}

	before := pulledCount(p)
	removed := imageGC(t, n.cri)
	removedDesired := 0
	for _, img := range removed {
		if holds(img, digests...) {
			removedDesired++
		}
	}
	require.True(t, slices.ContainsFunc(removed, func(img cri.Image) bool { return holds(img, other) }), "the GC removes what nobody pinned")
	if honours {
		require.Zero(t, removedDesired, "containerd %s reports the pins: the GC spares every desired image", v.RuntimeVersion)
		p.waitPasses(t, 3)
	} else {
		require.Equal(t, len(refs), removedDesired, "containerd %s does not report pins: the GC removes them", v.RuntimeVersion)
	}
	eventually(t, 60*time.Second, "every desired image on the node again", func() bool {
		for i, ref := range refs {
			if tagDigest(t, n.cri, ref) != digests[i] {
				return false
			}
		}
		pv, ok := p.pulls(t)
		return ok && len(pv.Cached) == len(refs) && (honours || pulledCount(p)-before >= len(refs))
	})
	repulled := pulledCount(p) - before
	if honours {
		require.Zero(t, repulled)
	} else {
		require.Equal(t, len(refs), repulled)
		require.Equal(t, 1, strings.Count(p.Log(), "does not report pinned images"), "said once")
	}
	t.Logf("GC on containerd %s: %d desired images removed (of %d), %d re-pulled; %d other images removed",
		v.RuntimeVersion, removedDesired, len(refs), repulled, len(removed)-removedDesired)
}

// TestMovedAndDroppedImagesAreUnpinned: the recommended tag moves to a new image and a new
// weekly pushes the old one out of the list (num_weeklies: 1). The agent unpins both old
// images (its label leaves their records), and the same GC collects them; the new ones stay
// (on containerd that reports pins).
func TestMovedAndDroppedImagesAreUnpinned(t *testing.T) {
	t.Parallel()
	lab.OnEveryContainerd(t, testMovedAndDroppedImagesAreUnpinned)
}

func testMovedAndDroppedImagesAreUnpinned(t *testing.T, cv lab.ContainerdVersion) {
	t.Parallel()
	n := newNodeOn(t, cv)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const repo = "lsst/sciplat-lab"
	base := reg.Addr + "/" + repo
	r1, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"recommended"}, 2*mb, 1, nil)
	require.NoError(t, err)
	w1, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_01"}, 2*mb, 1, nil)
	require.NoError(t, err)
	v, err := n.cri.Version(t.Context())
	require.NoError(t, err)
	honours := lab.PinsReported(v.RuntimeVersion)

	cfg := lab.AgentConfig(n.dir, n.cd.Endpoint())
	fastRetries(&cfg)
	cfg.Agent.ResyncInterval = config.Duration{Duration: time.Second}
	rm := rubinRepoMan(reg.Addr, repo)
	rm.NumWeeklies = 1
	cfg.Repomen = []config.Repoman{rm}
	p := startAgent(t, n.dir, cfg)
	eventually(t, 60*time.Second, "recommended and the weekly cached", func() bool {
		return tagDigest(t, n.cri, base+":recommended") == r1 && tagDigest(t, n.cri, base+":w_2024_01") == w1
	})
	waitPinVerdict(t, p, honours, 2)
	for _, d := range []string{r1, w1} {
		require.Contains(t, containerdtest.Labels(t, n.cd.Endpoint(), base+"@"+d), containerd.OwnLabel)
	}

	r2, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"recommended"}, 2*mb, 1, nil)
	require.NoError(t, err)
	w2, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_02"}, 2*mb, 1, nil)
	require.NoError(t, err)
	out, err := p.debug(t, "reconcile")
	require.NoError(t, err, out)
	eventually(t, 60*time.Second, "the moved tag and the new weekly cached, the old images unpinned", func() bool {
		if tagDigest(t, n.cri, base+":recommended") != r2 || tagDigest(t, n.cri, base+":w_2024_02") != w2 {
			return false
		}
		for _, d := range []string{r1, w1} {
			if _, ours := containerdtest.Labels(t, n.cd.Endpoint(), base+"@"+d)[containerd.OwnLabel]; ours {
				return false
			}
		}
		for _, d := range []string{r2, w2} {
			if _, ours := containerdtest.Labels(t, n.cd.Endpoint(), base+"@"+d)[containerd.OwnLabel]; !ours {
				return false
			}
		}
		return true
	})
	waitPinVerdict(t, p, honours, 2)
	for _, d := range []string{r1, w1} {
		l := containerdtest.Labels(t, n.cd.Endpoint(), base+"@"+d)
		require.NotContains(t, l, containerd.PinnedLabel, "the old image is unpinned")
	}

	removed := imageGC(t, n.cri)
	old, current := 0, 0
	for _, img := range removed {
		switch {
		case holds(img, r1, w1):
			old++
		case holds(img, r2, w2):
			current++
		}
	}
	require.Equal(t, 2, old, "the GC collects the moved tag's old image and the dropped weekly")
	if honours {
		require.Zero(t, current, "the current images are pinned")
	} else {
		require.Equal(t, 2, current)
	}
	t.Logf("GC on containerd %s after a tag move and a drop: %d old images removed, %d current images removed", v.RuntimeVersion, old, current)
}
