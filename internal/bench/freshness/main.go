// Command freshness is the bench-freshness benchmark: how long a pushed image takes to be
// cached on every node and to be in the leader's /available, on the lab (real containerd
// nodes, a real docker-registry, the fake Artifact Registry, the Pub/Sub emulator where
// installed) with the built agent, for
//
//	(a) Artifact Registry's Pub/Sub message (pubsub_subscription; refresh_interval 1h),
//	(b) the registry's push notification (notifications_token_file; refresh_interval 1h),
//	(c) polling alone, at a short refresh_interval (the default, 5m, is too long to wait for
//	    several rounds: the table also gives what the default implies).
//
// Each round pushes a new weekly and measures, against the slowest node's own pull of it in
// the same round (from the agents' "pulled" log lines), the time from the push to the image
// on every node (read from each node's containerd over CRI) and to the image in /available.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

const (
	project   = "rubin-lab"
	garHost   = "us-central1-docker.pkg.dev"
	garRepo   = "rubin-lab/sciplat/sciplat-lab" // its path in the lab registry, under garHost
	garParent = "projects/rubin-lab/locations/us-central1/repositories/sciplat"
	garImage  = "sciplat-lab"
	notifRepo = "bench/notified-lab" // RubinRepoMan told by the registry's notifications
	pollRepo  = "bench/polled-lab"   // RubinRepoMan refreshed by polling only
	// defaultInterval is config's default refresh_interval, for what polling implies.
	defaultInterval = 5 * time.Minute
	// pollEvery is how often the bench looks at the nodes and /available.
	pollEvery = 20 * time.Millisecond
	// target is the event-driven modes' budget over the slowest node's pull.
	target = 2 * time.Second
)

type options struct {
	bin      string
	nodes    int
	rounds   int
	sizeMB   int
	layers   int
	interval time.Duration
	keep     bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/cachemachine", "the built agent binary (make build)")
	flag.IntVar(&o.nodes, "nodes", 3, "nodes (one containerd and one agent each)")
	flag.IntVar(&o.rounds, "rounds", 5, "pushes per mode")
	flag.IntVar(&o.sizeMB, "size-mb", 64, "size of each pushed image in MiB")
	flag.IntVar(&o.layers, "layers", 2, "layers per pushed image")
	flag.DurationVar(&o.interval, "poll-interval", 10*time.Second, "mode (c)'s refresh_interval (10s is the shortest the config accepts)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work dir (configs, agent logs)")
	flag.Parse()
	if o.nodes < 1 || o.rounds < 1 || o.sizeMB < 1 || o.layers < 1 || o.interval < 10*time.Second {
		fmt.Fprintln(os.Stderr, "bench-freshness: want --nodes, --rounds, --size-mb, --layers >= 1 and --poll-interval >= 10s")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-freshness:", err)
		os.Exit(1)
	}
}

// node is one simulated node.
type node struct {
	name       string
	dir        string
	cd         *lab.Containerd
	cri        *cri.Client
	httpPort   int
	gossipPort int
	agent      *lab.Agent // the running agent, nil between phases
}

func (n *node) http() string { return fmt.Sprintf("127.0.0.1:%d", n.httpPort) }

// bench is everything the rounds use.
type bench struct {
	o        options
	dir      string
	reg      *lab.Registry
	fake     *gartest.Server
	ps       *lab.PubSub
	sub      string
	token    string
	nodes    []*node
	keyFile  string
	runtime  string
	weekly   int // the last weekly number pushed
	progress io.Writer
}

