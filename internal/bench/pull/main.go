// Command pull is the bench-pull benchmark: K distinct images onto an empty node, by the
// agent, by direct CRI PullImage calls one after another (the kubelet's default serialized
// puller), and by direct CRI calls at the agent's parallelism, on real containerd and a real
// docker-registry. Every round starts each mode on a fresh containerd; the table shows medians
// and ratios measured in the same run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
)

func main() {
	images := flag.Int("images", 4, "distinct images (K)")
	sizeMB := flag.Int("size-mb", 200, "size of each image in MiB")
	layers := flag.Int("layers", 4, "layers per image")
	parallel := flag.Int("parallel", 2, "agent max_parallel_pulls, and the parallelism of mode (c)")
	rounds := flag.Int("rounds", 6, "rounds (a multiple of 3 puts every mode in every position equally); each runs every mode once on a fresh containerd")
	flag.StringVar((*string)(&containerdVersion), "containerd", string(lab.Containerd2), "containerd release line to run: 1.6 (Debian's), 1.7 or 2.4")
	flag.BoolVar(&trace, "trace", false, "print every CRI call of every mode (start, end, relative to the mode's start) to stderr")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *images, int64(*sizeMB)<<20, *layers, *parallel, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench-pull:", err)
		os.Exit(1)
	}
}

type mode struct {
	name string
	pull func(ctx context.Context, c *traced, refs []string) error
}

// trace is --trace.
var trace bool

// containerdVersion is --containerd.
var containerdVersion lab.ContainerdVersion

