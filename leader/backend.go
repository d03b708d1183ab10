package leader

import (
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/status"
)

// Snapshot implements status.Backend: on the leader, the sources' listing, the desired list
// in force and every node's state; elsewhere, where the leader is. desired_images is the
// list in force, so a new leader that has not listed yet serves the list it received.
//
// A node is warming (status.Node.Warming) while its agent started less than WarmupGrace ago
// and it has not yet held every desired image; see warming.
func (l *Leader) Snapshot() (status.Input, string, string, bool) {
	name, addr, self := l.cluster.Leader()
	if !self {
		return status.Input{}, name, addr, false
	}
	r := l.Result()
	desired := l.local.Desired()
	in := status.Input{
		Name: l.cfg.Name, Labels: l.cfg.Labels, Leader: name,
		All: r.All, Desired: desired.Images, DesiredVersion: desired.Version,
	}
	for _, s := range r.Sources {
		in.Sources = append(in.Sources, s.SourceStatus)
	}
	states := l.cluster.NodeStates()
	warming := l.warming(states, desired.Images, time.Now())
	for _, n := range states {
		in.Nodes = append(in.Nodes, nodeView(n, warming))
	}
	return in, name, "", true
}

// warmthInterval is how often the leader notes which nodes hold every desired image, besides
// every status request.
const warmthInterval = 2 * time.Second

// WarmingNode is a node that is warming: it does not count for common_cache until it holds
// every desired image or Until passes.
type WarmingNode struct {
	Name  string    `json:"name"`
	Until time.Time `json:"until"`
	// Missing are the desired images it does not hold yet.
	Missing []string `json:"missing"`
}

// observeWarmth notes which nodes hold every desired image now, so that a node that held
// them once is not taken for a warming one when the desired list grows.
func (l *Leader) observeWarmth() {
	if l.cfg.WarmupGrace == 0 {
		return
	}
	if _, _, self := l.cluster.Leader(); !self {
		return
	}
	l.warming(l.cluster.NodeStates(), l.local.Desired().Images, time.Now())
}

// warming returns the warming nodes by name. An alive node is warming while its agent started
// (Boot) less than WarmupGrace ago and that agent run has never held every desired image: a
// new node filling its cache. A run that held them all once is warm for good, so a restarted
// agent on a node that still holds the images counts at once, and a node already counted is
// not dropped from the aggregation when a new image is published. A node whose start time is
// unknown is never warming (the Python rule).
func (l *Leader) warming(nodes []coordinator.NodeState, desired []image.Image, now time.Time) map[string]WarmingNode {
	grace := l.cfg.WarmupGrace
	if grace <= 0 {
		return nil
	}
	out := map[string]WarmingNode{}
	known := make(map[string]bool, len(nodes))
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range nodes {
		known[n.Node] = true
		if n.Boot.IsZero() || l.warm[n.Node] == n.Boot.UnixNano() {
			continue
		}
		missing := missingFrom(n.State, desired)
		if len(missing) == 0 {
			l.warm[n.Node] = n.Boot.UnixNano()
			continue
		}
		if n.Alive && now.Sub(n.Boot) < grace {
			out[n.Node] = WarmingNode{Name: n.Node, Until: n.Boot.Add(grace), Missing: missing}
		}
	}
	for name := range l.warm {
		if !known[name] {
			delete(l.warm, name)
		}
	}
	return out
}

// ClusterView is what `cachemachine debug cluster` shows: the membership and the warming
// nodes.
type ClusterView struct {
	coordinator.ClusterStatus
	// Warming are the warming nodes as this node sees them: the leader knows every node's
	// state; another node knows its own and those it happened to receive.
	Warming []WarmingNode `json:"warming"`
}

// ClusterView adds the warming nodes to cs (this node's cluster status).
func (l *Leader) ClusterView(cs coordinator.ClusterStatus) ClusterView {
	v := ClusterView{ClusterStatus: cs, Warming: []WarmingNode{}}
	w := l.warming(l.cluster.NodeStates(), l.local.Desired().Images, time.Now())
	for _, name := range slices.Sorted(maps.Keys(w)) {
		v.Warming = append(v.Warming, w[name])
	}
	return v
}

// missingFrom returns the desired references a node's inventory does not hold with the
// desired digest, in priority order: by the agent's own rule (agent.Index).
func missingFrom(st agent.State, desired []image.Image) []string {
	ix := agent.NewIndex(st.Images)
	missing := []string{}
	for _, d := range desired {
		if _, ok := ix.Has(d); !ok {
			missing = append(missing, d.Ref.String())
		}
	}
	return missing
}

// inventory maps each "repo:tag" of a node's images to the manifest digest recorded for that
// repository.
func inventory(st agent.State) map[string]string {
	out := map[string]string{}
	for _, img := range st.Images {
		// Each tag takes the digest recorded for its own repository.
		digests := make(map[string]string, len(img.Digests))
		for _, rd := range img.Digests {
			if repo, d, ok := image.SplitDigestRef(rd); ok {
				digests[repo] = d
			}
		}
		for _, tag := range img.Tags {
			repo, _ := image.SplitTagRef(tag)
			if d := digests[repo]; d != "" {
				out[tag] = d
			}
		}
	}
	return out
}

