package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/cri/critest"
	"github.com/cachemachine/cachemachine/image"
)

// memPins is an in-memory images service: records with containerd's pin label and the
// agent's own. A record is created on first use.
type memPins struct {
	mu      sync.Mutex // guards the fields below
	records map[string]*containerd.Record
	calls   []string // "pin NAME", "unpin NAME"
	lists   int      // OwnPins calls
}

func newMemPins() *memPins { return &memPins{records: map[string]*containerd.Record{}} }

func (m *memPins) OwnPins(context.Context) ([]containerd.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lists++
	var out []containerd.Record
	for _, r := range m.records {
		if r.Ours {
			out = append(out, *r)
		}
	}
	return out, nil
}

func (m *memPins) Pin(_ context.Context, name string) (containerd.Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "pin "+name)
	r := m.records[name]
	if r == nil {
		r = &containerd.Record{Name: name}
		m.records[name] = r
	}
	if !r.Pinned {
		r.Pinned, r.Ours = true, true
	}
	return *r, nil
}

func (m *memPins) Unpin(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "unpin "+name)
	if r := m.records[name]; r != nil && r.Ours {
		r.Pinned, r.Ours = false, false
	}
	return nil
}

func (m *memPins) get(name string) containerd.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.records[name]; r != nil {
		return *r
	}
	return containerd.Record{Name: name}
}

// pinRuntime is critest's runtime whose CRI answer reports an image pinned when one of its
// records is, as containerd 1.6.25+ does, or never (honour false), as containerd 1.6.20 does.
type pinRuntime struct {
	*critest.Runtime
	pins   *memPins
	honour bool
}

func (p *pinRuntime) ListImages(ctx context.Context) ([]cri.Image, error) {
	imgs, err := p.Runtime.ListImages(ctx)
	for i := range imgs {
		names := append([]string{imgs[i].ID}, imgs[i].Digests...)
		for _, n := range names {
			if p.honour && p.pins.get(n).Pinned {
				imgs[i].Pinned = true
			}
		}
	}
	return imgs, err
}

func digestN(i int) string { return fmt.Sprintf("sha256:%064d", i) }

// pinSetup is an agent on a node holding n images of ghcr.io/lsst/lab, desired in order.
func pinSetup(t *testing.T, n int, honour bool, edit func(*Config)) (*Agent, *pinRuntime, []image.Image, *bytes.Buffer) {
	rt := &pinRuntime{Runtime: newRuntime(), pins: newMemPins(), honour: honour}
	var want []image.Image
	for i := range n {
		ref := fmt.Sprintf("ghcr.io/lsst/lab:t%d", i)
		rt.AddRemote(ref, digestN(i), 100)
		require.NoError(t, rt.Load(ref))
		want = append(want, image.Image{Ref: image.MustParseRef(ref), Digest: digestN(i), Priority: i})
	}
	cfg := Config{ResyncInterval: time.Second, PinImages: true, MaxPinnedPercent: 50}
	if edit != nil {
		edit(&cfg)
	}
	var logs bytes.Buffer
	a, err := New(cfg, rt, nil, slog.New(slog.NewJSONHandler(&logs, nil)), WithPins(rt.pins),
		WithStatFS(func(string) (uint64, uint64, error) { return 1000, 1000, nil }))
	require.NoError(t, err)
	return a, rt, want, &logs
}

func TestPinsDigestAndIDRecordsNotTheTag(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, rt, want, _ := pinSetup(t, 2, true, nil)
		a.SetDesired(Desired{Version: 1, Images: want})
		startAgent(t, a)
		for _, d := range want {
			ref := d.Ref.String()
			require.Equal(t, containerd.Record{Name: "ghcr.io/lsst/lab@" + d.Digest, Pinned: true, Ours: true}, rt.pins.get("ghcr.io/lsst/lab@"+d.Digest))
			id := critest.ImageID(d.Digest)
			require.Equal(t, containerd.Record{Name: id, Pinned: true, Ours: true}, rt.pins.get(id))
			require.False(t, rt.pins.get(ref).Pinned, "never the tag record: a re-pull replaces it")
		}
		time.Sleep(2 * time.Second) // past pinSettle and a resync
		synctest.Wait()
		st := a.State()
		require.Equal(t, PinHonoured, st.Pinning.Status, st.Pinning.Detail)
		require.ElementsMatch(t, []string{want[0].Ref.String(), want[1].Ref.String()}, st.Pinned)
		require.Equal(t, uint64(200), st.Pinning.PinnedBytes)
		require.Equal(t, uint64(500), st.Pinning.BudgetBytes)
		for _, img := range st.Images {
			require.True(t, img.Pinned)
		}
	})
}

func TestUnpinsWhatLeftTheListOrMovedAndNothingElse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, rt, want, _ := pinSetup(t, 3, true, nil)
		// Someone else's pin (the sandbox image) on an image that is not desired.
		rt.pins.records["registry.k8s.io/pause@"+digestA] = &containerd.Record{Name: "registry.k8s.io/pause@" + digestA, Pinned: true}
		a.SetDesired(Desired{Version: 1, Images: want})
		startAgent(t, a)
		require.True(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(2)).Ours)

		// t0's tag moves to another digest (the desired list follows), t2 leaves the list.
		rt.AddRemote(want[0].Ref.String(), digestB, 100)
		require.NoError(t, rt.Load(want[0].Ref.String()))
		moved := want[0]
		moved.Digest = digestB
		a.SetDesired(Desired{Version: 2, Images: []image.Image{moved, want[1]}})
		time.Sleep(2 * time.Second)
		synctest.Wait()

		require.False(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(0)).Pinned, "the digest the tag left is unpinned")
		require.True(t, rt.pins.get("ghcr.io/lsst/lab@"+digestB).Ours, "the digest the tag moved to is pinned")
		require.False(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(2)).Pinned, "an image that left the list is unpinned")
		require.False(t, rt.pins.get(critest.ImageID(want[2].Digest)).Pinned)
		require.False(t, rt.pins.get(critest.ImageID(digestN(0))).Pinned, "the moved tag's old image, by ID")
		require.True(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(1)).Ours, "a desired image stays pinned")
		require.Equal(t, containerd.Record{Name: "registry.k8s.io/pause@" + digestA, Pinned: true}, rt.pins.get("registry.k8s.io/pause@"+digestA), "someone else's pin is never touched")
		rt.pins.mu.Lock()
		defer rt.pins.mu.Unlock()
		for _, c := range rt.pins.calls {
			require.NotContains(t, c, "pause", "the agent never even asks about a pin it did not set")
		}
	})
}

