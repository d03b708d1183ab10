package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/leader"
	"github.com/cachemachine/cachemachine/status"
)

// convergenceResult is what one cluster size of (a) measured.
type convergenceResult struct {
	nodes   int
	lat     []time.Duration // last pull finished -> leader's common_cache shows it
	e2e     []time.Duration // publish -> leader's common_cache shows it
	compute []time.Duration // one Snapshot + Compute on the leader
	notes   []string
}

// gossipResult is what (c) measured.
type gossipResult struct {
	nodes, images int
	window        time.Duration
	perNode       float64 // bytes sent per node per second
	byTransport   map[string]float64
	leaderRecv    float64 // bytes the leader received per second
	leaderSent    float64
	notes         []string
}

// inProcCluster is a simulated cluster whose leader is in this process, with the status
// backend the leader's HTTP API would serve from.
type inProcCluster struct {
	sc      *simCluster
	leader  *simNode
	backend *leader.Leader
	base    []image.Image
	log     countingHandler
}

// formInProc starts n in-process nodes holding `images` images, all starting from one
// desired list of those images, and waits until the leader holds every node's newest state,
// common_cache shows every image, and gossip is at steady state.
func formInProc(ctx context.Context, o options, n, images int) (*inProcCluster, time.Duration, error) {
	start := time.Now()
	log := newCountingHandler()
	tune, _ := simTimings(n)
	sc := &simCluster{key: o.key, minLat: o.pullMin, maxLat: o.pullMax, logger: newLogger(log), tune: tune}
	var preload []string
	desired := agent.Desired{Version: uint64(time.Now().UnixNano())}
	for i := range images {
		ref := imageRef("w", i)
		preload = append(preload, ref)
		desired.Images = append(desired.Images, image.Image{Ref: image.MustParseRef(ref), Digest: digestOf(ref), Name: fmt.Sprintf("Weekly %04d", i)})
	}
	c := &inProcCluster{sc: sc, base: desired.Images, log: log}
	lead, err := sc.add(ctx, nodeName(0), preload, desired)
	if err != nil {
		return nil, 0, err
	}
	c.leader = lead
	c.backend, err = leader.New(leader.Config{Name: "jupyter"}, nil, lead.Cluster, lead.ag, nil, nil)
	if err != nil {
		sc.stop()
		return nil, 0, err
	}
	if err := coordinatortest.Poll(ctx, 30*time.Second, 50*time.Millisecond, func() (bool, string) {
		_, _, self := lead.Cluster.Leader()
		return self, "the first node to lead"
	}); err != nil {
		sc.stop()
		return nil, 0, err
	}
	sc.join = []string{lead.Addr()}
	names := make([]string, 0, n-1)
	for i := 1; i < n; i++ {
		names = append(names, nodeName(i))
	}
	aliveAtLeader := func() int {
		k := 0
		for _, m := range lead.Cluster.Members() {
			if m.Alive {
				k++
			}
		}
		return k
	}
	if err := sc.addBatches(ctx, names, o.batch, 0, preload, desired, aliveAtLeader); err != nil {
		for _, l := range log.take(8) {
			progress("  nodes %s", l)
		}
		sc.stop()
		return nil, 0, err
	}
	if err := c.waitStatesAtLeader(ctx, 3*time.Minute); err != nil {
		sc.stop()
		return nil, 0, err
	}
	if err := coordinatortest.Poll(ctx, time.Minute, 100*time.Millisecond, func() (bool, string) {
		in, _, _, _ := c.backend.Snapshot()
		d := status.Compute(in)
		return len(d.CommonCache) == images && aliveNodes(in) == n, fmt.Sprintf("common_cache %d of %d images over %d alive nodes", len(d.CommonCache), images, aliveNodes(in))
	}); err != nil {
		sc.stop()
		return nil, 0, err
	}
	formed := time.Since(start)
	if rate, ok := sc.waitQuiet(ctx, quietLimit, 3*time.Minute); !ok {
		progress("  gossip still at %.0f B/s per node after 3 min; going on", rate)
	}
	return c, formed, nil
}

// quietLimit is the gossip rate per node below which a cluster counts as settled; steady
// state is well under it (see (c)), formation and convergence storms well above.
const quietLimit = 4096

// waitStatesAtLeader waits until the leader holds the newest state of every node, and every
// node sees the leader.
func (c *inProcCluster) waitStatesAtLeader(ctx context.Context, timeout time.Duration) error {
	want := c.leader.Name
	return coordinatortest.Poll(ctx, timeout, 200*time.Millisecond, func() (bool, string) {
		have := map[string]uint64{}
		for _, s := range c.leader.Cluster.NodeStates() {
			have[s.Node] = s.Version
		}
		behind := 0
		for _, n := range c.sc.nodes {
			if l, _, _ := n.Cluster.Leader(); l != want || have[n.Name] != n.ag.State().Version {
				behind++
			}
		}
		return behind == 0, fmt.Sprintf("%d of %d nodes' newest states not at the leader yet", behind, len(c.sc.nodes))
	})
}

func aliveNodes(in status.Input) int {
	k := 0
	for _, n := range in.Nodes {
		if n.Alive {
			k++
		}
	}
	return k
}