func run(ctx context.Context, o options) (err error) {
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("agent binary: %w (make build)", err)
	}
	o.bin = bin
	b := &bench{o: o, progress: os.Stderr}
	if b.dir, err = os.MkdirTemp("", "cmfresh"); err != nil {
		return err
	}
	defer func() {
		if o.keep {
			fmt.Fprintf(os.Stderr, "kept %s\n", b.dir)
			return
		}
		os.RemoveAll(b.dir)
	}()
	defer b.close()
	if err := b.setUp(ctx); err != nil {
		return err
	}

	// (a) and (b) share a cluster whose polling cannot explain anything: refresh_interval 1h.
	if err := b.startAgents(ctx, "events", time.Hour, b.eventSources(), true); err != nil {
		return err
	}
	if err := b.converge(ctx, 2); err != nil {
		return err
	}
	results := map[string][]result{}
	for r := range o.rounds {
		for j := range 2 {
			m := []string{"a", "b"}[(j+r)%2] // alternate which one goes first
			res, err := b.round(ctx, m)
			if err != nil {
				return fmt.Errorf("round %d, mode (%s): %w", r+1, m, err)
			}
			results[m] = append(results[m], res)
			fmt.Fprintf(b.progress, "round %d (%s): %s\n", r+1, m, res)
		}
	}
	if err := b.stopAgents(); err != nil {
		return err
	}

	// (c): the same nodes, polling only.
	if err := b.startAgents(ctx, "polling", o.interval, b.pollSource(), false); err != nil {
		return err
	}
	if err := b.converge(ctx, 1); err != nil {
		return err
	}
	for r := range o.rounds {
		// A push at a random phase of the refresh ticks, as pushes come in real life.
		if err := lab.Sleep(ctx, mrand.N(o.interval)); err != nil {
			return err
		}
		res, err := b.round(ctx, "c")
		if err != nil {
			return fmt.Errorf("round %d, mode (c): %w", r+1, err)
		}
		results["c"] = append(results["c"], res)
		fmt.Fprintf(b.progress, "round %d (c): %s\n", r+1, res)
	}
	if err := b.stopAgents(); err != nil {
		return err
	}
	b.report(results)
	return nil
}

// setUp starts the registry (notifying n2), the fake Artifact Registry, Pub/Sub and the
// containerd nodes, and pushes the first weekly of each repository.
func (b *bench) setUp(ctx context.Context) error {
	for i := range b.o.nodes {
		n := &node{name: fmt.Sprintf("n%d", i+1), dir: filepath.Join(b.dir, fmt.Sprintf("n%d", i+1))}
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			return err
		}
		var err error
		if n.httpPort, err = lab.FreePort(); err != nil {
			return err
		}
		if n.gossipPort, err = lab.FreePort(); err != nil {
			return err
		}
		b.nodes = append(b.nodes, n)
	}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	b.token = hex.EncodeToString(tok)
	// The registry notifies a follower when there is one: it forwards to the leader.
	notified := b.nodes[min(1, len(b.nodes)-1)]
	var err error
	b.reg, err = lab.StartRegistry(ctx, lab.RegistryOptions{Dir: filepath.Join(b.dir, "registry"), Notify: &lab.RegistryNotify{
		URL: "http://" + notified.http() + "/cachemachine/jupyter/notifications", Token: b.token,
	}})
	if err != nil {
		return err
	}
	for _, repo := range []string{garRepo, notifRepo, pollRepo} {
		if _, err := lab.PushRandomImage(ctx, b.reg.Addr, repo, []string{"w_2030_00"}, int64(b.o.sizeMB)<<20, b.o.layers, nil); err != nil {
			return err
		}
	}
	if b.fake, err = gartest.NewServer(); err != nil {
		return err
	}
	if err := b.fake.AddFromRegistry(ctx, b.reg.Addr, garRepo, garParent, garImage); err != nil {
		return err
	}
	psLog, err := os.Create(filepath.Join(b.dir, "pubsub.log"))
	if err != nil {
		return err
	}
	if b.ps, err = lab.StartPubSubOrFake(ctx, project, psLog); err != nil {
		return err
	}
	if b.sub, err = b.ps.CreateSubscription(ctx, "gcr", "cachemachine"); err != nil {
		return err
	}
	b.keyFile = filepath.Join(b.dir, "gossip.key")
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if err := lab.WriteGossipKey(b.keyFile, key); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "notify.token"), []byte(b.token+"\n"), 0o600); err != nil {
		return err
	}
	for _, n := range b.nodes {
		if n.cd, err = lab.StartContainerd(ctx, lab.ContainerdOptions{Dir: filepath.Join(n.dir, "containerd"), Mirrors: map[string]string{garHost: b.reg.Addr}}); err != nil {
			return err
		}
		if n.cri, err = cri.New(ctx, n.cd.Endpoint(), cri.Options{}); err != nil {
			return err
		}
	}
	v, err := b.nodes[0].cri.Version(ctx)
	if err != nil {
		return err
	}
	b.runtime = v.RuntimeName + " " + v.RuntimeVersion
	return nil
}

func (b *bench) close() {
	for _, n := range b.nodes {
		if n.agent != nil {
			_ = n.agent.Stop()
		}
		if n.cri != nil {
			n.cri.Close()
		}
		if n.cd != nil {
			_ = n.cd.Close()
		}
	}
	if b.ps != nil {
		_ = b.ps.Close()
	}
	if b.fake != nil {
		b.fake.Close()
	}
	if b.reg != nil {
		_ = b.reg.Close()
	}
}

