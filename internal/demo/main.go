// Command demo runs a three-node cachemachine cluster on this machine and shows the
// sciplat-lab images arriving on every node: a real docker-registry seeded with
// sciplat-lab-like images, a fake Artifact Registry API listing them, one real containerd per
// simulated node (pulling the GAR names from the local registry through a hosts.toml
// redirect), and the built cachemachine binary as the agent on each node, gossiping over
// loopback. `make demo` runs it (as root: containerd mounts overlayfs).
//
// Once every desired image is cached everywhere it pushes a new weekly, publishes Artifact
// Registry's Pub/Sub messages for it (the Pub/Sub emulator where installed, an in-process
// fake otherwise), and shows the leader's push event, the listing and the pulls that follow.
//
// It runs until Ctrl-C, or with --until-cached until common_cache holds every desired image,
// the pushed weekly included; then it stops everything it started and removes its temp dir.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// numNodes is the size of the simulated node pool.
const numNodes = 3

// refreshEvery is the polling and redraw period of the progress display.
const refreshEvery = 250 * time.Millisecond

// preferredHTTPPort is n1's status API port when it is free, so the printed URL is familiar.
const preferredHTTPPort = 8080

// errInterrupted is run's error when SIGINT or SIGTERM ended it before its goal; it is
// returned as is (compared with ==) unless a cleanup failed too.
var errInterrupted = errors.New("interrupted")

type options struct {
	binary      string
	imageMB     int
	untilCached bool
	timeout     time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.binary, "binary", "bin/cachemachine", "the cachemachine binary (built with go build when missing)")
	flag.IntVar(&o.imageMB, "image-mb", 40, "average size of each seeded image in MiB (2 or 3 layers)")
	flag.BoolVar(&o.untilCached, "until-cached", false, "exit 0 once common_cache holds every desired image (1 after --timeout)")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "with --until-cached: how long to wait for common_cache once the agents run")
	flag.Parse()
	if flag.NArg() > 0 || o.imageMB < 1 || o.timeout <= 0 {
		fmt.Fprintln(os.Stderr, "usage: demo [--until-cached] [--timeout 5m] [--image-mb 40] [--binary bin/cachemachine]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	out := &console{w: os.Stdout, start: time.Now()}
	err := run(ctx, o, out)
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case err == nil || err == errInterrupted && !o.untilCached: // Ctrl-C is how an interactive demo ends
		if interrupted {
			out.say("stopped everything the demo started")
		}
	case err == errInterrupted:
		fmt.Fprintln(os.Stderr, "demo: interrupted before every image was cached")
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// run starts everything, shows the progress, and stops everything it started, on any error
// too: each component is added to cl right after it started.
func run(ctx context.Context, o options, out *console) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: containerd mounts overlayfs (run `make demo` as root)")
	}
	var cl cleanups
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = errInterrupted // whatever failed, failed because of the signal
		}
		if cerr := cl.run(out); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	bin, err := ensureBinary(ctx, o.binary, out)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "cmdemo")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	cl.add("removed "+dir, func() error { return os.RemoveAll(dir) })
	out.say("work dir %s (configs, logs, state; removed at exit)", dir)

	regAddr, err := startRegistry(ctx, o, out, dir, &cl)
	if err != nil {
		return err
	}
	fake, err := startFakeGAR(ctx, out, regAddr, &cl)
	if err != nil {
		return err
	}
	ps, sub, err := startPubSub(ctx, out, dir, &cl)
	if err != nil {
		return err
	}
	plans, err := startNodes(ctx, out, dir, regAddr, &cl)
	if err != nil {
		return err
	}
	agents, err := startAgents(ctx, out, bin, dir, fake.Addr(), ps, sub, plans, &cl)
	if err != nil {
		return err
	}
	return show(ctx, o, out, bin, plans, agents, &pusher{regAddr: regAddr, fake: fake, ps: ps, size: int64(o.imageMB) << 20})
}

// startPubSub starts the Pub/Sub emulator (the in-process fake where it is not installed)
// with the topic gcr and the agents' subscription to it; the agents reach it through
// PUBSUB_EMULATOR_HOST (ps.Env).
func startPubSub(ctx context.Context, out *console, dir string, cl *cleanups) (*lab.PubSub, string, error) {
	log, err := os.Create(filepath.Join(dir, "pubsub.log"))
	if err != nil {
		return nil, "", err
	}
	ps, err := lab.StartPubSubOrFake(ctx, "rubin-demo", log)
	if err != nil {
		log.Close()
		return nil, "", err
	}
	cl.add("stopped Pub/Sub", func() error { err := ps.Close(); log.Close(); return err })
	sub, err := ps.CreateSubscription(ctx, "gcr", "cachemachine")
	if err != nil {
		return nil, "", err
	}
	out.say("Pub/Sub on %s: %s; the agents receive %s", ps.Addr, ps.Kind, sub)
	return ps, sub, nil
}

