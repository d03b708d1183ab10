package leader_test

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/leader"
	"github.com/cachemachine/cachemachine/sources"
	"github.com/cachemachine/cachemachine/status"
)

// view is a fixed membership.
type view struct {
	leader, addr string
	self         bool
	nodes        []coordinator.NodeState
}

func (v view) Leader() (string, string, bool)               { return v.leader, v.addr, v.self }
func (v view) NodeStates() []coordinator.NodeState          { return v.nodes }
func (v view) PublishDesired([]image.Image) (uint64, error) { return 0, coordinator.ErrNotLeader }
func (v view) LeaderChanges() <-chan struct{}               { return nil }
func (v view) Superseded() <-chan struct{}                  { return nil }

func nodeState(node string, images ...agent.CachedImage) agent.State {
	return agent.State{Node: node, Version: 7, Images: images, Cached: map[string]string{}}
}

func TestSnapshotAggregatesNodeStatesOnTheLeader(t *testing.T) {
	t.Parallel()
	const repo = "us-central1-docker.pkg.dev/p/r/lab"
	dA, dB := digest(0xa), digest(0xb)
	img1 := agent.CachedImage{ID: "id1", Tags: []string{repo + ":w_2024_10", repo + ":recommended"}, Digests: []string{repo + "@" + dA}}
	img2 := agent.CachedImage{ID: "id2", Tags: []string{repo + ":w_2024_09"}, Digests: []string{repo + "@" + dB}}
	n1 := nodeState("n1", img1, img2)
	n1.Failed = []agent.Failed{{Ref: repo + ":d_1", Error: "pull failed", Attempts: 2, NextRetry: time.Unix(100, 0)}}
	n1.Disk = agent.Disk{UsedBytes: 10, CapacityBytes: 100}
	v := view{leader: "n1", self: true, nodes: []coordinator.NodeState{
		{State: n1, Alive: true}, {State: nodeState("n2", img1), Alive: true}, {State: nodeState("n3"), Alive: false},
	}}
	loc := coordinatortest.NewAgent("n1")
	loc.SetDesired(agent.Desired{Version: 5, Images: []image.Image{
		img(repo+":recommended", "Recommended (Weekly 2024_10)", 0xa), img(repo+":w_2024_09", "Weekly 2024_09", 0xb),
	}})
	src := &scripted{name: "gar", l: sources.Listing{All: []image.Image{img(repo+":w_2024_10", "w_2024_10", 0xa), img(repo+":w_2024_09", "w_2024_09", 0xb)}}}
	l, err := leader.New(leader.Config{Name: "jupyter", Labels: map[string]string{"k": "v"}}, []leader.Source{src}, v, loc, nil, nil)
	require.NoError(t, err)

	in, name, _, self := l.Snapshot()
	require.True(t, self)
	require.Equal(t, "n1", name)
	d := status.Compute(in)
	require.Equal(t, []status.CommonImage{
		{ImageURL: repo + ":recommended", ImageHash: dA, Tags: []string{"w_2024_10"}},
		{ImageURL: repo + ":w_2024_10", ImageHash: dA, Tags: []string{"recommended"}},
	}, d.CommonCache, "w_2024_09 is on n1 only; dead n3 does not count")
	require.Equal(t, []status.Image{{ImageURL: repo + ":recommended", ImageHash: dA, Name: "Recommended (Weekly 2024_10)"}}, d.AvailableImages)
	require.Equal(t, []status.Image{{ImageURL: repo + ":w_2024_09", ImageHash: dB, Name: "Weekly 2024_09"}}, d.ImagesToCache)
	require.Equal(t, uint64(5), in.DesiredVersion, "desired_images is the list in force")
	require.Equal(t, "gar", in.Sources[0].Name)
	require.Equal(t, []status.Failed{{ImageURL: repo + ":d_1", Error: "pull failed", Attempts: 2, NextRetry: time.Unix(100, 0)}}, in.Nodes[0].Failed)
	require.Equal(t, status.Disk{UsedBytes: 10, CapacityBytes: 100}, in.Nodes[0].Disk)

	reg := prometheus.NewRegistry()
	l.RegisterMetrics(reg)
	require.Equal(t, 2.0, gaugeValue(t, reg, "cachemachine_common_cache_images"))
	require.Equal(t, 1.0, gaugeValue(t, reg, "cachemachine_images_to_cache"))
}

