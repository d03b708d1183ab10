package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/status"
)

const (
	// memLimitBytes is the DaemonSet's memory limit (128Mi), which it also passes to the
	// agent as GOMEMLIMIT.
	memLimitBytes = 128 << 20
	mib           = 1 << 20
	// pollEvery is the period of every wait for an observable condition.
	pollEvery = 200 * time.Millisecond
)

// env is what every scenario shares: the built binary, a work directory, one real
// docker-registry (each scenario pushes to repositories of its own and injects faults in
// front of it, never in it) and the gossip key.
type env struct {
	bin     string
	dir     string
	reg     *lab.Registry
	keyFile string

	mu      sync.Mutex // guards runtime
	runtime string     // "containerd 1.6.20…", from the first node's CRI Version

	bigOnce   sync.Once // pushes big once: the mid-pull crash scenarios share it
	big       pushed
	bigErr    error
	bigSizeMB int
}

// pushed is an image in the shared registry.
type pushed struct {
	ref, digest string
}

// push pushes a random image of sizeMB MiB to repo:tag in the shared registry.
func (e *env) push(ctx context.Context, repo, tag string, sizeMB, layers int) (pushed, error) {
	d, err := lab.PushRandomImage(ctx, e.reg.Addr, repo, []string{tag}, int64(sizeMB)*mib, layers, nil)
	return pushed{ref: e.reg.Addr + "/" + repo + ":" + tag, digest: d}, err
}

// bigImage is the image the mid-pull crash scenarios pull: large enough that a pull lasts
// seconds on loopback.
func (e *env) bigImage(ctx context.Context) (pushed, error) {
	e.bigOnce.Do(func() { e.big, e.bigErr = e.push(ctx, "faults/big", "r28_0_0", e.bigSizeMB, 4) })
	return e.big, e.bigErr
}

// node is one simulated node: a real containerd of its own, a CRI client as the scenario's
// own eyes, and (once started) the agent process.
type node struct {
	name  string
	dir   string // the agent's directory: config, log, state, debug socket
	cd    *lab.Containerd
	cri   *cri.Client
	agent *lab.Agent
}

