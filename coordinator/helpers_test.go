package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
)

// fakeAgent is a LocalAgent with the agent's version rules and a call log.
type fakeAgent struct {
	changes chan struct{}

	mu      sync.Mutex // guards the fields below
	state   agent.State
	desired agent.Desired
	calls   []string // SetDesired calls: "set v" or "ignore v"
}

var _ LocalAgent = (*fakeAgent)(nil)
var _ LocalAgent = (*agent.Agent)(nil)

func newFakeAgent(node string) *fakeAgent {
	return &fakeAgent{
		changes: make(chan struct{}, 1),
		state: agent.State{
			Node:    node,
			Version: uint64(time.Now().UnixNano()),
			Ready:   true,
			Cached:  map[string]string{},
		},
	}
}

func (f *fakeAgent) State() agent.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.Clone()
}

func (f *fakeAgent) Changes() <-chan struct{} { return f.changes }

func (f *fakeAgent) Desired() agent.Desired {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.desired
}

func (f *fakeAgent) SetDesired(d agent.Desired) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.Version <= f.desired.Version {
		f.calls = append(f.calls, fmt.Sprintf("ignore %d", d.Version))
		return false
	}
	f.calls = append(f.calls, fmt.Sprintf("set %d", d.Version))
	f.desired = d
	f.state.DesiredVersion = d.Version
	f.bumpLocked()
	return true
}

// update changes the state the way the agent does: version +1 and a coalesced signal.
func (f *fakeAgent) update(fn func(*agent.State)) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.state)
	f.bumpLocked()
	return f.state.Version
}

func (f *fakeAgent) bumpLocked() {
	f.state.Version++
	select {
	case f.changes <- struct{}{}:
	default:
	}
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var testKey = bytes.Repeat([]byte{7}, 32)

type testNode struct {
	name   string
	c      *Cluster
	a      *fakeAgent
	reg    *prometheus.Registry
	logs   *logBuffer
	cancel context.CancelFunc
	done   chan error
}

// startNode creates and runs a node on loopback with fast timings; edit adjusts its config.
func startNode(t *testing.T, name string, join []string, edit ...func(*Config)) *testNode {
	t.Helper()
	return startNodeWith(t, name, join, nil, edit...)
}

// startNodeWith is startNode with options beyond the test timings.
func startNodeWith(t *testing.T, name string, join []string, opts []Option, edit ...func(*Config)) *testNode {
	t.Helper()
	cfg := Config{
		Name:     "jupyter",
		NodeName: name,
		BindAddr: "127.0.0.1",
		Join:     join,
		Key:      testKey,
		HTTPAddr: "127.0.0.1:8080",
	}
	for _, e := range edit {
		e(&cfg)
	}
	n := &testNode{name: name, a: newFakeAgent(name), reg: prometheus.NewRegistry(), logs: &logBuffer{}, done: make(chan error, 1)}
	logger := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(cfg, n.a, logger, n.reg, append([]Option{WithTestTimings()}, opts...)...)
	require.NoError(t, err)
	n.c = c
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { n.done <- c.Run(ctx) }()
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, n.logs.String())
		}
	})
	return n
}

// stop ends Run (which leaves the cluster) and waits for it.
func (n *testNode) stop(t *testing.T) {
	t.Helper()
	n.cancel()
	select {
	case err := <-n.done:
		require.NoError(t, err)
		n.done <- nil // later stops return at once
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Run did not return", n.name)
	}
	require.NoError(t, n.c.Close())
}

// kill simulates a crash: memberlist shuts down without leaving.
func (n *testNode) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, n.c.shutdown(false))
}

func (n *testNode) addr() string { return n.c.advert }

func (n *testNode) aliveNames() []string {
	var out []string
	for _, m := range n.c.Members() {
		if m.Alive {
			out = append(out, m.Name)
		}
	}
	return out
}

func (n *testNode) stateOf(node string) (NodeState, bool) {
	for _, s := range n.c.NodeStates() {
		if s.Node == node {
			return s, true
		}
	}
	return NodeState{}, false
}

func (n *testNode) counter(c *prometheus.CounterVec, label string) float64 {
	return value(c.WithLabelValues(label))
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		panic(err)
	}
	if out.Counter != nil {
		return out.Counter.GetValue()
	}
	return out.Gauge.GetValue()
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLeader waits until every node sees exactly the given alive members and leader.
func waitLeader(t *testing.T, timeout time.Duration, leader string, nodes ...*testNode) {
	t.Helper()
	want := make([]string, 0, len(nodes))
	for _, n := range nodes {
		want = append(want, n.name)
	}
	waitFor(t, timeout, fmt.Sprintf("members %v agreeing on leader %s", want, leader), func() bool {
		for _, n := range nodes {
			name, _, _ := n.c.Leader()
			if name != leader || strings.Join(n.aliveNames(), ",") != strings.Join(sorted(want), ",") {
				return false
			}
		}
		return true
	})
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// digest returns a valid sha256 digest derived from s.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}
