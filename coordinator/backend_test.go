package coordinator

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/status"
	"github.com/cachemachine/cachemachine/sources"
)

const (
	bkDigestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	bkDigestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// bkView is a fixed ClusterView.
type bkView struct {
	leader, addr string
	self         bool
	nodes        []NodeState
}

func (v bkView) Leader() (string, string, bool) { return v.leader, v.addr, v.self }
func (v bkView) NodeStates() []NodeState        { return v.nodes }

func bkState(node string, images ...agent.CachedImage) agent.State {
	return agent.State{Node: node, Version: 7, Images: images, Cached: map[string]string{}}
}

func TestBackendAggregatesNodeStatesOnTheLeader(t *testing.T) {
	t.Parallel()
	const repo = "us-central1-docker.pkg.dev/p/r/lab"
	img := agent.CachedImage{ID: "id1", Tags: []string{repo + ":w_2024_10", repo + ":recommended"}, Digests: []string{repo + "@" + bkDigestA}}
	other := agent.CachedImage{ID: "id2", Tags: []string{repo + ":w_2024_09"}, Digests: []string{repo + "@" + bkDigestB}}
	n1 := bkState("n1", img, other)
	n1.Failed = []agent.Failed{{Ref: repo + ":d_1", Error: "pull failed", Attempts: 2, NextRetry: time.Unix(100, 0)}}
	n1.Disk = agent.Disk{UsedBytes: 10, CapacityBytes: 100}
	n2 := bkState("n2", img)
	n3 := bkState("n3") // dead: ignored by common_cache
	view := bkView{leader: "n1", self: true, nodes: []NodeState{{State: n1, Alive: true}, {State: n2, Alive: true}, {State: n3, Alive: false}}}
	listed := sources.Result{
		Complete: true,
		All:      []sources.Image{{URL: repo + ":w_2024_10", Digest: bkDigestA, Name: "w_2024_10"}, {URL: repo + ":w_2024_09", Digest: bkDigestB, Name: "w_2024_09"}},
		Desired:  []sources.Image{{URL: repo + ":recommended", Digest: bkDigestA, Name: "Recommended (Weekly 2024_10)"}, {URL: repo + ":w_2024_09", Digest: bkDigestB, Name: "Weekly 2024_09"}},
		Sources:  []sources.Status{{Name: "gar", ListedAt: time.Unix(50, 0), Images: 2}},
	}
	b := NewBackend("jupyter", map[string]string{"k": "v"}, view, newFakeAgent("n1"), func() sources.Result { return listed })

	in, leader, _, self := b.Snapshot()
	require.True(t, self)
	require.Equal(t, "n1", leader)
	d := status.Compute(in)
	require.Equal(t, []status.CommonImage{
		{ImageURL: repo + ":recommended", ImageHash: bkDigestA, Tags: []string{"w_2024_10"}},
		{ImageURL: repo + ":w_2024_10", ImageHash: bkDigestA, Tags: []string{"recommended"}},
	}, d.CommonCache, "w_2024_09 is on n1 only; dead n3 does not count")
	require.Equal(t, []status.Image{{ImageURL: repo + ":recommended", ImageHash: bkDigestA, Name: "Recommended (Weekly 2024_10)"}}, d.AvailableImages)
	require.Equal(t, []status.Image{{ImageURL: repo + ":w_2024_09", ImageHash: bkDigestB, Name: "Weekly 2024_09"}}, d.ImagesToCache)
	require.Equal(t, "gar", in.Sources[0].Name)
	require.Equal(t, []status.Failed{{ImageURL: repo + ":d_1", Error: "pull failed", Attempts: 2, NextRetry: time.Unix(100, 0)}}, in.Nodes[0].Failed)
	require.Equal(t, status.Disk{UsedBytes: 10, CapacityBytes: 100}, in.Nodes[0].Disk)

	reg := prometheus.NewRegistry()
	RegisterStatusMetrics(reg, b)
	require.Equal(t, 2.0, gaugeValue(t, reg, "cachemachine_common_cache_images"))
	require.Equal(t, 1.0, gaugeValue(t, reg, "cachemachine_images_to_cache"))
}

func TestBackendOnAFollowerPointsAtTheLeader(t *testing.T) {
	t.Parallel()
	b := NewBackend("jupyter", nil, bkView{leader: "n1", addr: "10.0.0.1:8080"}, newFakeAgent("n2"), func() sources.Result { return sources.Result{} })
	_, leader, addr, self := b.Snapshot()
	require.False(t, self)
	require.Equal(t, "n1", leader)
	require.Equal(t, "10.0.0.1:8080", addr)
	reg := prometheus.NewRegistry()
	RegisterStatusMetrics(reg, b)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Empty(t, mfs, "followers do not repeat the leader's numbers")
}

func TestNewLeaderServesTheDesiredListItReceivedUntilItListed(t *testing.T) {
	t.Parallel()
	a := newFakeAgent("n2")
	a.SetDesired(agent.Desired{Version: 9, Images: []agent.DesiredImage{{Ref: "r/a:1", Digest: bkDigestA, Name: "A"}}})
	b := NewBackend("jupyter", nil, bkView{leader: "n2", self: true}, a, func() sources.Result {
		return sources.Result{Sources: []sources.Status{{Name: "gar", Error: "not listed yet"}}}
	})
	in, _, _, _ := b.Snapshot()
	require.Equal(t, []status.Image{{ImageURL: "r/a:1", ImageHash: bkDigestA, Name: "A"}}, in.Desired)
	require.Equal(t, uint64(9), in.DesiredVersion)
}

func TestStandaloneBackendIsItsOwnLeader(t *testing.T) {
	t.Parallel()
	a := newFakeAgent("solo")
	b := NewBackend("jupyter", nil, nil, a, func() sources.Result { return sources.Result{Complete: true} })
	in, leader, _, self := b.Snapshot()
	require.True(t, self)
	require.Equal(t, "solo", leader)
	require.Len(t, in.Nodes, 1)
	require.True(t, in.Nodes[0].Alive)
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
