// Command faults is `make faults`: fault injection on the lab (real containerd, a real
// docker-registry, the built agent binary with GOMEMLIMIT set as the DaemonSet sets it).
// Each scenario injects one fault (a registry refusing, failing or hanging on the pull or
// the listing path; containerd or the agent SIGKILLed mid-pull; a disk floor; a wrong gossip
// key; garbage and oversized gossip streams; idle, slow, huge and many HTTP clients; a
// password rotation; a bad setting; a soak with a changing desired list) and checks what an
// operator would check: no stall, no false "cached", memory under the pod limit, recovery.
// It prints one markdown table, every result computed from what was observed, and exits 1
// when a row failed.
//
// Scenarios that share no component run in parallel (--parallel). Every process it starts
// is its child and is stopped; its temp dir is removed.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// group is a set of rows that run on the same components, one after the other; groups run
// in parallel. run starts each row's check before working on it; an error it returns fails
// every row it had not started.
type group struct {
	rows []*check
	run  func(ctx context.Context, e *env) error
}

type options struct {
	bin      string
	parallel int
	only     string
	soak     time.Duration
	deadline time.Duration
	bigMB    int
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/cachemachine", "the built agent binary (make build)")
	flag.IntVar(&o.parallel, "parallel", 4, "scenario groups run at once")
	flag.StringVar(&o.only, "only", "", "run only the scenarios whose name matches this regular expression")
	flag.DurationVar(&o.soak, "soak", 3*time.Minute, "how long the soak changes the desired list (every 20 s)")
	flag.DurationVar(&o.deadline, "deadline", 9*time.Minute, "every scenario must end within this time of the start")
	flag.IntVar(&o.bigMB, "big-mb", 400, "size of the image the mid-pull crash scenarios pull, MiB")
	flag.Parse()
	only, err := regexp.Compile(o.only)
	if err != nil || o.parallel < 1 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: faults [--bin bin/cachemachine] [--parallel 4] [--only REGEXP] [--soak 3m] [--deadline 9m] [--big-mb 400]")
		os.Exit(2)
	}
	if _, err := os.Stat(o.bin); err != nil {
		fmt.Fprintf(os.Stderr, "faults: %v (run make build, or pass --bin)\n", err)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "faults: needs root: containerd mounts overlayfs, the disk floor mounts a tmpfs")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	failed, err := run(ctx, o, only)
	stop()
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	case failed > 0:
		fmt.Fprintf(os.Stderr, "faults: %d scenarios failed\n", failed)
		os.Exit(1)
	}
}

// run sets up what scenarios share, runs the groups and prints the table; it returns how
// many rows failed.
func run(ctx context.Context, o options, only *regexp.Regexp) (int, error) {
	began := time.Now()
	if _, err := lab.RaiseNoFile(); err != nil { // thousands of client connections; agents inherit it
		progress("raising the open-file limit: %v", err)
	}
	bin, err := filepath.Abs(o.bin)
	if err != nil {
		return 0, err
	}
	e := &env{bin: bin, bigSizeMB: o.bigMB}
	if e.dir, err = os.MkdirTemp("", "cmf"); err != nil {
		return 0, err
	}
	defer os.RemoveAll(e.dir)
	if e.reg, err = lab.StartRegistry(ctx, lab.RegistryOptions{}); err != nil {
		return 0, err
	}
	defer e.reg.Close()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	e.keyFile = filepath.Join(e.dir, "gossip.key")
	if err := lab.WriteGossipKey(e.keyFile, key); err != nil {
		return 0, err
	}

	var groups []group
	for _, g := range scenarios(o) {
		if slices.ContainsFunc(g.rows, func(c *check) bool { return only.MatchString(c.scenario) }) {
			groups = append(groups, g) // a group runs whole: its rows share its components
		}
	}
	ctx, cancel := context.WithTimeout(ctx, o.deadline)
	defer cancel()
	sem := make(chan struct{}, o.parallel)
	var wg sync.WaitGroup
	for _, g := range groups {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				failUnstarted(g, ctx.Err())
				return
			}
			defer func() { <-sem }()
			progress("start: %s", g.rows[0].scenario)
			if err := g.run(ctx, e); err != nil {
				failUnstarted(g, err)
			}
			for _, c := range g.rows {
				progress("%s: %s", c.result(), c.scenario)
			}
		})
	}
	wg.Wait()

	var rows []*check
	failed := 0
	for _, g := range groups {
		for _, c := range g.rows {
			rows = append(rows, c)
			if c.result() != "PASS" {
				failed++
			}
		}
	}
	e.mu.Lock()
	runtime := e.runtime
	e.mu.Unlock()
	if runtime == "" { // no scenario started a node
		runtime = containerdVersion(ctx)
	}
	header := fmt.Sprintf("faults: machine: %s; %s; docker-registry on loopback; agents with GOMEMLIMIT=%d (the DaemonSet's 128Mi limit); %d scenario groups, %d at once",
		lab.Machine(), runtime, memLimitBytes, len(groups), o.parallel)
	printTable(os.Stdout, header, rows, time.Since(began))
	return failed, nil
}

// failUnstarted fails the rows of g that did not start, with err.
func failUnstarted(g group, err error) {
	for _, c := range g.rows {
		c.mu.Lock()
		ran := c.ran
		c.mu.Unlock()
		if !ran {
			c.fail(fmt.Errorf("not run: %w", err))
		}
	}
}

// scenarios lists every group, the longest first.
func scenarios(o options) []group {
	return []group{
		soak(o.soak),
		httpHostile(),
		gossipHostile(),
		registryFault(faultRefuse),
		registryFault(faultFail),
		registryFault(faultHang),
		containerdKilled(),
		agentKilled(),
		rotation(),
		diskFloor(),
		badSettings(),
	}
}

// containerdVersion is `containerd --version`, for the header when no node ran.
func containerdVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "containerd", "--version").Output()
	if err != nil {
		return "containerd (version unknown)"
	}
	f := strings.Fields(string(out)) // containerd github.com/containerd/containerd 1.6.20~ds1 …
	if len(f) >= 3 {
		return "containerd " + f[2]
	}
	return strings.TrimSpace(string(out))
}