// eventSources are (a)'s and (b)'s sources: the Artifact Registry image with the Pub/Sub
// subscription, and the registry repository its notifications are about.
func (b *bench) eventSources() []config.Repoman {
	g := config.DefaultRepoman(config.TypeRubinRepoGar)
	g.ProjectID, g.Location, g.GARRepository, g.GARImage = project, "us-central1", "sciplat", garImage
	g.NumWeeklies = 1
	g.Endpoint, g.InsecureEndpoint = b.fake.Addr(), true
	g.PubSubSubscription = b.sub
	m := config.DefaultRepoman(config.TypeRubinRepoMan)
	m.RegistryURL, m.Repo, m.NumWeeklies = b.reg.Addr, notifRepo, 1
	return []config.Repoman{g, m}
}

// pollSource is (c)'s source: a registry repository nobody notifies about.
func (b *bench) pollSource() []config.Repoman {
	m := config.DefaultRepoman(config.TypeRubinRepoMan)
	m.RegistryURL, m.Repo, m.NumWeeklies = b.reg.Addr, pollRepo, 1
	return []config.Repoman{m}
}

// startAgents starts every node's agent for phase (its own directory: config, state, log).
func (b *bench) startAgents(ctx context.Context, phase string, refresh time.Duration, sources []config.Repoman, notifications bool) error {
	for _, n := range b.nodes {
		dir := filepath.Join(n.dir, phase)
		c := lab.AgentConfig(dir, n.cd.Endpoint())
		c.RefreshInterval = config.Duration{Duration: refresh}
		c.Repomen = sources
		c.Agent.PullTimeout = config.Duration{Duration: 5 * time.Minute}
		c.Agent.BackoffInitial = config.Duration{Duration: time.Second}
		c.Agent.BackoffMax = config.Duration{Duration: 5 * time.Second}
		c.Agent.MinFreeDiskPercent = 0
		var join []string
		for _, o := range b.nodes {
			if o != n {
				join = append(join, fmt.Sprintf("127.0.0.1:%d", o.gossipPort))
			}
		}
		lab.LoopbackCluster(&c, n.gossipPort, n.httpPort, b.keyFile, join)
		if notifications {
			c.HTTP.NotificationsTokenFile = filepath.Join(b.dir, "notify.token")
		}
		a, err := lab.StartAgent(lab.AgentOptions{Binary: b.o.bin, Node: n.name, Dir: dir, Config: c, Env: []string{b.ps.Env()}})
		if err != nil {
			return err
		}
		n.agent = a
	}
	for _, n := range b.nodes {
		if err := n.agent.WaitReady(ctx, time.Minute); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) stopAgents() error {
	var errs []error
	for _, n := range b.nodes {
		if n.agent == nil {
			continue
		}
		if err := n.agent.Stop(); err != nil {
			errs = append(errs, err)
		}
		n.agent = nil
	}
	return errors.Join(errs...)
}

// converge waits until the leader's /available lists want images and every node holds them.
func (b *bench) converge(ctx context.Context, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		imgs, err := b.available(ctx)
		if err == nil && len(imgs) == want {
			if err = b.holdAll(ctx, imgs); err == nil {
				return nil
			}
		}
		for _, n := range b.nodes {
			if err := n.agent.ExitErr(); err != nil {
				return err
			}
		}
		if serr := lab.Sleep(ctx, 200*time.Millisecond); serr != nil {
			return fmt.Errorf("cluster did not converge on %d images: %w (last: %v %v)", want, serr, imgs, err)
		}
	}
}

// holdAll reports the first node whose containerd lacks one of refs.
func (b *bench) holdAll(ctx context.Context, refs []string) error {
	for _, n := range b.nodes {
		tags, err := lab.TagDigests(ctx, n.cri)
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		for _, ref := range refs {
			if _, ok := tags[ref]; !ok {
				return fmt.Errorf("%s does not hold %s", n.name, ref)
			}
		}
	}
	return nil
}