func TestSnapshotOnAFollowerPointsAtTheLeader(t *testing.T) {
	t.Parallel()
	l, err := leader.New(leader.Config{Name: "jupyter"}, nil, view{leader: "n1", addr: "10.0.0.1:8080"}, coordinatortest.NewAgent("n1"), nil, nil)
	require.NoError(t, err)
	_, name, addr, self := l.Snapshot()
	require.False(t, self)
	require.Equal(t, "n1", name)
	require.Equal(t, "10.0.0.1:8080", addr)
	reg := prometheus.NewRegistry()
	l.RegisterMetrics(reg)
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Empty(t, mfs, "followers do not repeat the leader's numbers")
}

func TestStandaloneIsItsOwnLeader(t *testing.T) {
	t.Parallel()
	loc := coordinatortest.NewAgent("solo")
	l, err := leader.New(leader.Config{Name: "jupyter"}, nil, coordinator.NewStandalone("solo", "127.0.0.1:8080", loc), loc, nil, nil)
	require.NoError(t, err)
	in, name, _, self := l.Snapshot()
	require.True(t, self)
	require.Equal(t, "solo", name)
	require.Len(t, in.Nodes, 1)
	require.True(t, in.Nodes[0].Alive)
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
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

// TestWarmingNodes: a node that started within the grace and misses desired images is warming
// and left out of common_cache; it counts once it holds them (and for good after that), when
// the grace has passed, or at once when it restarted with the images still on it.
func TestWarmingNodes(t *testing.T) {
	t.Parallel()
	const repo = "us-central1-docker.pkg.dev/p/r/lab"
	w1 := agent.CachedImage{ID: "i1", Tags: []string{repo + ":w_2024_01"}, Digests: []string{repo + "@" + digest(1)}}
	w2 := agent.CachedImage{ID: "i2", Tags: []string{repo + ":w_2024_02"}, Digests: []string{repo + "@" + digest(2)}}
	old := time.Now().Add(-time.Hour)
	recent := time.Now().Add(-time.Minute)
	desired := []image.Image{img(repo+":w_2024_02", "Weekly 2024_02", 2), img(repo+":w_2024_01", "Weekly 2024_01", 1)}
	loc := coordinatortest.NewAgent("n1")
	loc.SetDesired(agent.Desired{Version: 1, Images: desired})
	cl := &nodesView{leader: "n1"}
	cl.set(
		coordinator.NodeState{State: nodeState("n1", w1, w2), Alive: true, Boot: old},
		coordinator.NodeState{State: nodeState("n2", w1, w2), Alive: true, Boot: old},
		coordinator.NodeState{State: nodeState("n3", w1), Alive: true, Boot: recent}, // new, filling its cache
	)
	l, err := leader.New(leader.Config{Name: "jupyter", WarmupGrace: 10 * time.Minute}, nil, cl, loc, nil, nil)
	require.NoError(t, err)

	snap := func() (status.Dump, status.Nodes) {
		in, _, _, self := l.Snapshot()
		require.True(t, self)
		return status.Compute(in), status.NodesView(in)
	}
	available := func(d status.Dump) []string {
		var out []string
		for _, i := range d.AvailableImages {
			out = append(out, i.ImageURL)
		}
		return out
	}
	d, nv := snap()
	require.Equal(t, []string{repo + ":w_2024_02", repo + ":w_2024_01"}, available(d), "the warming node does not shrink the menu")
	require.True(t, nv.Nodes[2].Warming)
	require.Equal(t, []string{repo + ":w_2024_02"}, nv.Nodes[2].WarmingMissing)
	require.WithinDuration(t, recent.Add(10*time.Minute), *nv.Nodes[2].WarmingUntil, time.Millisecond)
	require.False(t, nv.Nodes[0].Warming)

	// n3 catches up: it counts; then a new weekly is published that only n1 and n2 have
	// yet: n3 stays counted (it was complete once), so the new weekly is not available.
	cl.set(
		coordinator.NodeState{State: nodeState("n1", w1, w2), Alive: true, Boot: old},
		coordinator.NodeState{State: nodeState("n2", w1, w2), Alive: true, Boot: old},
		coordinator.NodeState{State: nodeState("n3", w1, w2), Alive: true, Boot: recent},
	)
	_, nv = snap()
	require.False(t, nv.Nodes[2].Warming)
	w3 := agent.CachedImage{ID: "i3", Tags: []string{repo + ":w_2024_03"}, Digests: []string{repo + "@" + digest(3)}}
	loc.SetDesired(agent.Desired{Version: 2, Images: append([]image.Image{img(repo+":w_2024_03", "Weekly 2024_03", 3)}, desired...)})
	cl.set(
		coordinator.NodeState{State: nodeState("n1", w1, w2, w3), Alive: true, Boot: old},
		coordinator.NodeState{State: nodeState("n2", w1, w2, w3), Alive: true, Boot: old},
		coordinator.NodeState{State: nodeState("n3", w1, w2), Alive: true, Boot: recent},
	)
	d, nv = snap()
	require.False(t, nv.Nodes[2].Warming, "warm for good once it held everything")
	require.NotContains(t, available(d), repo+":w_2024_03")

	// A restarted agent (new boot) that still holds everything counts at once; one that
	// lost an image is warming again.
	restarted := time.Now()
	cl.set(
		coordinator.NodeState{State: nodeState("n1", w1, w2, w3), Alive: true, Boot: restarted},
		coordinator.NodeState{State: nodeState("n2", w1, w2), Alive: true, Boot: restarted},
		coordinator.NodeState{State: nodeState("n3", w1, w2, w3), Alive: true, Boot: recent},
	)
	d, nv = snap()
	require.False(t, nv.Nodes[0].Warming)
	require.True(t, nv.Nodes[1].Warming)
	require.Equal(t, []string{repo + ":w_2024_03", repo + ":w_2024_02", repo + ":w_2024_01"}, available(d))

	// Past the grace, a node counts whatever it misses; with no grace nobody warms.
	cl.set(
		coordinator.NodeState{State: nodeState("n1", w1, w2, w3), Alive: true, Boot: old},
		coordinator.NodeState{State: nodeState("n4"), Alive: true, Boot: old},
	)
	d, nv = snap()
	require.False(t, nv.Nodes[1].Warming)
	require.Empty(t, d.AvailableImages, "n4 counts: the Python rule after the grace")

	l0, err := leader.New(leader.Config{Name: "jupyter"}, nil, cl, loc, nil, nil)
	require.NoError(t, err)
	cl.set(coordinator.NodeState{State: nodeState("n1", w1, w2, w3), Alive: true, Boot: old}, coordinator.NodeState{State: nodeState("n5"), Alive: true, Boot: recent})
	in, _, _, _ := l0.Snapshot()
	require.False(t, in.Nodes[1].Warming, "warmup_grace 0: the Python rule")

	// debug cluster lists the warming nodes.
	cl.set(coordinator.NodeState{State: nodeState("n1", w1, w2, w3), Alive: true, Boot: old}, coordinator.NodeState{State: nodeState("n6", w1), Alive: true, Boot: recent})
	v := l.ClusterView(coordinator.ClusterStatus{Node: "n1", Leader: "n1"})
	require.Len(t, v.Warming, 1)
	require.Equal(t, "n6", v.Warming[0].Name)
	require.Equal(t, []string{repo + ":w_2024_03", repo + ":w_2024_02"}, v.Warming[0].Missing)
}

// nodesView is a leading membership whose node states the test replaces.
type nodesView struct {
	leader string
	mu     sync.Mutex // guards nodes
	nodes  []coordinator.NodeState
}

func (v *nodesView) set(n ...coordinator.NodeState) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.nodes = n
}
func (v *nodesView) Leader() (string, string, bool) { return v.leader, "", true }
func (v *nodesView) NodeStates() []coordinator.NodeState {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.nodes
}
func (v *nodesView) PublishDesired([]image.Image) (uint64, error) { return 0, nil }
func (v *nodesView) LeaderChanges() <-chan struct{}               { return nil }
func (v *nodesView) Superseded() <-chan struct{}                  { return nil }
