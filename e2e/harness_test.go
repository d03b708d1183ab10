// Package e2e runs the built cachemachine binary against real containerd and a real
// docker-registry (internal/lab) and checks the outcome with direct CRI calls.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

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

// syncBuffer is a bytes.Buffer safe for the process's writer and the test's reader.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agentProc is one running `cachemachine agent` process.
type agentProc struct {
	*lab.Process
	log    *syncBuffer
	socket string
}

// settings are the parts of an agent's config.yaml the tests vary.
type settings struct {
	Images       []string // SimpleRepoMan image_url entries
	Digests      []string // optional image_hash per image
	CRI          string
	Dir          string
	MinFree      float64
	PullAuth     string
	Dockerconfig string
	PullTimeout  string
}

// writeConfig writes a standalone agent config into s.Dir and returns its path.
func writeConfig(t *testing.T, s settings) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("name: jupyter\nrepomen:\n  - type: SimpleRepoMan\n    images:\n")
	for i, img := range s.Images {
		fmt.Fprintf(&b, "      - image_url: %s\n        name: image %d\n", img, i)
		if i < len(s.Digests) && s.Digests[i] != "" {
			fmt.Fprintf(&b, "        image_hash: %q\n", s.Digests[i])
		}
	}
	if s.PullAuth == "" {
		s.PullAuth = "none"
	}
	if s.PullTimeout == "" {
		s.PullTimeout = "60s"
	}
	fmt.Fprintf(&b, `agent:
  cri_socket: %s
  max_parallel_pulls: 2
  pull_timeout: %s
  backoff_initial: 500ms
  backoff_max: 2s
  resync_interval: 1s
  min_free_disk_percent: %g
  pull_auth: %s
`, s.CRI, s.PullTimeout, s.MinFree, s.PullAuth)
	if s.Dockerconfig != "" {
		fmt.Fprintf(&b, "  dockerconfig: %s\n", s.Dockerconfig)
	}
	fmt.Fprintf(&b, `  state_dir: %s
  debug_socket: %s
cluster:
  enabled: false
http:
  listen: 127.0.0.1:0
`, filepath.Join(s.Dir, "state"), filepath.Join(s.Dir, "agent.sock"))
	path := filepath.Join(s.Dir, "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	return path
}

// startAgent runs the binary with the config and stops it (SIGTERM) when the test ends.
func startAgent(t *testing.T, cfgPath string, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{log: &syncBuffer{}, socket: filepath.Join(filepath.Dir(cfgPath), "agent.sock")}
	var err error
	p.Process, err = lab.StartProcess(binary, append([]string{"agent", "--config", cfgPath, "--node-name", "node-a"}, args...), p.log)
	require.NoError(t, err)
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("agent log:\n%s", p.log.String())
		}
	})
	return p
}

// stop sends SIGTERM and fails the test when the agent needs SIGKILL.
func (p *agentProc) stop(t *testing.T) {
	if p.Exited() {
		return
	}
	if err := p.Stop(15 * time.Second); err != nil {
		t.Errorf("agent: %v", err)
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
	imgs, err := c.ListImages(t.Context())
	if err != nil {
		return ""
	}
	repo := ref[:strings.LastIndexByte(ref, ':')]
	for _, img := range imgs {
		for _, tag := range img.Tags {
			if tag != ref {
				continue
			}
			for _, d := range img.Digests {
				if r, digest, ok := strings.Cut(d, "@"); ok && r == repo {
					return digest
				}
			}
		}
	}
	return ""
}

// node is one simulated node: a real containerd in its own temp dir.
type node struct {
	dir string
	cd  *lab.Containerd
	cri *cri.Client
}

func newNode(t *testing.T) node {
	t.Helper()
	lab.Require(t)
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cd := lab.NewContainerd(t, lab.ContainerdOptions{})
	return node{dir: dir, cd: cd, cri: criClient(t, cd)}
}
