package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/cri/critest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// imageRepo is a realistic GAR repository, so that references (and the gossip that carries
// them) have the length they have in production.
const imageRepo = "us-central1-docker.pkg.dev/rubin-shared-services-71ec/sciplat/sciplat-lab"

// imageSize is the size of every image of the catalogue (a 4 GB lab image).
const imageSize = 4 << 30

// imageRef returns the i-th image of the bench's catalogue.
func imageRef(prefix string, i int) string { return fmt.Sprintf("%s:%s_%04d", imageRepo, prefix, i) }

// digestOf is the manifest digest the fake registry serves for ref: every node that pulls
// ref gets the same digest.
func digestOf(ref string) string {
	sum := sha256.Sum256([]byte("manifest of " + ref))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// nodeName is the name of the i-th simulated node: the length of a GKE node name, so that
// membership gossip has its production size; "a000…" sorts first and so leads.
func nodeName(i int) string {
	return fmt.Sprintf("a%03d-gke-rsp-lab-pool-%08x", i, uint32(i)*2654435761)
}

// newRuntime is a simulated node's CRI runtime, in memory: ref is served by the registry as
// digestOf(ref), with imageSize, once serve(ref) was called; pulls take minLat to maxLat; the
// images of preload are on the node already. Its image filesystem is not visible, so the
// agent's disk guard stays off, as in a pod without the image filesystem mounted.
func newRuntime(minLat, maxLat time.Duration, preload []string) (*critest.Runtime, error) {
	rt := critest.NewRuntime(critest.RuntimeOptions{})
	rt.SetPullLatency(minLat)
	rt.SetPullJitter(maxLat - minLat)
	for _, ref := range preload {
		serve(rt, ref)
		if err := rt.Load(ref); err != nil {
			return nil, err
		}
	}
	return rt, nil
}

// serve makes the registry behind rt serve ref.
func serve(rt *critest.Runtime, ref string) { rt.AddRemote(ref, digestOf(ref), imageSize) }

// pulledAt returns when the last successful pull of ref on rt started and finished.
func pulledAt(rt *critest.Runtime, ref string) (started, done time.Time, ok bool) {
	calls := rt.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		c := calls[i]
		if c.Method == critest.MethodPullImage && c.Ref == ref && !c.End.IsZero() && c.Err == nil {
			return c.Time, c.End, true
		}
	}
	return time.Time{}, time.Time{}, false
}

// simNode is one in-process node of coordinatortest (a real coordinator.Cluster, memberlist on
// 127.0.0.1 at production timings, with its own registry) over a real agent.Agent on an
// in-memory runtime.
type simNode struct {
	*coordinatortest.Node
	rt        *critest.Runtime
	ag        *agent.Agent
	stopAgent context.CancelFunc
}

// scaledTimingsAbove is the largest in-process cluster whose nodes run memberlist at
// production timings; larger simulations scale the failure detector (simTimings).
const scaledTimingsAbove = 100

// simTimings returns the memberlist adjustment for the nodes of an in-process cluster of n
// nodes, and a description for the report; nil up to scaledTimingsAbove nodes.
//
// A real node has cores of its own. n simulated nodes share this machine's: at 500 on two
// cores, 4 ms of CPU per node per second, less than memberlist's failure detector at
// production rates needs while ten nodes join at once. Probes then time out, false
// suspicions and refutations gossip on, and formation churns without end. Scaling probe
// and gossip intervals keeps the simulated membership stable. It does not touch what (a)
// measures: node states travel to the leader as direct TCP sends, and the leader aggregates
// on its own schedule.
func simTimings(n int) (func(*memberlist.Config), string) {
	if n <= scaledTimingsAbove {
		return nil, ""
	}
	return func(c *memberlist.Config) {
		c.ProbeInterval = 5 * time.Second
		c.ProbeTimeout = 2 * time.Second
		c.GossipInterval = time.Second
		c.TCPTimeout = 10 * time.Second
	}, "simulated nodes probe every 5 s (timeout 2 s) and gossip every 1 s instead of 500 ms/250 ms/100 ms"
}

// simCluster owns a set of simNodes and the goroutines that run them.
type simCluster struct {
	key    []byte
	join   []string
	minLat time.Duration
	maxLat time.Duration
	logger *slog.Logger
	tune   func(*memberlist.Config) // simTimings

	nodes  []*simNode
	agents sync.WaitGroup // every agent.Run; coordinatortest owns each Cluster.Run
}