func run(ctx context.Context, k int, size int64, layers, parallel, rounds int) error {
	reg, err := lab.StartRegistry(ctx, lab.RegistryOptions{})
	if err != nil {
		return err
	}
	defer reg.Close()
	var refs []string
	for i := range k {
		repo := fmt.Sprintf("bench/lab%d", i)
		if _, err := lab.PushRandomImage(ctx, reg.Addr, repo, []string{"w_2024_01"}, size, layers, nil); err != nil {
			return err
		}
		refs = append(refs, reg.Addr+"/"+repo+":w_2024_01")
	}

	modes := []mode{
		{name: "(b) direct CRI, serial (kubelet default)", pull: func(ctx context.Context, c *traced, refs []string) error {
			for _, r := range refs {
				if _, err := c.PullImage(ctx, r, nil); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: fmt.Sprintf("(c) direct CRI, %d in parallel", parallel), pull: func(ctx context.Context, c *traced, refs []string) error {
			g, ctx := errgroup.WithContext(ctx)
			g.SetLimit(parallel)
			for _, r := range refs {
				g.Go(func() error { _, err := c.PullImage(ctx, r, nil); return err })
			}
			return g.Wait()
		}},
		{name: fmt.Sprintf("(a) agent, %d pulls, pins+progress", parallel), pull: func(ctx context.Context, c *traced, refs []string) error {
			return agentPull(ctx, c, refs, parallel)
		}},
	}
	modeParallel := []int{1, parallel, parallel} // pull slots of (b), (c), (a)
	times := make([][]time.Duration, len(modes))
	idle := make([][]time.Duration, len(modes)) // time of each round outside PullImage calls
	runtime := ""
	for round := range rounds {
		// Rotate the order so no mode always runs first on a cold page cache.
		for j := range modes {
			i := (j + round) % len(modes)
			d, gaps, v, err := timeOnFreshNode(ctx, modes[i], refs, round+1, modeParallel[i])
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", round+1, modes[i].name, err)
			}
			runtime = v
			times[i] = append(times[i], d)
			idle[i] = append(idle[i], gaps)
		}
		fmt.Fprintf(os.Stderr, "round %d/%d done\n", round+1, rounds)
	}

	med := make([]time.Duration, len(modes))
	for i := range modes {
		med[i] = median(times[i])
	}
	fmt.Printf("\nbench-pull: %d images x %d MiB (%d layers), %d rounds, %s, loopback docker-registry\n\n", k, size>>20, layers, rounds, runtime)
	fmt.Printf("| %-40s | %8s | %8s | %8s | %-16s |\n", "mode", "median", "min", "max", "vs (b) serial")
	fmt.Printf("|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 42), strings.Repeat("-", 10), strings.Repeat("-", 10), strings.Repeat("-", 10), strings.Repeat("-", 18))
	for i, m := range modes {
		fmt.Printf("| %-40s | %7.2fs | %7.2fs | %7.2fs | %-16s |\n", m.name, med[i].Seconds(), slices.Min(times[i]).Seconds(), slices.Max(times[i]).Seconds(), fmt.Sprintf("%.2fx", med[i].Seconds()/med[0].Seconds()))
	}
	ac := med[2].Seconds() / med[1].Seconds()
	// Rounds drift (disk, page cache, the other tenants of the machine): (a) and (c) of one
	// round ran minutes apart at most, so their ratio is the steadier view of the overhead.
	var paired []float64
	for r := range times[2] {
		paired = append(paired, times[2][r].Seconds()/times[1][r].Seconds())
	}
	fmt.Printf("\nper round (a)/(c): %s; median %.3f\n", fmtRatios(paired), median(paired))
	fmt.Printf("time outside PullImage (start, pull slot idle after a pull, end), median per round: (a) %s, (c) %s, (b) %s\n",
		median(idle[2]).Round(time.Millisecond), median(idle[1]).Round(time.Millisecond), median(idle[0]).Round(time.Millisecond))
	fmt.Printf("\n(a)/(c) agent overhead over direct parallel CRI: %.3f (target <= 1.05): %s\n", ac, verdict(ac <= 1.05))
	fmt.Printf("(a)/(b) agent vs kubelet-style serial pulls:    %.3f (target < 1):     %s\n", med[2].Seconds()/med[0].Seconds(), verdict(med[2] < med[0]))
	return nil
}

// timeOnFreshNode starts a new containerd, times m pulling refs onto it, and removes it.
func timeOnFreshNode(ctx context.Context, m mode, refs []string, round int, parallel int) (time.Duration, time.Duration, string, error) {
	cd, err := lab.StartContainerd(ctx, lab.ContainerdOptions{Version: containerdVersion})
	if err != nil {
		return 0, 0, "", err
	}
	defer cd.Close()
	c, err := cri.New(ctx, cd.Endpoint(), cri.Options{})
	if err != nil {
		return 0, 0, "", err
	}
	defer c.Close()
	v, err := c.Version(ctx)
	if err != nil {
		return 0, 0, "", err
	}
	// The previous mode wrote gigabytes; flush them now so their writeback does not slow
	// this mode's pulls.
	syscall.Sync()
	start := time.Now()
	tc := &traced{Client: c, start: start, endpoint: cd.Endpoint()}
	if err := m.pull(ctx, tc, refs); err != nil {
		return 0, 0, "", err
	}
	d := time.Since(start)
	if trace {
		tc.print(fmt.Sprintf("round %d, %s: %.2fs", round, m.name, d.Seconds()))
	}
	for _, r := range refs { // check: every image really landed
		img, err := c.ImageStatus(ctx, r)
		if err != nil || img == nil {
			return 0, 0, "", fmt.Errorf("%s missing after the pull: %v", r, err)
		}
	}
	return d, tc.outsidePulls(d, parallel), v.RuntimeName + " " + v.RuntimeVersion, nil
}

// traced is the CRI client with every call recorded (for --trace and outsidePulls); it is
// the agent's Runtime in mode (a).
type traced struct {
	*cri.Client
	endpoint string // containerd's socket, for the agent's pins and progress
	start    time.Time
	mu       sync.Mutex
	calls    []call
}

type call struct {
	what       string
	start, end time.Duration
}

func (t *traced) record(what string, start time.Time) {
	t.mu.Lock()
	t.calls = append(t.calls, call{what: what, start: start.Sub(t.start), end: time.Since(t.start)})
	t.mu.Unlock()
}

func (t *traced) ListImages(ctx context.Context) ([]cri.Image, error) {
	defer t.record("ListImages", time.Now())
	return t.Client.ListImages(ctx)
}

func (t *traced) ImageStatus(ctx context.Context, ref string) (*cri.Image, error) {
	defer t.record("ImageStatus "+path.Base(ref), time.Now())
	return t.Client.ImageStatus(ctx, ref)
}

func (t *traced) PullImage(ctx context.Context, ref string, auth *cri.Auth) (string, error) {
	defer t.record("PullImage "+path.Base(ref), time.Now())
	return t.Client.PullImage(ctx, ref, auth)
}

func (t *traced) ImageFsInfo(ctx context.Context) ([]cri.FsUsage, error) {
	defer t.record("ImageFsInfo", time.Now())
	return t.Client.ImageFsInfo(ctx)
}

func (t *traced) Version(ctx context.Context) (cri.Version, error) {
	defer t.record("Version", time.Now())
	return t.Client.Version(ctx)
}

// outsidePulls returns how long, of a mode that took total with `slots` pulls at a time,
// a pull slot was waiting for the puller rather than pulling: until the first pull started,
// from each pull's end to the start of the pull that took its slot, and from the last pull's
// end to the end. For direct CRI calls it is near zero; for the agent it is its bookkeeping
// (inventory, digest check, scheduling).
func (t *traced) outsidePulls(total time.Duration, slots int) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var starts, ends []time.Duration
	for _, c := range t.calls {
		if strings.HasPrefix(c.what, "PullImage ") {
			starts, ends = append(starts, c.start), append(ends, c.end)
		}
	}
	if len(starts) == 0 {
		return total
	}
	slices.Sort(starts)
	slices.Sort(ends)
	out := starts[0] + total - ends[len(ends)-1]
	for k := slots; k < len(starts); k++ {
		out += max(0, starts[k]-ends[k-slots])
	}
	return out
}

func (t *traced) print(title string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	slices.SortFunc(t.calls, func(a, b call) int { return int(a.start - b.start) })
	fmt.Fprintln(os.Stderr, title)
	for _, c := range t.calls {
		fmt.Fprintf(os.Stderr, "  %8.3fs %8.3fs  %s\n", c.start.Seconds(), c.end.Seconds(), c.what)
	}
}

// agentPull runs a real agent on c with refs as its desired list, with pinning and pull
// progress on as in production, and returns when it reports all of them cached and pinned.
func agentPull(ctx context.Context, c *traced, refs []string, parallel int) error {
	ctd, err := containerd.New(ctx, c.endpoint, containerd.Options{})
	if err != nil {
		return err
	}
	defer ctd.Close()
	a, err := agent.New(agent.Config{Node: "bench", MaxParallelPulls: parallel, PinImages: true}, c, nil, slog.New(slog.DiscardHandler),
		agent.WithPins(ctd), agent.WithDownloads(ctd))
	if err != nil {
		return err
	}
	d := agent.Desired{Version: 1}
	for _, r := range refs {
		d.Images = append(d.Images, image.Image{Ref: image.MustParseRef(r)})
	}
	a.SetDesired(d)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for {
		st := a.State()
		if len(st.Cached) == len(refs) && st.Pinning.PinnedBytes > 0 && st.Pinning.Status != agent.PinError {
			return nil
		}
		if len(st.Failed) > 0 {
			return errors.New(st.Failed[0].Error)
		}
		select {
		case <-a.Changes():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// median of durations or ratios.
func median[T time.Duration | float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtRatios(xs []float64) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(out, " ")
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}
