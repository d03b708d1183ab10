// Package coordinatortest runs clusters of in-process nodes: each a real coordinator.Cluster
// (memberlist on 127.0.0.1, a port of its own, test timings or production ones with memberlist
// tuned) over a local agent, a fake Agent unless the caller brings its own, with its own metrics
// registry and log. The coordinator's multi-node tests and the bench-cluster simulation both
// build their clusters with it.
//
// Start, Stop and Poll take contexts and return errors, for programs (the simulation); NewNode,
// StartNode, WaitFor and WaitLeader are testing.TB wrappers that register cleanup and fail the
// test.
package coordinatortest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// Key is the gossip key of in-process nodes unless Options.Key says otherwise.
var Key = bytes.Repeat([]byte{7}, 32)

const (
	// CacheName is the cache name (the memberlist label) of in-process nodes.
	CacheName = "jupyter"
	// HTTPAddr is the status API address nodes announce unless Options.HTTPAddr says
	// otherwise. Nothing listens there.
	HTTPAddr = "127.0.0.1:8080"
	// stopTimeout bounds how long a test's cleanup waits for a node's Run to return.
	stopTimeout = 10 * time.Second
)

// Options configure one node. Name is required; every other zero value is the test setting.
type Options struct {
	// Name is the node name; the leader is the lowest alive one.
	Name string
	// Join lists the peers to join ("ip:port", as Node.Addr returns); none: start alone.
	Join []string
	// Key is the gossip key. Default: Key.
	Key []byte
	// HTTPAddr is the status API address carried in metadata. Default: HTTPAddr.
	HTTPAddr string
	// Edit adjusts the coordinator configuration last (a wrong key, insecure gossip, another
	// cache name).
	Edit func(*coordinator.Config)
	// Local is the node's agent. Default: a new fake Agent, also in Node.Agent.
	Local coordinator.LocalAgent
	// Logger receives the node's log. Default: a debug-level text log into Node.Logs.
	Logger *slog.Logger
	// Production runs the coordinator and memberlist at production timings; by default they
	// run at coordinator.WithTestTimings.
	Production bool
	// Options are passed to coordinator.New after the timings (coordinator.WithMemberlistTuning,
	// a test's own options).
	Options []coordinator.Option
}

// Node is one in-process node: a coordinator.Cluster whose Run has a goroutine of its own,
// from Start until Stop (or the end of Start's context).
type Node struct {
	// Name is the node name.
	Name string
	// Cluster is the node's membership; Run is started already.
	Cluster *coordinator.Cluster
	// Local is the node's agent.
	Local coordinator.LocalAgent
	// Agent is the fake agent; nil when Options.Local was given.
	Agent *Agent
	// Registry holds the node's metrics.
	Registry *prometheus.Registry
	// Logs is the node's log; nil when Options.Logger was given.
	Logs *lab.LogBuffer

	addr   string
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	runErr error         // what Run returned; set before done is closed
}

