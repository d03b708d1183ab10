package coordinator

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/status"
	"github.com/cachemachine/cachemachine/sources"
)

// ClusterView is what the status backend needs of the membership; *Cluster implements it.
type ClusterView interface {
	Leader() (name, httpAddr string, self bool)
	NodeStates() []NodeState
}

// Backend serves the status API's input (status.Backend): on the leader, the sources'
// listing, the desired list and every node's state; elsewhere, where the leader is.
type Backend struct {
	name    string
	labels  map[string]string
	cluster ClusterView
	local   LocalAgent
	sources func() sources.Result
}

// NewBackend builds the status backend. cluster is nil for a standalone agent, which is its
// own leader with one node.
func NewBackend(name string, labels map[string]string, cluster ClusterView, local LocalAgent, srcs func() sources.Result) *Backend {
	return &Backend{name: name, labels: labels, cluster: cluster, local: local, sources: srcs}
}

// Snapshot implements status.Backend.
func (b *Backend) Snapshot() (status.Input, string, string, bool) {
	var nodes []NodeState
	leader := ""
	if b.cluster != nil {
		name, addr, self := b.cluster.Leader()
		if !self {
			return status.Input{}, name, addr, false
		}
		leader = name
		nodes = b.cluster.NodeStates()
	} else {
		st := b.local.State()
		leader = st.Node
		nodes = []NodeState{{State: st, Alive: true}}
	}
	res := b.sources()
	in := status.Input{Name: b.name, Labels: b.labels, Leader: leader, All: toStatus(res.All), Desired: toStatus(res.Desired)}
	desired := b.local.Desired()
	in.DesiredVersion = desired.Version
	if len(res.Sources) > 0 && !res.Complete && len(res.Desired) == 0 {
		// A new leader that has not listed yet serves the list it last received.
		in.Desired = make([]status.Image, len(desired.Images))
		for i, d := range desired.Images {
			in.Desired[i] = status.Image{ImageURL: d.Ref, ImageHash: d.Digest, Name: d.Name}
		}
	}
	for _, s := range res.Sources {
		in.Sources = append(in.Sources, status.SourceStatus{Name: s.Name, ListedAt: s.ListedAt, Error: s.Error, Images: s.Images})
	}
	for _, n := range nodes {
		in.Nodes = append(in.Nodes, nodeFromState(n))
	}
	return in, leader, "", true
}

func toStatus(imgs []sources.Image) []status.Image {
	out := make([]status.Image, len(imgs))
	for i, img := range imgs {
		out[i] = status.Image{ImageURL: img.URL, ImageHash: img.Digest, Name: img.Name}
	}
	return out
}

// nodeFromState projects a node's agent state onto the status API's node view.
func nodeFromState(n NodeState) status.Node {
	st := n.State
	out := status.Node{
		Name: st.Node, Alive: n.Alive, Version: st.Version,
		Inventory: map[string]string{},
		Cached: slices.Sorted(func(yield func(string) bool) {
			for ref := range st.Cached {
				if !yield(ref) {
					return
				}
			}
		}),
		Missing: slices.Clone(st.Missing),
		Disk:    status.Disk{UsedBytes: st.Disk.UsedBytes, CapacityBytes: st.Disk.CapacityBytes},
	}
	for _, img := range st.Images {
		for _, tag := range img.Tags {
			if d := digestForRepo(img.Digests, repoOfRef(tag)); d != "" {
				out.Inventory[tag] = d
			}
		}
	}
	for _, p := range st.Pulling {
		out.Pulling = append(out.Pulling, p.Ref)
	}
	for _, h := range st.Held {
		out.Held = append(out.Held, status.Held{ImageURL: h.Ref, Reason: h.Reason})
	}
	for _, f := range st.Failed {
		out.Failed = append(out.Failed, status.Failed{ImageURL: f.Ref, Error: f.Error, Attempts: f.Attempts, NextRetry: f.NextRetry})
	}
	return out
}

// repoOfRef returns "host/repo" of "host/repo:tag".
func repoOfRef(ref string) string {
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref[:i]
	}
	return ref
}

// digestForRepo returns the digest of repo among repo@digest references, "" when absent.
func digestForRepo(refs []string, repo string) string {
	for _, r := range refs {
		if name, d, ok := strings.Cut(r, "@"); ok && name == repo {
			return d
		}
	}
	return ""
}

var _ LocalAgent = (*agent.Agent)(nil)

// statusCollector reports the aggregation's sizes at scrape time, on the leader only (other
// nodes would only repeat the leader's numbers).
type statusCollector struct {
	b            *Backend
	common, toDo *prometheus.Desc
	available    *prometheus.Desc
	desired, all *prometheus.Desc
}

// RegisterStatusMetrics registers cachemachine_common_cache_images,
// cachemachine_images_to_cache, cachemachine_available_images and
// cachemachine_desired_images_cluster, computed from the backend on each scrape.
func RegisterStatusMetrics(reg prometheus.Registerer, b *Backend) {
	reg.MustRegister(&statusCollector{
		b:         b,
		common:    prometheus.NewDesc("cachemachine_common_cache_images", "Images cached with the same digest on every alive node (leader only).", nil, nil),
		toDo:      prometheus.NewDesc("cachemachine_images_to_cache", "Desired images not yet in common_cache (leader only).", nil, nil),
		available: prometheus.NewDesc("cachemachine_available_images", "Desired images in common_cache (leader only).", nil, nil),
		desired:   prometheus.NewDesc("cachemachine_desired_images_cluster", "Images the policy selected (leader only).", nil, nil),
		all:       prometheus.NewDesc("cachemachine_all_images", "Images the sources list (leader only).", nil, nil),
	})
}

// Describe implements prometheus.Collector.
func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.common
	ch <- c.toDo
	ch <- c.available
	ch <- c.desired
	ch <- c.all
}

// Collect implements prometheus.Collector.
func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	in, _, _, self := c.b.Snapshot()
	if !self {
		return
	}
	d := status.Compute(in)
	ch <- prometheus.MustNewConstMetric(c.common, prometheus.GaugeValue, float64(len(d.CommonCache)))
	ch <- prometheus.MustNewConstMetric(c.toDo, prometheus.GaugeValue, float64(len(d.ImagesToCache)))
	ch <- prometheus.MustNewConstMetric(c.available, prometheus.GaugeValue, float64(len(d.AvailableImages)))
	ch <- prometheus.MustNewConstMetric(c.desired, prometheus.GaugeValue, float64(len(d.DesiredImages)))
	ch <- prometheus.MustNewConstMetric(c.all, prometheus.GaugeValue, float64(len(d.AllImages)))
}