// available returns the image_url of the leader's /available.
func (b *bench) available(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.nodes[0].http()+"/cachemachine/jupyter/available", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /available: %s", resp.Status)
	}
	var v struct {
		Images []struct {
			ImageURL string `json:"image_url"`
		} `json:"images"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	var out []string
	for _, i := range v.Images {
		out = append(out, i.ImageURL)
	}
	return out, nil
}

// result is one round.
type result struct {
	everyNode   time.Duration // push → cached on every node
	available   time.Duration // push → in /available
	slowestPull time.Duration // the slowest node's own pull of the image
	pullStart   time.Duration // push → the last node started pulling
}

func (r result) String() string {
	return fmt.Sprintf("every node %.2fs, /available %.2fs, slowest pull %.2fs (last pull started %.2fs after the push)",
		r.everyNode.Seconds(), r.available.Seconds(), r.slowestPull.Seconds(), r.pullStart.Seconds())
}

// round pushes the next weekly for mode and measures it.
func (b *bench) round(ctx context.Context, mode string) (result, error) {
	b.weekly++
	tag := fmt.Sprintf("w_2030_%02d", b.weekly)
	regRepo := map[string]string{"a": garRepo, "b": notifRepo, "c": pollRepo}[mode]
	base := b.reg.Addr + "/" + regRepo
	if mode == "a" {
		base = garHost + "/" + garRepo // the name the nodes pull, redirected to the registry
	}
	ref := base + ":" + tag
	digest, err := lab.PushRandomImage(ctx, b.reg.Addr, regRepo, []string{tag}, int64(b.o.sizeMB)<<20, b.o.layers, nil)
	if err != nil {
		return result{}, err
	}
	start := time.Now() // the manifest is in the registry (and the registry notifies)
	if mode == "a" {
		// What Artifact Registry does on a push: the API lists it, the topic gets messages.
		b.fake.Add(garParent, garImage, digest, []string{tag}, int64(b.o.sizeMB)<<20)
		if err := b.ps.PublishARPush(ctx, garHost+"/"+project+"/sciplat/"+garImage, digest, tag); err != nil {
			return result{}, err
		}
	}
	limit := 2*b.o.interval + 3*time.Minute
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var res result
	g, gctx := errgroup.WithContext(rctx)
	cached := make([]time.Duration, len(b.nodes))
	for i, n := range b.nodes {
		g.Go(func() error {
			for {
				if img, err := n.cri.ImageStatus(gctx, ref); err == nil && img != nil && slices.Contains(img.Digests, base+"@"+digest) {
					cached[i] = time.Since(start)
					return nil
				}
				if err := lab.Sleep(gctx, pollEvery); err != nil {
					return fmt.Errorf("%s not on %s within %s", ref, n.name, limit)
				}
			}
		})
	}
	g.Go(func() error {
		for {
			if imgs, err := b.available(gctx); err == nil && slices.Contains(imgs, ref) {
				res.available = time.Since(start)
				return nil
			}
			if err := lab.Sleep(gctx, pollEvery); err != nil {
				return fmt.Errorf("%s not in /available within %s", ref, limit)
			}
		}
	})
	if err := g.Wait(); err != nil {
		return result{}, err
	}
	res.everyNode = slices.Max(cached)
	for _, n := range b.nodes {
		p, err := pullOf(ctx, n.agent.LogPath(), ref)
		if err != nil {
			return result{}, fmt.Errorf("%s: %w", n.name, err)
		}
		res.slowestPull = max(res.slowestPull, p.took)
		res.pullStart = max(res.pullStart, p.started.Sub(start))
	}
	return res, nil
}

// pull is one node's pull of an image, from its agent's log.
type pull struct {
	started time.Time     // the "pulling" line
	took    time.Duration // the "pulled" line's seconds
}

// pullOf finds ref's pull in an agent's JSON log, waiting a little for the "pulled" line
// (containerd holds the image a moment before the agent logs it).
func pullOf(ctx context.Context, path, ref string) (pull, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, ok, err := scanPull(path, ref)
		if err != nil || ok {
			return p, err
		}
		if time.Now().After(deadline) {
			return pull{}, fmt.Errorf("no pulled line for %s in %s", ref, path)
		}
		if err := lab.Sleep(ctx, 50*time.Millisecond); err != nil {
			return pull{}, err
		}
	}
}

func scanPull(path, ref string) (pull, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return pull{}, false, err
	}
	defer f.Close()
	var p pull
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Time    time.Time `json:"time"`
			Msg     string    `json:"msg"`
			Image   string    `json:"image"`
			Seconds float64   `json:"seconds"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Image != ref {
			continue
		}
		switch l.Msg {
		case "pulling":
			p.started = l.Time
		case "pulled":
			p.took = time.Duration(l.Seconds * float64(time.Second))
			return p, true, nil
		}
	}
	return pull{}, false, sc.Err()
}