// add creates a node that holds preload and, when desired.Version is set, starts from that
// desired list; it starts its agent and its cluster membership (which joins sc.join).
func (sc *simCluster) add(ctx context.Context, name string, preload []string, desired agent.Desired) (*simNode, error) {
	rt, err := newRuntime(sc.minLat, sc.maxLat, preload)
	if err != nil {
		return nil, err
	}
	log := sc.logger.With("node", name)
	ag, err := agent.New(agent.Config{Node: name}, rt, nil, log.With("component", "agent"))
	if err != nil {
		return nil, err
	}
	if desired.Version != 0 {
		ag.SetDesired(desired)
	}
	actx, stopAgent := context.WithCancel(ctx)
	sc.agents.Go(func() { _ = ag.Run(actx) })
	// Join only after the agent's first inventory, as a node whose CRI answers in
	// milliseconds does, and without that change pending: otherwise the coordinator's
	// metadata updater announces the node a second time right after the join (its first
	// update is unconditional), one more cluster-wide broadcast per node while forming —
	// which is what formation costs most of on a few cores (see the report).
	if err := coordinatortest.Poll(ctx, 10*time.Second, time.Millisecond, func() (bool, string) {
		return ag.State().Ready, "the agent's first inventory"
	}); err != nil {
		stopAgent()
		return nil, err
	}
	select {
	case <-ag.Changes():
	default:
	}
	cn, err := coordinatortest.Start(ctx, coordinatortest.Options{
		Name: name,
		Join: sc.join,
		Key:  sc.key,
		// Never contacted; a pod address of production length keeps the metadata realistic.
		HTTPAddr:   "10.128.12.34:8080",
		Local:      ag,
		Logger:     log.With("component", "cluster"),
		Production: true,
		Options:    []coordinator.Option{coordinator.WithMemberlistTuning(sc.tune)},
	})
	if err != nil {
		stopAgent()
		return nil, err
	}
	n := &simNode{Node: cn, rt: rt, ag: ag, stopAgent: stopAgent}
	sc.nodes = append(sc.nodes, n)
	return n, nil
}

// stallError says that forming the in-process cluster stopped making progress: every node
// gossips on the same few cores, and past some size one batch of joins saturates them, probes
// time out, false suspicions and refutations gossip further, and the cluster churns.
type stallError struct {
	formed, want int
	stable       int // members when the last batch before the failing one had settled
	cpu          cpuUse
	why          string
}

func (e *stallError) Error() string {
	return fmt.Sprintf("in-process formation stalled at %d of %d nodes, last settled at %d (%s; %s)", e.formed, e.want, e.stable, e.cpu, e.why)
}

// addBatches adds the nodes named names in batches: 50 at a time up to 100 nodes (stable on
// two cores), then batch at a time. After each batch it waits until alive() reports every
// node started so far (plus extra members not in sc) as alive, and for gossip to calm down;
// when either does not happen in time it returns a *stallError.
func (sc *simCluster) addBatches(ctx context.Context, names []string, batch, extra int, preload []string, desired agent.Desired, alive func() int) error {
	total := len(names) + len(sc.nodes) + extra
	stable := len(sc.nodes) + extra
	for start := 0; start < len(names); {
		size := batch
		if len(sc.nodes)+extra < 100 {
			size = max(batch, 50)
		}
		end := min(start+size, len(names))
		cpu0 := sampleCPU()
		for _, name := range names[start:end] {
			if _, err := sc.add(ctx, name, preload, desired); err != nil {
				return fmt.Errorf("node %s: %w", name, err)
			}
		}
		start = end
		want := len(sc.nodes) + extra
		if err := coordinatortest.Poll(ctx, time.Minute, 200*time.Millisecond, func() (bool, string) {
			n := alive()
			return n == want, fmt.Sprintf("%d of %d members alive", n, want)
		}); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return &stallError{formed: want, want: total, stable: stable, cpu: cpu0.since(), why: err.Error()}
		}
		// Let the join gossip (every joiner re-announces every member it learns) die down
		// before the next batch, so that the in-process nodes do not starve each other's
		// probes into false suspicions.
		rate, quiet := sc.waitQuiet(ctx, quietLimit, 45*time.Second)
		// With scaled timings gossip drains ten times slower: a batch that is all alive
		// has settled enough, whatever the traffic.
		if !quiet && sc.tune == nil && start < len(names) { // after the last batch, callers wait for calm themselves
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &stallError{formed: want, want: total, stable: stable, cpu: cpu0.since(), why: fmt.Sprintf("gossip still %.1f KiB/s per node after 45 s", rate/1024)}
		}
		stable = want
		progress("  %d/%d members (%s)", want, total, cpu0.since())
	}
	return nil
}