// nodeView projects a node's state, and whether it is warming (see warming), onto the status
// API's node view.
func nodeView(n coordinator.NodeState, warming map[string]WarmingNode) status.Node {
	st := n.State
	out := status.Node{
		Name: st.Node, Alive: n.Alive, Version: st.Version,
		RuntimeError: st.LastError,
		Inventory:    inventory(st),
		Cached:       slices.Sorted(maps.Keys(st.Cached)),
		Missing:      slices.Clone(st.Missing),
		Disk:         status.Disk{UsedBytes: st.Disk.UsedBytes, CapacityBytes: st.Disk.CapacityBytes},
		Pinned:       slices.Clone(st.Pinned),
		Pinning: status.Pinning{
			Status: st.Pinning.Status, Detail: st.Pinning.Detail,
			BudgetBytes: st.Pinning.BudgetBytes, PinnedBytes: st.Pinning.PinnedBytes,
			OverBudget: slices.Clone(st.Pinning.OverBudget),
		},
		Updated: n.Updated,
	}
	if w, ok := warming[st.Node]; ok {
		out.Warming, out.WarmingUntil, out.WarmingMissing = true, w.Until, slices.Clone(w.Missing)
	}
	for _, p := range st.Pulling {
		out.Pulling = append(out.Pulling, p.Ref)
		out.Progress = append(out.Progress, progressView(p))
	}
	for _, h := range st.Held {
		out.Held = append(out.Held, status.Held{ImageURL: h.Ref, Reason: h.Reason})
	}
	for _, f := range st.Failed {
		out.Failed = append(out.Failed, status.Failed{ImageURL: f.Ref, Error: f.Error, Attempts: f.Attempts, NextRetry: f.NextRetry})
	}
	return out
}

// progressView is a pull's progress as /nodes shows it; the ETA is as of the measurement.
func progressView(p agent.Pulling) status.Progress {
	v := status.Progress{
		ImageURL: p.Ref, Phase: p.Progress.Phase,
		BytesDone: p.Progress.BytesDone, BytesTotal: p.Progress.BytesTotal, BytesPerSecond: p.Progress.BytesPerSecond,
	}
	if !p.Progress.At.IsZero() {
		at := p.Progress.At.UTC()
		v.MeasuredAt = &at
		if eta, ok := p.Progress.ETA(at); ok {
			secs := eta.Seconds()
			v.ETASeconds = &secs
		}
	}
	return v
}

// statusCollector reports the aggregation's sizes at scrape time, on the leader only (other
// nodes would only repeat the leader's numbers).
type statusCollector struct {
	l            *Leader
	common, toDo *prometheus.Desc
	available    *prometheus.Desc
	desired, all *prometheus.Desc
	warming      *prometheus.Desc
}

// RegisterMetrics registers cachemachine_common_cache_images, cachemachine_images_to_cache,
// cachemachine_available_images, cachemachine_desired_images_cluster and
// cachemachine_all_images and cachemachine_warming_nodes, computed from the leader's status
// on each scrape.
func (l *Leader) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(&statusCollector{
		l:         l,
		common:    prometheus.NewDesc("cachemachine_common_cache_images", "Images cached with the same digest on every alive node (leader only).", nil, nil),
		toDo:      prometheus.NewDesc("cachemachine_images_to_cache", "Desired images not yet in common_cache (leader only).", nil, nil),
		available: prometheus.NewDesc("cachemachine_available_images", "Desired images in common_cache (leader only).", nil, nil),
		desired:   prometheus.NewDesc("cachemachine_desired_images_cluster", "Images the policy selected (leader only).", nil, nil),
		all:       prometheus.NewDesc("cachemachine_all_images", "Images the sources list (leader only).", nil, nil),
		warming:   prometheus.NewDesc("cachemachine_warming_nodes", "Alive nodes still filling their cache after they started, left out of common_cache (leader only).", nil, nil),
	})
}

// Describe implements prometheus.Collector.
func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.common
	ch <- c.toDo
	ch <- c.available
	ch <- c.desired
	ch <- c.all
	ch <- c.warming
}

// Collect implements prometheus.Collector.
func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	in, _, _, self := c.l.Snapshot()
	if !self {
		return
	}
	d := status.Compute(in)
	ch <- prometheus.MustNewConstMetric(c.common, prometheus.GaugeValue, float64(len(d.CommonCache)))
	ch <- prometheus.MustNewConstMetric(c.toDo, prometheus.GaugeValue, float64(len(d.ImagesToCache)))
	ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, float64(len(d.AvailableImages)))
	ch <- prometheus.MustNewConstMetric(c.desired, prometheus.GaugeValue, float64(len(d.DesiredImages)))
	ch <- prometheus.MustNewConstMetric(c.all, prometheus.GaugeValue, float64(len(d.AllImages)))
	warming := 0
	for _, n := range in.Nodes {
		if n.Warming {
			warming++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.warming, prometheus.GaugeValue, float64(warming))
}
