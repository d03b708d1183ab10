// Command cluster is the bench-cluster benchmark: the cluster-level targets of the design
// (§8), each measured in the same run and printed as one table with PASS/FAIL:
//
//	(a) convergence: last pull done -> the leader's common_cache shows it, with 10, 100 and
//	    500 in-process agents (real agent.Agent on an in-memory runtime, real memberlist on
//	    127.0.0.1, production timings up to 100 nodes, see simTimings);
//	(b) failover: leader SIGKILLed -> correct status from the new leader, three agent
//	    processes on real containerd and a real registry;
//	(c) gossip bytes per node per second at steady state, 100 nodes x 50 images;
//	(d) the leader's RSS (the built binary) with 500 members x 100 images;
//	(e) an idle agent's RSS (100 images, 100 members) next to a real containerd's.
//
// All processes it starts are its children and are waited for; temporary directories are
// removed.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	_ "net/http/pprof" // --pprof
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
)

type options struct {
	bin             string
	nodes           []int
	rounds          []int
	images          int
	pullMin         time.Duration
	pullMax         time.Duration
	poll            time.Duration
	batch           int
	gossipNodes     int
	gossipImages    int
	gossipWindow    time.Duration
	rssNodes        int
	rssImages       int
	agentMembers    int
	failoverRounds  int
	profileDir      string
	skipConvergence bool
	skipFailover    bool
	skipGossip      bool
	skipRSS         bool
	key             []byte
}

func main() {
	var o options
	nodes := flag.String("nodes", "10,100,500", "(a) cluster sizes, comma-separated")
	rounds := flag.String("rounds", "10,7,5", "(a) rounds per cluster size (one value for all, or one per size)")
	flag.StringVar(&o.bin, "bin", "bin/cachemachine", "the built binary (make build)")
	flag.IntVar(&o.images, "images", 50, "(a) images every node holds before the rounds")
	flag.DurationVar(&o.pullMin, "pull-min", 20*time.Millisecond, "(a) least latency of a fake pull")
	flag.DurationVar(&o.pullMax, "pull-max", 80*time.Millisecond, "(a) largest latency of a fake pull (uniform in between)")
	flag.DurationVar(&o.poll, "poll", 5*time.Millisecond, "(a) pause between two aggregations on the leader")
	flag.IntVar(&o.batch, "batch", 10, "simulated nodes started per batch while forming a cluster beyond 100 nodes (50 per batch up to 100)")
	flag.IntVar(&o.gossipNodes, "gossip-nodes", 100, "(c) nodes")
	flag.IntVar(&o.gossipImages, "gossip-images", 50, "(c) images per node")
	flag.DurationVar(&o.gossipWindow, "gossip-window", 90*time.Second, "(c) measurement window (90 s = 2 push/pull periods at 100 members, 3 state backstops)")
	flag.IntVar(&o.rssNodes, "rss-nodes", 500, "(d) members with the leader process")
	flag.IntVar(&o.rssImages, "rss-images", 100, "(d), (e) images per node")
	flag.IntVar(&o.agentMembers, "agent-members", 100, "(e) members with the idle agent processes")
	flag.IntVar(&o.failoverRounds, "failover-rounds", 5, "(b) rounds")
	flag.StringVar(&o.profileDir, "profile-dir", "", "(d), (e): save the agent processes' heap profiles in this directory")
	flag.BoolVar(&o.skipConvergence, "skip-convergence", false, "skip (a)")
	flag.BoolVar(&o.skipFailover, "skip-failover", false, "skip (b)")
	flag.BoolVar(&o.skipGossip, "skip-gossip", false, "skip (c)")
	flag.BoolVar(&o.skipRSS, "skip-rss", false, "skip (d) and (e)")
	gogc := flag.Int("gogc", 400, "GOGC of this process: hundreds of in-process nodes share one garbage collector on few cores")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (the in-process nodes) to this file")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof of this process on this address (e.g. 127.0.0.1:6060)")
	quick := flag.Bool("quick", false, "a quick run: --nodes 10,100 --rounds 3 --gossip-window 30s --rss-nodes 100 --failover-rounds 2")
	flag.Parse()
	if *quick {
		*nodes, *rounds = "10,100", "3"
		o.gossipWindow, o.rssNodes, o.failoverRounds = 30*time.Second, 100, 2
	}
	var err error
	if o.nodes, err = intList(*nodes); err == nil {
		o.rounds, err = intList(*rounds)
	}
	if err == nil && len(o.rounds) != 1 && len(o.rounds) != len(o.nodes) {
		err = fmt.Errorf("--rounds: %d values for %d cluster sizes", len(o.rounds), len(o.nodes))
	}
	if err == nil && (o.pullMax < o.pullMin || o.batch < 1 || o.images < 0 || o.agentMembers < 3 || o.rssNodes < 3 || o.gossipNodes < 2) {
		err = errors.New("invalid sizes: want pull-max >= pull-min, batch >= 1, members >= 3")
	}
	for _, n := range o.nodes {
		if err == nil && n < 2 {
			err = fmt.Errorf("--nodes: %d: want at least 2", n)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-cluster:", err)
		os.Exit(2)
	}
	if !o.skipFailover || !o.skipRSS {
		if _, err := os.Stat(o.bin); err != nil {
			fmt.Fprintf(os.Stderr, "bench-cluster: %v (run make build, or pass --bin)\n", err)
			os.Exit(2)
		}
	}
	debug.SetGCPercent(*gogc)
	o.key = make([]byte, 32)
	_, _ = rand.Read(o.key)

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-cluster: cpu profile:", err)
			os.Exit(2)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *pprofAddr != "" {
		srv := &http.Server{Addr: *pprofAddr, ReadHeaderTimeout: 10 * time.Second}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				progress("pprof: %v", err)
			}
		}()
		defer func() { _ = srv.Close(); <-done }()
	}
	if err := run(ctx, o); err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench-cluster:", err)
		os.Exit(1)
	}
}

