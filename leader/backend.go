package leader

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/status"
)

// Snapshot implements status.Backend: on the leader, the sources' listing, the desired list
// in force and every node's state; elsewhere, where the leader is. desired_images is the
// list in force, so a new leader that has not listed yet serves the list it received.
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
		in.Sources = append(in.Sources, status.SourceStatus{Name: s.Name, ListedAt: s.ListedAt, Error: s.Error, Images: s.Images})
	}
	for _, n := range l.cluster.NodeStates() {
		in.Nodes = append(in.Nodes, nodeView(n))
	}
	return in, name, "", true
}

// nodeView projects a node's state onto the status API's node view.
func nodeView(n coordinator.NodeState) status.Node {
	st := n.State
	out := status.Node{
		Name: st.Node, Alive: n.Alive, Version: st.Version,
		RuntimeError: st.LastError,
		Inventory:    map[string]string{},
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
				out.Inventory[tag] = d
			}
		}
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
}

// RegisterMetrics registers cachemachine_common_cache_images, cachemachine_images_to_cache,
// cachemachine_available_images, cachemachine_desired_images_cluster and
// cachemachine_all_images, computed from the leader's status on each scrape.
func (l *Leader) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(&statusCollector{
		l:         l,
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
}
