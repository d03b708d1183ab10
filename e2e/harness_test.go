// Package e2e runs the built cachemachine binary against real containerd and a real
// docker-registry (internal/lab) and checks the outcome with direct CRI calls.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// binary is the cachemachine binary built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cm-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "cachemachine")
	build := exec.Command("go", "build", "-o", binary, "../cmd/cachemachine")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build cachemachine:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// agentProc is one running `cachemachine agent` process and its debug socket.
type agentProc struct {
	*lab.Agent
	socket string
}

// standalone is the configuration of a standalone agent in dir on the runtime at cri that
// caches images (a SimpleRepoMan, "image i" as names, digests[i] as image_hash when given),
// with the tests' fast timings and no disk guard.
func standalone(dir, cri string, images []string, digests ...string) config.Config {
	c := lab.AgentConfig(dir, cri)
	fastRetries(&c)
	c.Agent.PullTimeout = config.Duration{Duration: 60 * time.Second}
	c.Agent.ResyncInterval = config.Duration{Duration: time.Second}
	simple := config.DefaultRepoman(config.TypeSimpleRepoMan)
	for i, img := range images {
		entry := config.Image{ImageURL: img, Name: fmt.Sprintf("image %d", i)}
		if i < len(digests) {
			entry.ImageHash = digests[i]
		}
		simple.Images = append(simple.Images, entry)
	}
	c.Repomen = []config.Repoman{simple}
	return c
}

// fastRetries sets the tests' short backoff (500 ms, doubling up to 2 s) and turns the disk
// guard off.
func fastRetries(c *config.Config) {
	c.Agent.BackoffInitial = config.Duration{Duration: 500 * time.Millisecond}
	c.Agent.BackoffMax = config.Duration{Duration: 2 * time.Second}
	c.Agent.MinFreeDiskPercent = 0
}

// rubinRepoMan is a RubinRepoMan source on repo in the registry at addr, caching the two
// newest weeklies.
func rubinRepoMan(addr, repo string) config.Repoman {
	rm := config.DefaultRepoman(config.TypeRubinRepoMan)
	rm.RegistryURL, rm.Repo, rm.NumWeeklies = addr, repo, 2
	return rm
}

// startAgent runs the binary as node-a with cfg (written into dir) and stops it (SIGTERM)
// when the test ends.
func startAgent(t *testing.T, dir string, cfg config.Config, args ...string) *agentProc {
	t.Helper()
	return startAgentNamed(t, "node-a", dir, cfg, args...)
}

// startAgentNamed is startAgent with a node name of its own.
func startAgentNamed(t *testing.T, name, dir string, cfg config.Config, args ...string) *agentProc {
	t.Helper()
	a := lab.NewAgent(t, lab.AgentOptions{Binary: binary, Node: name, Dir: dir, Config: cfg, Args: args})
	return &agentProc{Agent: a, socket: cfg.Agent.DebugSocket}
}

// startHeld starts a standalone agent on n that caches ref with a disk guard keeping minFree
// percent free, and waits until it holds one pull; it returns the agent and its pulls then.
func startHeld(t *testing.T, n node, ref string, minFree float64) (*agentProc, pullsView) {
	t.Helper()
	cfg := standalone(n.dir, n.cd.Endpoint(), []string{ref})
	cfg.Agent.MinFreeDiskPercent = minFree
	p := startAgent(t, n.dir, cfg)
	eventually(t, 30*time.Second, "the pull to be held", func() bool {
		v, ok := p.pulls(t)
		return ok && len(v.Held) == 1
	})
	v, _ := p.pulls(t)
	return p, v
}

// stop sends SIGTERM and fails the test when the agent needs SIGKILL.
func (p *agentProc) stop(t *testing.T) {
	if err := p.Stop(); err != nil {
		t.Errorf("%v", err)
	}
}

// debug runs `cachemachine debug` against the agent's socket.
func (p *agentProc) debug(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, append([]string{"debug", "--socket", p.socket}, args...)...).CombinedOutput()
	return string(out), err
}

// pulls returns the agent's GET /v1/pulls, or ok=false while the socket is not up yet.
func (p *agentProc) pulls(t *testing.T) (v pullsView, ok bool) {
	out, err := p.debug(t, "-o", "json", "pulls")
	if err != nil {
		return v, false
	}
	require.NoError(t, json.Unmarshal([]byte(out), &v), out)
	return v, true
}

type pullsView struct {
	Pulling []struct {
		Ref string `json:"image_url"`
	} `json:"pulling"`
	Queued []string `json:"queued"`
	Held   []struct {
		Ref    string `json:"image_url"`
		Reason string `json:"reason"`
	} `json:"held"`
	Failed []struct {
		Ref       string    `json:"image_url"`
		Error     string    `json:"error"`
		Attempts  int       `json:"attempts"`
		NextRetry time.Time `json:"next_retry"`
	} `json:"failed"`
	Cached []string `json:"cached"`
}

// eventually polls cond every 100 ms until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitPasses waits until the agent has completed n more reconcile passes with the runtime
// answering (cachemachine_passes_total{result="ok"}): what a test waits for before it asserts
// that the agent did nothing.
func (p *agentProc) waitPasses(t *testing.T, n int) {
	t.Helper()
	const series = `cachemachine_passes_total{result="ok"}`
	passes := func() float64 {
		m, err := p.Metrics(t.Context())
		require.NoError(t, err)
		v, ok := m[series]
		require.True(t, ok, "%s in the agent's metrics", series)
		return v
	}
	start := passes()
	eventually(t, time.Duration(n+10)*time.Second, fmt.Sprintf("%d more passes", n), func() bool { return passes() >= start+float64(n) })
}

// criClient connects to the node's containerd directly: the test's own eyes, independent of
// the agent.
func criClient(t *testing.T, cd *lab.Containerd) *cri.Client {
	t.Helper()
	c, err := cri.New(t.Context(), cd.Endpoint(), cri.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// tagDigest returns the manifest digest containerd records for ref, or "" when the tag is
// not on the node.
func tagDigest(t *testing.T, c *cri.Client, ref string) string {
	t.Helper()
	tags, err := lab.TagDigests(t.Context(), c)
	if err != nil {
		return ""
	}
	return tags[ref]
}

// node is one simulated node: a real containerd in its own temp dir.
type node struct {
	dir string
	cd  *lab.Containerd
	cri *cri.Client
}

func newNode(t *testing.T) node {
	t.Helper()
	return newNodeOn(t, lab.Containerd16)
}
