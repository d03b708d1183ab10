package coordinator

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/agent"
)

// NodeState is the newest known state of one node, in its wire projection (image IDs and the
// disk path stay on their node; see stateToWire).
type NodeState struct {
	agent.State
	// Alive is whether the node is an alive member now.
	Alive bool `json:"alive"`
}

// encodeLocal encodes this node's state for sending and for LocalState.
func (c *Cluster) encodeLocal(st agent.State) error {
	b, err := encodeMessage(message{Type: msgState, State: stateToWire(c.cfg.NodeName, st)})
	if err != nil {
		return fmt.Errorf("coordinator: encoding own state: %w", err)
	}
	c.mu.Lock()
	c.localWire = b
	c.highestDesired = max(c.highestDesired, st.DesiredVersion)
	c.mu.Unlock()
	c.metaVer.Store(st.Version)
	return nil
}

func (c *Cluster) localChanged() {
	if err := c.encodeLocal(c.local.State()); err != nil {
		c.log.Error("own state not sent", "err", err)
		return
	}
	// No metadata update here: UpdateNode makes memberlist re-broadcast to every member, so
	// announcing each change costs O(members) per change per node. States reach the leader
	// over TCP; the version in metadata is refreshed by the backstop only.
	c.sendStateToLeader()
}

func (c *Cluster) sendStateToLeader() {
	c.mu.Lock()
	leader, ok := c.leaderLocked()
	b := c.localWire
	c.mu.Unlock()
	if ok && leader.name != c.cfg.NodeName {
		c.enqueue(leader, msgState, b)
	}
}

func (c *Cluster) handleState(s agent.State) {
	if s.Node == c.cfg.NodeName {
		return // our own state, echoed: only we write it
	}
	c.mu.Lock()
	if c.states.apply(s, time.Now()) {
		c.log.Debug("node state", "node", s.Node, "version", s.Version)
	}
	c.highestDesired = max(c.highestDesired, s.DesiredVersion)
	leader, ok := c.leaderLocked()
	c.mu.Unlock()
	if ok && leader.name == c.cfg.NodeName {
		c.catchUp(s.Node, s.DesiredVersion, c.local.Desired())
	}
}

// NodeStates returns the newest known state of every node, this node's own included (read
// from the local agent now), sorted by node name. On the leader it covers every node; on
// other nodes, what they happened to receive. The states share memory with the store (a
// stored state is replaced, never changed, so this costs no copy per status request):
// callers must not modify them.
func (c *Cluster) NodeStates() []NodeState {
	self := project(c.cfg.NodeName, c.local.State())
	c.mu.Lock()
	out := make([]NodeState, 0, len(c.states.entries)+1)
	for name, e := range c.states.entries {
		if name == c.cfg.NodeName || e.received.IsZero() {
			continue
		}
		out = append(out, NodeState{State: e.state, Alive: c.members[name].alive})
	}
	c.mu.Unlock()
	out = append(out, NodeState{State: self, Alive: true})
	slices.SortFunc(out, func(a, b NodeState) int { return strings.Compare(a.Node, b.Node) })
	return out
}