func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// row is one line of the result table.
type row struct {
	id, what, runs, median, spread, target, verdict string
}

func run(ctx context.Context, o options) error {
	began := time.Now()
	if lim, err := lab.RaiseNoFile(); err != nil {
		progress("raising the open-file limit: %v", err)
	} else {
		progress("open-file limit %d", lim)
	}
	var rows []row
	var notes []string
	var failed []string
	fail := func(id, what string, err error) {
		rows = append(rows, row{id: id, what: what, verdict: "ERROR"})
		failed = append(failed, fmt.Sprintf("%s %s: %v", id, what, err))
		progress("%s %s: %v", id, what, err)
	}

	if !o.skipFailover {
		progress("(b) failover with 3 agent processes on real containerd")
		what := "failover: leader SIGKILL -> correct status from new leader (3 processes, real containerd)"
		res, err := measureFailover(ctx, o)
		if err != nil {
			fail("(b)", what, err)
		} else {
			med, worst := median(res.times), slices.Max(res.times)
			rows = append(rows, row{"(b)", what, fmt.Sprintf("%d rounds", len(res.times)), secs(med), "max " + secs(worst), "<= 5 s", verdict(med <= 5*time.Second && worst <= 5*time.Second)})
			notes = append(notes, res.notes...)
		}
	}

	// formLimit is the largest in-process cluster that formed and settled before a formation
	// stalled on this machine (0: no stall seen).
	formLimit := 0
	gossipDone := o.skipGossip
	if !o.skipConvergence {
		for i, n := range o.nodes {
			rounds := o.rounds[min(i, len(o.rounds)-1)]
			what := fmt.Sprintf("convergence: last pull done -> leader common_cache, %d agents", n)
			progress("(a) %d in-process agents, %d images each: forming the cluster", n, o.images)
			c, formed, err := formInProc(ctx, o, n, o.images)
			var stall *stallError
			if errors.As(err, &stall) {
				// Not the product's verdict: this machine cannot host that many nodes.
				formLimit = stall.stable
				rows = append(rows, row{"(a)", what, "—", "not measurable on 2 cores (notes)", "", targetFor(n), "n/a"})
				notes = append(notes, fmt.Sprintf("(a) %d agents: %v", n, err))
				continue
			}
			if err != nil {
				fail("(a)", what, err)
				continue
			}
			progress("  formed and converged in %s", secs(formed))
			if _, how := simTimings(n); how != "" {
				notes = append(notes, fmt.Sprintf("(a) %d agents: %s", n, how))
			}
			if !gossipDone && n == o.gossipNodes && o.images == o.gossipImages {
				gossipDone = true
				rows, notes = gossipRows(ctx, c, o, rows, notes, fail)
			}
			res, err := measureConvergence(ctx, o, c, rounds)
			for _, l := range c.log.take(5) {
				notes = append(notes, fmt.Sprintf("(a) %d agents: nodes %s", n, l))
			}
			for r, v := range c.sc.drops() {
				notes = append(notes, fmt.Sprintf("(a) %d agents: %.0f gossip messages dropped (%s)", n, v, r))
			}
			progress("  stopping %d nodes", n)
			c.sc.stop()
			if err != nil {
				fail("(a)", what, err)
				continue
			}
			ok := "—"
			if limit, has := targetOf(n); has {
				ok = verdict(median(res.lat) <= limit)
			}
			rows = append(rows, row{"(a)", what, fmt.Sprintf("%d rounds", len(res.lat)), ms(median(res.lat)), "p95 " + ms(p95(res.lat)), targetFor(n), ok})
			notes = append(notes, fmt.Sprintf("(a) %d agents: publish -> common_cache p50 %s p95 %s; one leader aggregation (Snapshot+Compute) p50 %s p95 %s; formation %s",
				n, ms(median(res.e2e)), ms(p95(res.e2e)), ms(median(res.compute)), ms(p95(res.compute)), secs(formed)))
			for _, s := range res.notes {
				notes = append(notes, fmt.Sprintf("(a) %d agents: %s", n, s))
			}
		}
	}
	if !gossipDone {
		progress("(c) %d in-process agents, %d images each: forming the cluster", o.gossipNodes, o.gossipImages)
		c, _, err := formInProc(ctx, o, o.gossipNodes, o.gossipImages)
		if err != nil {
			fail("(c)", "gossip", err)
		} else {
			rows, notes = gossipRows(ctx, c, o, rows, notes, fail)
			c.sc.stop()
		}
	}

	if !o.skipRSS {
		progress("(d) leader process with %d members x %d images", o.rssNodes, o.rssImages)
		what := fmt.Sprintf("leader RSS (binary), %d members x %d images, converged", o.rssNodes, o.rssImages)
		members, deviation := o.rssNodes, ""
		if formLimit > 0 && formLimit < members {
			members, deviation = formLimit, fmt.Sprintf("in-process formation of more than %d nodes stalled in (a)", formLimit)
		}
		res, err := measureBinaryRSS(ctx, o, members, o.rssImages, false)
		var stall *stallError
		if errors.As(err, &stall) && stall.stable >= 3 {
			progress("  %v; measuring with %d members", err, stall.stable)
			members, deviation = stall.stable, fmt.Sprintf("in-process formation of %d stalled", stall.formed)
			res, err = measureBinaryRSS(ctx, o, members, o.rssImages, false)
		}
		if err != nil {
			fail("(d)", what, err)
		} else {
			l := res.procs[0]
			if deviation != "" {
				what = fmt.Sprintf("leader RSS (binary), %d members x %d images (DEVIATION: not %d, see notes)", members, o.rssImages, o.rssNodes)
				notes = append(notes, fmt.Sprintf("(d) measured with %d members instead of %d: %s on this machine", members, o.rssNodes, deviation))
				if live := res.liveHeap[0]; live > 0 {
					perMember := live / float64(members)
					notes = append(notes, fmt.Sprintf("(d) the leader's live heap is %.1f MiB at %d members, %.0f KiB per member of %d images: %d members would add about %.0f MiB live heap, twice that in heap under GOGC=100",
						live/(1<<20), members, perMember/1024, o.rssImages, o.rssNodes, float64(o.rssNodes-members)*perMember/(1<<20)))
				}
			}
			rows = append(rows, row{"(d)", what, "3 samples", mib(l.rssKiB), "peak " + mib(l.hwmKiB), "— (report)", "—"})
			notes = append(notes, fmt.Sprintf("(d) formed and converged in %s", secs(res.formation)))
			notes = append(notes, prefixed("(d) ", res.notes)...)
		}

		progress("(e) idle agent processes (leader and member) with %d members x %d images, and containerd", o.agentMembers, o.rssImages)
		cdKiB, cdVersion, cdErr := containerdRSS(ctx)
		res, err = measureBinaryRSS(ctx, o, o.agentMembers, o.rssImages, true)
		if err != nil {
			fail("(e)", "agent RSS idle", err)
		} else {
			for i, p := range res.procs {
				role := "leader"
				if i > 0 {
					role = "member"
				}
				ratio := ""
				if cdErr == nil && cdKiB > 0 {
					ratio = fmt.Sprintf(" (%.2fx containerd)", float64(p.rssKiB)/float64(cdKiB))
				}
				rows = append(rows, row{"(e)", fmt.Sprintf("agent RSS idle, %s %s, %d members x %d images%s", role, p.name, o.agentMembers, o.rssImages, ratio), "3 samples", mib(p.rssKiB), "peak " + mib(p.hwmKiB), "<= 40 MiB", verdict(p.rssKiB <= 40*1024)})
			}
			notes = append(notes, prefixed("(e) ", res.notes)...)
		}
		if cdErr != nil {
			fail("(e)", "containerd RSS baseline", cdErr)
		} else {
			rows = append(rows, row{"(e)", "baseline: containerd RSS after one CRI ListImages (" + cdVersion + ")", "1 sample", mib(cdKiB), "", "—", "—"})
		}
	}

	printTable(o, rows, notes, time.Since(began))
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "\n"))
	}
	return nil
}