func TestPinBudgetLeavesTheLowestPriorityUnpinned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 1000 bytes of image filesystem, 25 %: two 100-byte images fit, the third does not.
		a, rt, want, _ := pinSetup(t, 3, true, func(c *Config) { c.MaxPinnedPercent = 25 })
		a.SetDesired(Desired{Version: 1, Images: want})
		startAgent(t, a)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		st := a.State()
		require.Equal(t, []string{want[2].Ref.String()}, st.Pinning.OverBudget)
		require.Equal(t, uint64(250), st.Pinning.BudgetBytes)
		require.Equal(t, uint64(200), st.Pinning.PinnedBytes)
		require.Contains(t, st.Pinning.Detail, "beyond agent.max_pinned_percent")
		require.False(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(2)).Pinned)
		require.True(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(1)).Pinned)
		require.Len(t, st.Pinned, 2)
	})
}

func TestUnsupportedRuntimeIsDetectedAndSaidOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, rt, want, logs := pinSetup(t, 2, false, nil)
		a.SetDesired(Desired{Version: 1, Images: want})
		startAgent(t, a)
		require.Equal(t, PinPending, a.State().Pinning.Status, "not judged before the runtime had time to see the pins")
		time.Sleep(5 * time.Second)
		synctest.Wait()
		st := a.State()
		require.Equal(t, PinUnsupported, st.Pinning.Status)
		require.Contains(t, st.Pinning.Detail, "does not report pins")
		require.Empty(t, st.Pinned, "nothing the kubelet would skip")
		require.Equal(t, 1, strings.Count(logs.String(), "does not report pinned images"), logs.String())

		// The kubelet's GC removes an image: the agent pulls it again, as without pins.
		require.NoError(t, rt.RemoveImage(t.Context(), want[0].Ref.String()))
		time.Sleep(2 * time.Second)
		synctest.Wait()
		require.Equal(t, 1, pullCount(rt.Runtime, want[0].Ref.String()))
		require.Len(t, a.State().Cached, 2)
		require.Equal(t, 1, strings.Count(logs.String(), "does not report pinned images"))
	})
}

func TestNoUnpinningBeforeTheFirstDesiredList(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, rt, _, _ := pinSetup(t, 1, true, nil)
		rt.pins.records["ghcr.io/lsst/lab@"+digestN(0)] = &containerd.Record{Name: "ghcr.io/lsst/lab@" + digestN(0), Pinned: true, Ours: true}
		startAgent(t, a) // no desired list: a fresh agent waiting for the leader
		time.Sleep(3 * time.Second)
		synctest.Wait()
		require.True(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(0)).Ours)
	})
}

// TestLostPinIsSetAgain: a record with the agent's own label whose pin label was removed is
// pinned again on the next pass.
func TestLostPinIsSetAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, rt, want, _ := pinSetup(t, 1, true, nil)
		name := "ghcr.io/lsst/lab@" + digestN(0)
		rt.pins.records[name] = &containerd.Record{Name: name, Ours: true}
		a.SetDesired(Desired{Version: 1, Images: want})
		startAgent(t, a)
		require.True(t, rt.pins.get(name).Pinned)
		require.Contains(t, rt.pins.calls, "pin "+name)
	})
}

func TestPinningOffRemovesOwnPins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, rt, want, _ := pinSetup(t, 1, true, func(c *Config) { c.PinImages = false })
		rt.pins.records["ghcr.io/lsst/lab@"+digestN(0)] = &containerd.Record{Name: "ghcr.io/lsst/lab@" + digestN(0), Pinned: true, Ours: true}
		rt.pins.records["registry.k8s.io/pause@"+digestA] = &containerd.Record{Name: "registry.k8s.io/pause@" + digestA, Pinned: true}
		a.SetDesired(Desired{Version: 1, Images: want})
		startAgent(t, a)
		require.Equal(t, PinOff, a.State().Pinning.Status)
		require.False(t, rt.pins.get("ghcr.io/lsst/lab@"+digestN(0)).Pinned)
		require.True(t, rt.pins.get("registry.k8s.io/pause@"+digestA).Pinned)

		// Once the cleanup is done, the passes that follow do not list the pins again.
		rt.pins.mu.Lock()
		lists := rt.pins.lists
		rt.pins.mu.Unlock()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		rt.pins.mu.Lock()
		defer rt.pins.mu.Unlock()
		require.Equal(t, lists, rt.pins.lists)
	})
}

func TestClipTextKeepsWholeCharacters(t *testing.T) {
	require.Equal(t, "abc", clipText("abc", 3))
	require.Equal(t, "ab…", clipText("abcd", 2))
	s := "aé" // 'é' is two bytes: a cut at 2 would split it
	require.Equal(t, "a…", clipText(s+"x", 2))
	require.True(t, utf8.ValidString(clipText(strings.Repeat("é", 300), 511)))
}