// measureConvergence runs rounds of (a) on c: the leader publishes the desired list plus one
// new image, every agent pulls it, and the time from the last pull's end to the first
// aggregation showing the image in common_cache is recorded.
func measureConvergence(ctx context.Context, o options, c *inProcCluster, rounds int) (convergenceResult, error) {
	n := len(c.sc.nodes)
	res := convergenceResult{nodes: n}
	list := slices.Clone(c.base)
	for r := range rounds {
		ref := imageRef(fmt.Sprintf("n%d_r", n), r)
		digest := digestOf(ref)
		list = append(list, image.Image{Ref: image.MustParseRef(ref), Digest: digest, Name: ref})
		for _, node := range c.sc.nodes {
			serve(node.rt, ref)
		}
		cpu0 := sampleCPU()
		published := time.Now()
		if _, err := c.leader.Cluster.PublishDesired(list); err != nil {
			return res, fmt.Errorf("round %d: publish: %w", r+1, err)
		}
		var shown time.Time
		deadline := published.Add(2 * time.Minute)
		for shown.IsZero() {
			t0 := time.Now()
			in, _, _, self := c.backend.Snapshot()
			if !self {
				return res, fmt.Errorf("round %d: %s no longer leads", r+1, c.leader.Name)
			}
			d := status.Compute(in)
			now := time.Now()
			res.compute = append(res.compute, now.Sub(t0))
			if aliveNodes(in) == n && slices.ContainsFunc(d.CommonCache, func(ci status.CommonImage) bool {
				return ci.ImageURL == ref && ci.ImageHash == digest
			}) {
				shown = now
				break
			}
			if now.After(deadline) {
				return res, fmt.Errorf("round %d: common_cache did not show %s within 2 min (%d alive nodes at the leader)", r+1, ref, aliveNodes(in))
			}
			if lab.Sleep(ctx, o.poll) != nil {
				return res, ctx.Err()
			}
		}
		var last, lastStart time.Time
		for _, node := range c.sc.nodes {
			st, t, ok := pulledAt(node.rt, ref)
			if !ok {
				return res, fmt.Errorf("round %d: common_cache shows %s but %s never pulled it", r+1, ref, node.Name)
			}
			if t.After(last) {
				last = t
			}
			if st.After(lastStart) {
				lastStart = st
			}
		}
		cpu := cpu0.since()
		res.lat = append(res.lat, shown.Sub(last))
		res.e2e = append(res.e2e, shown.Sub(published))
		progress("  %d nodes, round %d/%d: last pull -> common_cache %s (publish -> last pull start %s, -> common_cache %s; cpu %s)",
			n, r+1, rounds, ms(shown.Sub(last)), ms(lastStart.Sub(published)), ms(shown.Sub(published)), cpu)
		// Settle before the next round: every node's final state at the leader, gossip quiet.
		if err := c.waitStatesAtLeader(ctx, 2*time.Minute); err != nil {
			return res, fmt.Errorf("round %d: %w", r+1, err)
		}
		// With scaled timings (500 nodes) the metadata refreshes after a round take minutes to
		// gossip out at one gossip per second; waiting longer only makes the run longer.
		quiet := 2 * time.Minute
		if _, scaled := simTimings(n); scaled != "" {
			quiet = 30 * time.Second
		}
		if rate, ok := c.sc.waitQuiet(ctx, quietLimit, quiet); !ok {
			res.notes = append(res.notes, fmt.Sprintf("round %d: gossip not quiet before the next round (%.0f B/s per node)", r+1, rate))
		}
	}
	return res, nil
}

// measureGossip reads every node's gossip byte counters over window at steady state.
func measureGossip(ctx context.Context, c *inProcCluster, images int, window time.Duration) (gossipResult, error) {
	n := len(c.sc.nodes)
	res := gossipResult{nodes: n, images: images, window: window}
	sumByTransport := func() map[string]float64 {
		out := map[string]float64{}
		for _, node := range c.sc.nodes {
			for k, v := range counterByLabel(node.Registry, "cachemachine_gossip_bytes_sent_total", "transport") {
				out[k] += v
			}
		}
		return out
	}
	leaderRecv := func() float64 { return counterSum(c.leader.Registry, "cachemachine_gossip_bytes_received_total") }
	leaderSent := func() float64 { return counterSum(c.leader.Registry, "cachemachine_gossip_bytes_sent_total") }
	versions := func() []uint64 {
		out := make([]uint64, n)
		for i, node := range c.sc.nodes {
			out[i] = node.ag.State().Version
		}
		return out
	}
	v0 := versions()
	s0, r0, l0, t0 := sumByTransport(), leaderRecv(), leaderSent(), time.Now()
	progress("  measuring gossip traffic for %s", window)
	if lab.Sleep(ctx, window) != nil {
		return res, ctx.Err()
	}
	s1, r1, l1, t1 := sumByTransport(), leaderRecv(), leaderSent(), time.Now()
	secs := t1.Sub(t0).Seconds()
	res.byTransport = map[string]float64{}
	var total float64
	for k, v := range s1 {
		res.byTransport[k] = (v - s0[k]) / float64(n) / secs
		total += v - s0[k]
	}
	res.perNode = total / float64(n) / secs
	res.leaderRecv = (r1 - r0) / secs
	res.leaderSent = (l1 - l0) / secs
	if changed := countChanged(v0, versions()); changed > 0 {
		res.notes = append(res.notes, fmt.Sprintf("%d node states changed during the window (not steady)", changed))
	}
	return res, nil
}

func countChanged(a, b []uint64) int {
	k := 0
	for i := range a {
		if a[i] != b[i] {
			k++
		}
	}
	return k
}