// targetOf is the design's convergence target for n agents: p50 <= 0.5 s at 100, <= 2 s at
// 500 (none below 100).
func targetOf(n int) (time.Duration, bool) {
	switch {
	case n >= 500:
		return 2 * time.Second, true
	case n >= 100:
		return 500 * time.Millisecond, true
	}
	return 0, false
}

func targetFor(n int) string {
	if d, ok := targetOf(n); ok {
		return "p50 <= " + strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.1f", d.Seconds()), "0"), ".") + " s"
	}
	return "— (report)"
}

// gossipRows measures (c) on c and appends its rows.
func gossipRows(ctx context.Context, c *inProcCluster, o options, rows []row, notes []string, fail func(id, what string, err error)) ([]row, []string) {
	n := len(c.sc.nodes)
	progress("(c) gossip traffic at steady state, %d nodes x %d images", n, o.gossipImages)
	res, err := measureGossip(ctx, c, o.gossipImages, o.gossipWindow)
	what := fmt.Sprintf("gossip sent per node, %d nodes x %d images, steady state", n, o.gossipImages)
	if err != nil {
		fail("(c)", what, err)
		return rows, notes
	}
	rows = append(rows,
		row{"(c)", what, fmt.Sprintf("%.0f s window", res.window.Seconds()), kibs(res.perNode), "", "<= 2 KiB/s", verdict(res.perNode <= 2048)},
		row{"(c)", "gossip received by the leader", fmt.Sprintf("%.0f s window", res.window.Seconds()), kibs(res.leaderRecv), "", "— (report)", "—"},
	)
	notes = append(notes, fmt.Sprintf("(c) per node: UDP (probes, gossip) %s, TCP (push/pull, state to leader) %s; leader sent %s",
		kibs(res.byTransport["packet"]), kibs(res.byTransport["stream"]), kibs(res.leaderSent)))
	notes = append(notes, prefixed("(c) ", res.notes)...)
	return rows, notes
}