// report prints the table.
func (b *bench) report(results map[string][]result) {
	psKind := b.ps.Kind
	fmt.Printf("\nbench-freshness: %d nodes (%s), %d rounds per mode, %d MiB images (%d layers), loopback docker-registry, fake Artifact Registry API, Pub/Sub: %s\n",
		len(b.nodes), b.runtime, b.o.rounds, b.o.sizeMB, b.o.layers, psKind)
	fmt.Printf("(a), (b): refresh_interval 1h (only the event can explain a fresh image); (c): refresh_interval %s, each push at a random phase of it.\n", b.o.interval)
	fmt.Printf("Times from the push (the manifest PUT returned) to the image on every node (each node's containerd, over CRI) and in the leader's /available; medians over the rounds.\n")
	fmt.Printf("\"pull\" is the slowest node's own pull of the image in the same round (its agent's log); \"over pull\" is the per-round difference, median.\n\n")
	rows := [][]string{{"mode", "every node", "/available", "slowest pull", "node over pull", "avail over pull", "target", "verdict"}}
	names := map[string]string{
		"a": "(a) Pub/Sub message (Artifact Registry)",
		"b": "(b) registry push notification",
		"c": fmt.Sprintf("(c) polling, refresh_interval %s", b.o.interval),
	}
	s2 := func(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
	s0 := func(d time.Duration) string { return fmt.Sprintf("%.0fs", d.Seconds()) }
	for _, m := range []string{"a", "b", "c"} {
		rs := results[m]
		every, avail, pulls, overN, overA := collect(rs)
		tgt, verdict := fmt.Sprintf("<= pull + %s", target), ""
		switch m {
		case "a", "b":
			verdict = pass(median(overN) <= target && median(overA) <= target)
		default:
			tgt, verdict = "(backstop)", "-"
		}
		rows = append(rows, []string{names[m], s2(median(every)), s2(median(avail)), s2(median(pulls)), s2(median(overN)), s2(median(overA)), tgt, verdict})
	}
	// The default implies: the measured (c) times with the mean wait for the next tick,
	// interval/2, replaced by default/2.
	everyC, availC, pullsC, overNC, overAC := collect(results["c"])
	half := b.o.interval / 2
	shift := defaultInterval/2 - half
	rows = append(rows, []string{"(c') polling at the default 5m (expected)", s0(median(everyC) + shift), s0(median(availC) + shift), s2(median(pullsC)),
		s0(median(overNC) + shift), s0(median(overAC) + shift), "(model, see below)", "-"})
	lab.PrintTable(os.Stdout, rows)
	fmt.Println()
	for _, m := range []string{"a", "b", "c"} {
		every, _, pulls, overN, _ := collect(results[m])
		fmt.Printf("%s per round: every node %s; slowest pull %s; over pull %s (min %.2fs, max %.2fs)\n",
			names[m][:3], fmtDur(every), fmtDur(pulls), fmtDur(overN), slices.Min(overN).Seconds(), slices.Max(overN).Seconds())
	}
	fmt.Printf("\n(c) was measured at refresh_interval %s (the shortest the config accepts), not at the default %s: a push lands at a\n", b.o.interval, defaultInterval)
	fmt.Printf("uniformly random point of the refresh period, so polling waits interval/2 on average (%s here; measured over pull: %.2fs,\n", half, median(overAC).Seconds())
	fmt.Printf("listing, publishing and gossip included) and one interval at most. Row (c') is that model at the default: the measured (c)\n")
	fmt.Printf("times with interval/2 replaced by %s/2 = %s, i.e. expected delay ≈ %s + pull + the same listing and gossip, and up to %s + pull.\n",
		defaultInterval, defaultInterval/2, defaultInterval/2, defaultInterval)
	for _, m := range []string{"a", "b"} {
		_, _, _, overN, overA := collect(results[m])
		fmt.Printf("%s: every node within slowest pull + %.2fs, /available within + %.2fs (target <= + %s): %s\n", names[m], median(overN).Seconds(), median(overA).Seconds(), target, pass(median(overN) <= target && median(overA) <= target))
	}
}

func collect(rs []result) (every, avail, pulls, overN, overA []time.Duration) {
	for _, r := range rs {
		every = append(every, r.everyNode)
		avail = append(avail, r.available)
		pulls = append(pulls, r.slowestPull)
		overN = append(overN, r.everyNode-r.slowestPull)
		overA = append(overA, r.available-r.slowestPull)
	}
	return every, avail, pulls, overN, overA
}

func median(xs []time.Duration) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtDur(xs []time.Duration) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = fmt.Sprintf("%.2f", x.Seconds())
	}
	return strings.Join(out, " ")
}

func pass(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}
