package coordinator

import (
	"context"
	"sync"
	"time"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// Standalone is a cluster of one: the agent that runs with cluster.enabled false. It leads
// itself and publishes straight into its own agent. It has the Cluster methods the rest of the
// program uses, so nothing needs to know which one it runs with.
type Standalone struct {
	node     string
	httpAddr string
	local    LocalAgent
	boot     time.Time // when NewStandalone ran: this agent's start

	mu      sync.Mutex // guards the fields below
	version uint64     // the newest state version Run saw
	updated time.Time  // when Run saw it
}

// NewStandalone returns the cluster of one node, node, whose status API is at httpAddr.
func NewStandalone(node, httpAddr string, local LocalAgent) *Standalone {
	return &Standalone{node: node, httpAddr: httpAddr, local: local, boot: time.Now()}
}

// Leader returns this node: it always leads.
func (s *Standalone) Leader() (name, httpAddr string, self bool) { return s.node, s.httpAddr, true }

// NodeStates returns this node's state.
func (s *Standalone) NodeStates() []NodeState {
	st := s.local.State()
	s.mu.Lock()
	updated := s.updated
	if st.Version != s.version {
		updated = time.Now() // newer than Run has seen: just published
	}
	s.mu.Unlock()
	return []NodeState{{State: st, Alive: true, Updated: updated, Boot: s.boot}}
}

// PublishDesired installs images in the local agent under a version above the one in force.
func (s *Standalone) PublishDesired(images []image.Image) (uint64, error) {
	v := max(uint64(time.Now().UnixNano()), s.local.Desired().Version+1)
	s.local.SetDesired(agent.Desired{Version: v, Images: images})
	return v, nil
}

// LeaderChanges never fires: the leader never changes.
func (s *Standalone) LeaderChanges() <-chan struct{} { return nil }

// Superseded never fires: no other node publishes.
func (s *Standalone) Superseded() <-chan struct{} { return nil }

// Ready is always true.
func (s *Standalone) Ready() bool { return true }

// Run notes when the agent's state changes (for NodeState.Updated) until ctx ends.
func (s *Standalone) Run(ctx context.Context) error {
	for {
		s.mu.Lock()
		if v := s.local.State().Version; v != s.version {
			s.version, s.updated = v, time.Now()
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-s.local.Changes():
		}
	}
}

// Close releases nothing.
func (s *Standalone) Close() error { return nil }

// Status is this node's view of its cluster of one, for `cachemachine debug cluster`.
func (s *Standalone) Status() ClusterStatus {
	version := s.local.State().Version
	return ClusterStatus{
		Node: s.node, Ready: true, Leader: s.node, LeaderHTTPAddr: s.httpAddr, IsLeader: true,
		DesiredVersion: s.local.Desired().Version,
		Members:        []Member{{Name: s.node, State: "alive", Alive: true, Leader: true, HTTPAddr: s.httpAddr, StateVersion: version, StoredVersion: version}},
	}
}