// stop ends every node (each leaves the cluster, bounded by the product's leave timeouts,
// all at once) and its agent, and waits for all of them.
func (sc *simCluster) stop() {
	nodes := make([]*coordinatortest.Node, 0, len(sc.nodes))
	for _, n := range sc.nodes {
		n.stopAgent()
		nodes = append(nodes, n.Node)
	}
	_ = coordinatortest.StopAll(nodes) // Run and Close fail only when leaving does, which the node logs
	sc.agents.Wait()
}

// counterSum returns the sum over all label values of the counter family name in reg.
func counterSum(reg prometheus.Gatherer, name string) float64 {
	fams, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// counterByLabel returns the counter family name in reg by the value of label.
func counterByLabel(reg prometheus.Gatherer, name, label string) map[string]float64 {
	out := map[string]float64{}
	fams, err := reg.Gather()
	if err != nil {
		return out
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					out[lp.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// bytesSent is the gossip traffic every node of sc sent so far.
func (sc *simCluster) bytesSent() float64 {
	var sum float64
	for _, n := range sc.nodes {
		sum += counterSum(n.Registry, "cachemachine_gossip_bytes_sent_total")
	}
	return sum
}

// drops sums cachemachine_gossip_dropped_total by reason over every node.
func (sc *simCluster) drops() map[string]float64 {
	out := map[string]float64{}
	for _, n := range sc.nodes {
		for r, v := range counterByLabel(n.Registry, "cachemachine_gossip_dropped_total", "reason") {
			if v > 0 {
				out[r] += v
			}
		}
	}
	return out
}

// waitQuiet waits until the gossip traffic of sc has fallen to steady state: below limit
// bytes per node per second over two consecutive 1-second samples. It returns the last rate
// and false when that did not happen within timeout.
func (sc *simCluster) waitQuiet(ctx context.Context, limit float64, timeout time.Duration) (float64, bool) {
	deadline := time.Now().Add(timeout)
	const sample = time.Second
	prev, prevT := sc.bytesSent(), time.Now()
	calm := 0
	rate := 0.0
	// Past the deadline, one more sample may confirm a calm one.
	for time.Now().Before(deadline) || calm == 1 {
		if lab.Sleep(ctx, sample) != nil {
			return rate, false
		}
		cur, now := sc.bytesSent(), time.Now()
		rate = (cur - prev) / float64(len(sc.nodes)) / now.Sub(prevT).Seconds()
		prev, prevT = cur, now
		if rate < limit {
			calm++
			if calm == 2 {
				return rate, true
			}
		} else {
			calm = 0
			if time.Now().After(deadline) {
				break
			}
		}
	}
	return rate, false
}

// countingHandler is a slog.Handler that counts records at Warn and above by message, so
// that problems inside hundreds of in-process nodes show up in the report.
type countingHandler struct {
	mu     *sync.Mutex
	counts map[string]int
}

func newCountingHandler() countingHandler {
	return countingHandler{mu: &sync.Mutex{}, counts: map[string]int{}}
}

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

// volatile matches what differs between otherwise equal log lines: node names, addresses,
// numbers.
var volatile = regexp.MustCompile(`a\d{3}-gke-rsp-lab-pool-[0-9a-f]{8}|\d+\.\d+\.\d+\.\d+(:\d+)?|\d+(\.\d+)?(ms|s)?`)

func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	msg := volatile.ReplaceAllString(r.Message, "…")
	h.mu.Lock()
	h.counts[r.Level.String()+" "+msg]++
	h.mu.Unlock()
	return nil
}

func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// take returns the k most frequent messages so far, with their counts, and resets them.
func (h countingHandler) take(k int) []string {
	h.mu.Lock()
	counts := maps.Clone(h.counts)
	clear(h.counts)
	h.mu.Unlock()
	msgs := slices.SortedFunc(maps.Keys(counts), func(a, b string) int { return counts[b] - counts[a] })
	out := make([]string, 0, k)
	for _, m := range msgs[:min(k, len(msgs))] {
		out = append(out, fmt.Sprintf("logged %dx %q", counts[m], m))
	}
	return out
}