// newNode starts a containerd (in cdDir, or a temp dir of its own when "") for a node named
// name; the caller closes the node.
func (e *env) newNode(ctx context.Context, name, cdDir string) (*node, error) {
	n := &node{name: name, dir: filepath.Join(e.dir, name)}
	cd, err := lab.StartContainerd(ctx, lab.ContainerdOptions{Dir: cdDir})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	n.cd = cd
	if n.cri, err = cri.New(ctx, cd.Endpoint(), cri.Options{}); err != nil {
		n.close()
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.runtime == "" {
		if v, err := n.cri.Version(ctx); err == nil {
			e.runtime = v.RuntimeName + " " + v.RuntimeVersion
		}
	}
	return n, nil
}

// close stops the agent, then containerd; errors are reported on stderr, as the scenario's
// result is already known.
func (n *node) close() {
	if n.agent != nil {
		if err := n.agent.Stop(); err != nil {
			progress("%s: %v", n.name, err)
		}
	}
	if n.cri != nil {
		n.cri.Close()
	}
	if err := n.cd.Close(); err != nil {
		progress("%s: %v", n.name, err)
	}
}

// newNodes starts count nodes named prefix1…; on error the ones started are closed.
func (e *env) newNodes(ctx context.Context, prefix string, count int) ([]*node, error) {
	var nodes []*node
	for i := range count {
		n, err := e.newNode(ctx, fmt.Sprintf("%s%d", prefix, i+1), "")
		if err != nil {
			closeAll(nodes)
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

func closeAll(nodes []*node) {
	for _, n := range nodes {
		n.close()
	}
}

// config is a standalone agent's configuration on n: production defaults but for short
// retries (1 s doubling to 4 s), a 2 s resync, a 60 s pull timeout, no disk guard, the
// status API on a free loopback port (lab.StartAgent picks it), and source (none when nil).
func (e *env) config(n *node, source *config.Repoman) config.Config {
	c := lab.AgentConfig(n.dir, n.cd.Endpoint())
	c.Agent.BackoffInitial = config.Duration{Duration: time.Second}
	c.Agent.BackoffMax = config.Duration{Duration: 4 * time.Second}
	c.Agent.ResyncInterval = config.Duration{Duration: 2 * time.Second}
	c.Agent.PullTimeout = config.Duration{Duration: time.Minute}
	c.Agent.MinFreeDiskPercent = 0
	if source != nil {
		c.Repomen = []config.Repoman{*source}
		if source.Type == config.TypeRubinRepoMan {
			c.RefreshInterval = config.Duration{Duration: 10 * time.Second} // the least allowed
		}
	}
	return c
}

// simple is a SimpleRepoMan of imgs, with their digests.
func simple(imgs ...pushed) *config.Repoman {
	r := config.DefaultRepoman(config.TypeSimpleRepoMan)
	for i, img := range imgs {
		r.Images = append(r.Images, config.Image{ImageURL: img.ref, Name: fmt.Sprintf("image %d", i), ImageHash: img.digest})
	}
	return &r
}

// rubin is a RubinRepoMan of repo in the registry at addr, caching the two newest weeklies.
func rubin(addr, repo string) *config.Repoman {
	r := config.DefaultRepoman(config.TypeRubinRepoMan)
	r.RegistryURL, r.Repo, r.NumWeeklies = addr, repo, 2
	return &r
}

// cluster turns gossip on in c: keyed, on a free loopback port, joining join.
func (e *env) cluster(c *config.Config, join ...string) error {
	port, err := lab.FreePort()
	if err != nil {
		return err
	}
	lab.LoopbackCluster(c, port, 0, e.keyFile, join) // HTTP port 0: lab.StartAgent picks one
	return nil
}

// start runs the agent on n with cfg, GOMEMLIMIT set as the DaemonSet sets it, and waits
// until it is ready.
func (e *env) start(ctx context.Context, n *node, cfg config.Config, args ...string) error {
	a, err := lab.StartAgent(lab.AgentOptions{
		Binary: e.bin, Node: n.name, Dir: n.dir, Config: cfg, Args: args,
		Env: []string{"GOMEMLIMIT=" + strconv.Itoa(memLimitBytes)},
	})
	if err != nil {
		return err
	}
	n.agent = a
	return a.WaitReady(ctx, 90*time.Second)
}

// httpClient is the scenarios' client of the status API: a fresh connection per request,
// as the kubelet's probes make.
var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// get returns the body of the 200 answer to GET path on addr, made with client.
func get(ctx context.Context, client *http.Client, addr, path string) ([]byte, error) {
	return lab.GetBody(ctx, client, "http://"+addr+path)
}

// getJSON decodes the 200 answer of GET path on addr into v.
func getJSON(ctx context.Context, addr, path string, v any) error {
	body, err := get(ctx, httpClient, addr, path)
	if err != nil {
		return err
	}
	return json.Unmarshal(body, v)
}

func (n *node) dump(ctx context.Context) (status.Dump, error) {
	var d status.Dump
	return d, getJSON(ctx, n.agent.HTTPAddr(), "/cachemachine/jupyter", &d)
}

func (n *node) nodes(ctx context.Context) (status.Nodes, error) {
	var v status.Nodes
	return v, getJSON(ctx, n.agent.HTTPAddr(), "/cachemachine/jupyter/nodes", &v)
}

// view is this node's entry of its /nodes document.
func (n *node) view(ctx context.Context) (status.NodeView, error) {
	v, err := n.nodes(ctx)
	if err != nil {
		return status.NodeView{}, err
	}
	for _, nv := range v.Nodes {
		if nv.Name == n.name {
			return nv, nil
		}
	}
	return status.NodeView{}, fmt.Errorf("%s is not in its own /nodes", n.name)
}

// available reports whether img is in the node's /available with its digest.
func (n *node) available(ctx context.Context, img pushed) bool {
	var l status.ImageList
	if getJSON(ctx, n.agent.HTTPAddr(), "/cachemachine/jupyter/available", &l) != nil {
		return false
	}
	return slices.ContainsFunc(l.Images, func(i status.Image) bool { return i.ImageURL == img.ref && i.ImageHash == img.digest })
}

// holds reports whether containerd on n has img's tag with img's digest (the CRI's view).
func (n *node) holds(ctx context.Context, img pushed) bool {
	tags, err := lab.TagDigests(ctx, n.cri)
	return err == nil && tags[img.ref] == img.digest
}

// cachedAndShown reports whether img is on the node and the status API shows it available.
func (n *node) cachedAndShown(ctx context.Context, img pushed) bool {
	return n.holds(ctx, img) && n.available(ctx, img)
}

// debug runs a debug-socket command and returns its answer (an error carries the agent's
// message).
func (n *node) debug(ctx context.Context, args ...string) (string, error) {
	var out strings.Builder
	err := agent.RunDebug(ctx, n.agent.Config().Agent.DebugSocket, args, false, &out)
	return out.String(), err
}

// goroutines is the agent's go_goroutines.
func (n *node) goroutines(ctx context.Context) (int, error) {
	m, err := n.agent.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := m["go_goroutines"]
	if !ok {
		return 0, errors.New("no go_goroutines in /metrics")
	}
	return int(v), nil
}

// waitPasses waits until the agent has completed count more reconcile passes with the
// runtime answering (cachemachine_passes_total{result="ok"}; 2 s resync each), before a
// check that something did not change.
func (n *node) waitPasses(ctx context.Context, count int) error {
	const series = `cachemachine_passes_total{result="ok"}`
	passes := func() (float64, error) {
		m, err := n.agent.Metrics(ctx)
		if err != nil {
			return 0, err
		}
		v, ok := m[series]
		if !ok {
			return 0, errors.New("no " + series + " in /metrics")
		}
		return v, nil
	}
	start, err := passes()
	if err != nil {
		return err
	}
	return waitFor(ctx, time.Duration(count*2+10)*time.Second, fmt.Sprintf("%d more agent passes", count), func() bool {
		v, err := passes()
		return err == nil && v >= start+float64(count)
	})
}

// goroutinesSettle waits up to within for the agent's goroutines to come back to at most
// before+slack, and returns the last count.
func (n *node) goroutinesSettle(ctx context.Context, before, slack int, within time.Duration) int {
	last := -1
	_ = waitFor(ctx, within, "goroutines to settle", func() bool {
		if g, err := n.goroutines(ctx); err == nil {
			last = g
		}
		return last >= 0 && last <= before+slack
	})
	return last
}

// waitFor polls cond every pollEvery until it holds, within passes or ctx ends.
func waitFor(ctx context.Context, within time.Duration, what string, cond func() bool) error {
	return coordinatortest.Poll(ctx, within, pollEvery, func() (bool, string) { return cond(), "no " + what })
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func mibs(kib int64) string { return fmt.Sprintf("%.0f MiB", float64(kib)/1024) }

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
