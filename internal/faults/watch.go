package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/status"
)

// probeTimeout is the DaemonSet's liveness and readiness probe timeout.
const probeTimeout = 3 * time.Second

// watcher observes a scenario's agents while it runs, every interval until stop: a
// liveness probe of each (GET /healthz on a new connection, 3 s timeout as the DaemonSet's
// probes), each agent's RSS, and whether the status API's common_cache (read from via)
// claims an image that the containerd of a node it counts lacks: common_cache is read
// first, then every node's CRI ListImages, so an image pulled in between cannot make a false
// alarm (the lab removes no image behind the agents' backs).
type watcher struct {
	via   *node
	nodes []*node
	stopC chan struct{}
	wg    sync.WaitGroup

	mu           sync.Mutex // guards the fields below
	probes       int
	probeFails   int
	slowest      time.Duration
	probeErr     string
	samples      int // common_cache samples checked against the nodes it counts
	unsettled    int // samples not checked: the nodes common_cache counts changed meanwhile
	falseCached  int // samples with an entry some node's containerd lacked
	falseExample string
	peakKiB      int64
}

// watch starts watching nodes, reading common_cache from via. It resets the agents' peak RSS
// so that the peak is this scenario's.
func watch(ctx context.Context, interval time.Duration, via *node, nodes ...*node) *watcher {
	w := &watcher{via: via, nodes: nodes, stopC: make(chan struct{})}
	for _, n := range nodes {
		_ = lab.ResetPeakMemory(n.agent.Pid()) // without it the peak is the process's
	}
	w.wg.Go(func() { w.loop(ctx, time.Second, w.probe) })
	w.wg.Go(func() { w.loop(ctx, interval, w.sample) })
	return w
}

func (w *watcher) loop(ctx context.Context, every time.Duration, f func(context.Context)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		f(ctx)
		select {
		case <-ctx.Done():
			return
		case <-w.stopC:
			return
		case <-t.C:
		}
	}
}

// stop ends the watch and takes the agents' peak RSS (VmHWM).
func (w *watcher) stop() {
	close(w.stopC)
	w.wg.Wait()
	for _, n := range w.nodes {
		w.memory(n, true)
	}
}

// probe probes every running agent once.
func (w *watcher) probe(ctx context.Context) {
	for _, n := range w.nodes {
		if n.agent.Exited() {
			continue
		}
		start := time.Now()
		err := healthz(ctx, n.agent.HTTPAddr())
		took := time.Since(start)
		w.mu.Lock()
		w.probes++
		w.slowest = max(w.slowest, took)
		if err != nil && ctx.Err() == nil {
			w.probeFails++
			w.probeErr = fmt.Sprintf("%s: %v", n.name, err)
		}
		w.mu.Unlock()
	}
}

// healthz is one liveness probe.
func healthz(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := get(ctx, httpClient, addr, "/healthz")
	return err
}

// sample checks common_cache against the CRI of every node it counts, once, and takes RSS.
// common_cache counts the alive nodes that are not warming (all alive ones while every one
// is warming): the nodes that count are read before and after common_cache, and a sample
// during which they changed is not checked.
func (w *watcher) sample(ctx context.Context) {
	for _, n := range w.nodes {
		w.memory(n, false)
	}
	if w.via.agent.Exited() {
		return
	}
	before, err := w.via.nodes(ctx)
	if err != nil {
		return // an unanswered status claims nothing; probes judge availability
	}
	d, err := w.via.dump(ctx)
	if err != nil {
		return
	}
	after, err := w.via.nodes(ctx)
	if err != nil {
		return
	}
	counted := countedNodes(before)
	if !slices.Equal(counted, countedNodes(after)) {
		w.mu.Lock()
		w.unsettled++
		w.mu.Unlock()
		return
	}
	for _, n := range w.nodes {
		if !slices.Contains(counted, n.name) {
			continue
		}
		tags, err := lab.TagDigests(ctx, n.cri)
		if err != nil {
			return // containerd down: this sample cannot be verified
		}
		for _, c := range d.CommonCache {
			if tags[c.ImageURL] != c.ImageHash {
				w.mu.Lock()
				w.samples++
				w.falseCached++
				w.falseExample = fmt.Sprintf("common_cache had %s@%s while %s's containerd had %q", c.ImageURL, c.ImageHash, n.name, tags[c.ImageURL])
				w.mu.Unlock()
				return
			}
		}
	}
	w.mu.Lock()
	w.samples++
	w.mu.Unlock()
}

// countedNodes are the nodes whose caches common_cache is computed from, as status.Compute
// picks them: the alive nodes that are not warming, or every alive node when all are.
func countedNodes(v status.Nodes) []string {
	allWarming := !slices.ContainsFunc(v.Nodes, func(n status.NodeView) bool { return n.Alive && !n.Warming })
	var out []string
	for _, n := range v.Nodes {
		if n.Alive && (allWarming || !n.Warming) {
			out = append(out, n.Name)
		}
	}
	slices.Sort(out)
	return out
}

// memory takes n's agent's RSS, or its peak since the watch began.
func (w *watcher) memory(n *node, peak bool) {
	if n.agent.Exited() {
		return
	}
	m, err := n.agent.Memory()
	if err != nil {
		return
	}
	kib := m.RSSKiB
	if peak {
		kib = m.PeakKiB
	}
	w.mu.Lock()
	w.peakKiB = max(w.peakKiB, kib)
	w.mu.Unlock()
}

// report adds the watch's figures to c and its expectations: no false common_cache entry,
// peak RSS under the pod limit and, when probes is set, every liveness probe answered within
// its timeout.
func (w *watcher) report(c *check, probes bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c.figure("peak RSS %s of %s", mibs(w.peakKiB), mibs(memLimitBytes/1024))
	c.expect(w.peakKiB > 0 && w.peakKiB*1024 < memLimitBytes, "peak RSS %s, limit %s", mibs(w.peakKiB), mibs(memLimitBytes/1024))
	c.figure("%d/%d samples false-cached", w.falseCached, w.samples)
	if w.unsettled > 0 {
		c.figure("%d samples skipped as warming ended", w.unsettled)
	}
	c.expect(w.falseCached == 0, "%d samples false-cached, e.g. %s", w.falseCached, w.falseExample)
	c.expect(w.samples > 0, "no common_cache sample could be checked")
	if probes {
		c.figure("%d probes, slowest %s", w.probes, secs(w.slowest))
		c.expect(w.probeFails == 0, "%d of %d liveness probes failed (3 s timeout), last: %s", w.probeFails, w.probes, w.probeErr)
	}
}