// ensureBinary returns the absolute path of the agent binary, building it when missing.
func ensureBinary(ctx context.Context, path string, out *console) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("binary: %w", err)
	}
	if _, err := os.Stat(abs); err == nil {
		out.say("agent binary %s", path)
		return abs, nil
	}
	out.say("building %s (go build ./cmd/cachemachine)", path)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", abs, "./cmd/cachemachine")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build %s: %w", path, err)
	}
	return abs, nil
}

// startRegistry starts docker-registry and seeds it with the catalog.
func startRegistry(ctx context.Context, o options, out *console, dir string, cl *cleanups) (string, error) {
	reg, err := lab.StartRegistry(ctx, lab.RegistryOptions{Dir: filepath.Join(dir, "registry")})
	if err != nil {
		return "", err
	}
	cl.add("stopped registry", reg.Close)
	out.say("registry on %s (docker-registry)", reg.Addr)
	start := time.Now()
	tags, err := seed(ctx, reg.Addr, int64(o.imageMB)<<20)
	if err != nil {
		return "", err
	}
	out.say("seeded %d tags (%d images of ~%d MiB) as %s in %.1fs", tags, len(catalog), o.imageMB, registryRepo, time.Since(start).Seconds())
	return reg.Addr, nil
}

// startFakeGAR serves the Artifact Registry API, listing what the registry holds.
func startFakeGAR(ctx context.Context, out *console, regAddr string, cl *cleanups) (*gartest.Server, error) {
	fake, err := gartest.NewServer()
	if err != nil {
		return nil, fmt.Errorf("fake artifact registry: %w", err)
	}
	cl.add("stopped fake Artifact Registry", func() error { fake.Close(); return nil })
	if err := fake.AddFromRegistry(ctx, regAddr, registryRepo, garParent, garImage); err != nil {
		return nil, err
	}
	out.say("fake Artifact Registry on %s lists %s/%s", fake.Addr(), garHost, registryRepo)
	return fake, nil
}

// startNodes starts one containerd per node, redirecting the GAR host to the registry.
func startNodes(ctx context.Context, out *console, dir, regAddr string, cl *cleanups) ([]nodePlan, error) {
	out.say("starting %d containerd, each pulling %s/… from %s (hosts.toml redirect)", numNodes, garHost, regAddr)
	var plans []nodePlan
	for i := range numNodes {
		p := nodePlan{name: fmt.Sprintf("n%d", i+1), dir: filepath.Join(dir, fmt.Sprintf("n%d", i+1))}
		cd, err := lab.StartContainerd(ctx, lab.ContainerdOptions{
			Version: lab.Containerd2, // what GKE 1.33+ nodes run; make deps builds it
			Dir:     filepath.Join(p.dir, "containerd"),
			Mirrors: map[string]string{garHost: regAddr},
		})
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", p.name, err)
		}
		cl.add("stopped containerd "+p.name, cd.Close)
		p.criSocket = cd.Endpoint()
		out.say("containerd %s (%s) ready (socket %s)", p.name, cd.Version(), cd.Socket)
		plans = append(plans, p)
	}
	return plans, nil
}

// startAgents gives every node its ports, starts the agents and waits until each one joined
// the cluster.
func startAgents(ctx context.Context, out *console, bin, dir, garAddr string, ps *lab.PubSub, sub string, plans []nodePlan, cl *cleanups) ([]*lab.Agent, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key) // never fails since Go 1.24
	keyFile := filepath.Join(dir, "gossip.key")
	if err := lab.WriteGossipKey(keyFile, key); err != nil {
		return nil, err
	}
	for i := range plans {
		var err error
		if i == 0 && lab.PortFree(preferredHTTPPort) {
			plans[i].httpPort = preferredHTTPPort
		} else if plans[i].httpPort, err = lab.FreePort(); err != nil {
			return nil, err
		}
		if plans[i].gossipPort, err = lab.FreePort(); err != nil {
			return nil, err
		}
	}
	var agents []*lab.Agent
	for _, p := range plans {
		a, err := lab.StartAgent(lab.AgentOptions{Binary: bin, Node: p.name, Dir: p.dir, Config: agentConfig(p, plans, garAddr, sub, keyFile), Env: []string{ps.Env()}})
		if err != nil {
			return nil, err
		}
		cl.add("stopped agent "+p.name, a.Stop)
		agents = append(agents, a)
		out.say("agent %s started: http://%s, log %s", p.name, p.httpAddr(), a.LogPath())
	}
	for _, a := range agents {
		if err := a.WaitReady(ctx, agentReadyTimeout); err != nil {
			return nil, err
		}
	}
	out.say("cluster formed: %d agents joined over encrypted gossip on 127.0.0.1", len(agents))
	return agents, nil
}

// cleanups undoes the demo's steps in reverse order.
type cleanups []cleanup

type cleanup struct {
	done string // printed once fn succeeded
	fn   func() error
}

func (c *cleanups) add(done string, fn func() error) { *c = append(*c, cleanup{done, fn}) }

// run calls every function, newest first, even after a failure, and joins the errors.
func (c cleanups) run(out *console) error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		if err := c[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("cleanup (%s): %w", c[i].done, err))
			continue
		}
		out.say("%s", c[i].done)
	}
	return errors.Join(errs...)
}