func prefixed(p string, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = p + s
	}
	return out
}

func printTable(o options, rows []row, notes []string, took time.Duration) {
	var parts []string
	if !o.skipConvergence {
		var rs []string
		for i, n := range o.nodes {
			rs = append(rs, fmt.Sprintf("%d@%d", o.rounds[min(i, len(o.rounds)-1)], n))
		}
		parts = append(parts, "(a) convergence rounds "+strings.Join(rs, ", ")+" agents")
	}
	if !o.skipFailover {
		parts = append(parts, fmt.Sprintf("(b) failover %d rounds", o.failoverRounds))
	}
	if !o.skipGossip {
		parts = append(parts, fmt.Sprintf("(c) gossip %d nodes x %d images over %.0f s", o.gossipNodes, o.gossipImages, o.gossipWindow.Seconds()))
	}
	if !o.skipRSS {
		parts = append(parts, fmt.Sprintf("(d) leader RSS %d x %d", o.rssNodes, o.rssImages), fmt.Sprintf("(e) agent RSS %d x %d", o.agentMembers, o.rssImages))
	}
	sim := ""
	if !o.skipConvergence {
		sim = fmt.Sprintf("; fake pull latency %s-%s", ms(o.pullMin), ms(o.pullMax))
	}
	fmt.Printf("\nbench-cluster: machine: %s; measured: %s; production gossip timings (no WithTestTimings; scaled above %d simulated nodes, see notes), AES-256-GCM keyed gossip on 127.0.0.1%s; took %s\n\n",
		lab.Machine(), strings.Join(parts, "; "), scaledTimingsAbove, sim, took.Round(time.Second))
	table := [][]string{{"", "measurement", "runs", "median", "p95 / max", "target", "result"}}
	for _, r := range rows {
		table = append(table, r.cells())
	}
	lab.PrintTable(os.Stdout, table)
	if len(notes) > 0 {
		fmt.Println()
		for _, n := range notes {
			fmt.Println("- " + n)
		}
	}
}

func (r row) cells() []string {
	return []string{r.id, r.what, r.runs, r.median, r.spread, r.target, r.verdict}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// p95 is the nearest-rank 95th percentile (the maximum for fewer than 20 samples).
func p95(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(math.Ceil(0.95*float64(len(s))))-1]
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func ms(d time.Duration) string {
	if d >= 10*time.Second {
		return secs(d)
	}
	return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func kibs(bps float64) string { return fmt.Sprintf("%.2f KiB/s", bps/1024) }

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func newLogger(h slog.Handler) *slog.Logger { return slog.New(h) }

// cpuUse is CPU use over a span as a fraction of all cores: this process's, and the rest of
// the machine's: child processes still running (agents, containerd) and other work on a shared
// machine, which skews timings.
type cpuUse struct{ self, others float64 }

func (u cpuUse) String() string {
	return fmt.Sprintf("bench %.0f%% + rest of machine %.0f%% of %d cores", 100*u.self, 100*u.others, runtime.NumCPU())
}