// Start creates a node with coordinator.New, bound to 127.0.0.1 on a free port, and starts
// its Run, which joins opts.Join and serves the cluster until ctx ends or Stop is called. It
// does not wait for the join.
func Start(ctx context.Context, opts Options) (*Node, error) {
	if opts.Name == "" {
		return nil, errors.New("coordinatortest: node name is empty")
	}
	cfg := coordinator.Config{
		Name:     CacheName,
		NodeName: opts.Name,
		BindAddr: "127.0.0.1",
		Join:     opts.Join,
		Key:      opts.Key,
		HTTPAddr: opts.HTTPAddr,
	}
	if cfg.Key == nil {
		cfg.Key = Key
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = HTTPAddr
	}
	if opts.Edit != nil {
		opts.Edit(&cfg)
	}
	n := &Node{Name: opts.Name, Local: opts.Local, Registry: prometheus.NewRegistry(), done: make(chan struct{})}
	if n.Local == nil {
		n.Agent = NewAgent(opts.Name)
		n.Local = n.Agent
	}
	logger := opts.Logger
	if logger == nil {
		n.Logs = &lab.LogBuffer{}
		logger = slog.New(slog.NewTextHandler(n.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var copts []coordinator.Option
	if !opts.Production {
		copts = append(copts, coordinator.WithTestTimings())
	}
	c, err := coordinator.New(cfg, n.Local, logger, n.Registry, append(copts, opts.Options...)...)
	if err != nil {
		return nil, err
	}
	n.Cluster = c
	// memberlist announces the local node to the delegate while New creates it.
	for _, m := range c.Members() {
		if m.Name == opts.Name {
			n.addr = m.Addr
		}
	}
	if n.addr == "" {
		_ = c.Close()
		return nil, fmt.Errorf("coordinatortest: %s: own gossip address unknown", opts.Name)
	}
	ctx, n.cancel = context.WithCancel(ctx)
	go func() {
		defer close(n.done)
		n.runErr = c.Run(ctx)
	}()
	return n, nil
}

// Addr is the node's gossip address, "127.0.0.1:port": what others join.
func (n *Node) Addr() string { return n.addr }

// Done is closed when the node's Run has returned.
func (n *Node) Done() <-chan struct{} { return n.done }

// Stop ends Run, which leaves the cluster (bounded by the coordinator's leave timeouts),
// waits for it and closes the Cluster. It returns Run's and Close's errors; later calls
// return at once.
func (n *Node) Stop() error {
	n.cancel()
	<-n.done
	return errors.Join(n.runErr, n.Cluster.Close())
}

// Kill simulates a crash: memberlist shuts down without leaving, so the others see the node
// fail. Run goes on, cut off from the cluster, until Stop.
func (n *Node) Kill() error { return n.Cluster.Close() }

// AliveNames returns the names of the members this node sees alive, sorted.
func (n *Node) AliveNames() []string {
	var out []string
	for _, m := range n.Cluster.Members() {
		if m.Alive {
			out = append(out, m.Name)
		}
	}
	return out
}

// StateOf returns the state of node that this node holds.
func (n *Node) StateOf(node string) (coordinator.NodeState, bool) {
	for _, s := range n.Cluster.NodeStates() {
		if s.Node == node {
			return s, true
		}
	}
	return coordinator.NodeState{}, false
}

// StopAll stops every node at once, so that they leave in parallel (as a cluster's pods do
// when it is deleted), and waits for all of them.
func StopAll(nodes []*Node) error {
	for _, n := range nodes {
		n.cancel()
	}
	var errs []error
	for _, n := range nodes {
		if err := n.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// NewNode starts a node (Start) for the duration of t: the cleanup stops it, failing t when
// Run does not return within 10 s (the Cluster is closed then all the same) or returns an
// error, and shows the node's log when t failed.
func NewNode(t testing.TB, opts Options) *Node {
	t.Helper()
	n, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("start node %s: %v", opts.Name, err)
	}
	t.Cleanup(func() {
		n.cancel()
		select {
		case <-n.done:
			if err := n.Stop(); err != nil {
				t.Errorf("stop node %s: %v", n.Name, err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("%s: Run did not return", n.Name)
			// Free memberlist's sockets and goroutines anyway, for the rest of the test binary.
			if err := n.Cluster.Close(); err != nil {
				t.Errorf("close node %s: %v", n.Name, err)
			}
		}
		if t.Failed() && n.Logs != nil {
			t.Logf("log of %s:\n%s", n.Name, n.Logs.String())
		}
	})
	return n
}

// StartNode is NewNode for the common case: node name, peers to join and configuration
// edits, test timings, a fake agent.
func StartNode(t testing.TB, name string, join []string, edit ...func(*coordinator.Config)) *Node {
	t.Helper()
	return NewNode(t, Options{Name: name, Join: join, Edit: func(c *coordinator.Config) {
		for _, e := range edit {
			e(c)
		}
	}})
}
