package coordinator

import (
	"fmt"
	"math"
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
	// Updated is when this node learnt the state's version: received from the node, or,
	// for its own state, when the agent published it (zero: not known).
	Updated time.Time `json:"updated"`
	// Boot is when the node's agent started, from its metadata (zero when unknown): a
	// restarted agent has a new one.
	Boot time.Time `json:"boot"`
}

// stateVersionLocked is the state format this node sends: version 2 (pins and pull progress)
// when every alive member announces it understands it, else version 1. During a rolling upgrade
// the nodes therefore speak version 1 until the last old agent is gone: the old leader keeps
// seeing every state (without pins and progress), and a new leader shows those as not reported.
// One rule for every send keeps LocalState, which any peer may ask for, safe. The caller holds
// c.mu.
func (c *Cluster) stateVersionLocked() byte {
	for _, mb := range c.members {
		if mb.alive && mb.dmax < delegatePins {
			return wireVersion
		}
	}
	return stateVersionPins
}

// encodeLocal encodes this node's state for sending and for LocalState.
func (c *Cluster) encodeLocal(st agent.State) error {
	c.mu.Lock()
	version := c.stateVersionLocked()
	c.mu.Unlock()
	b, err := encodeMessage(message{Type: msgState, Version: version, State: stateToWire(c.cfg.NodeName, st)})
	if err != nil {
		return fmt.Errorf("coordinator: encoding own state: %w", err)
	}
	c.mu.Lock()
	if st.Version != c.localStateVersion {
		c.localStateVersion, c.localUpdated = st.Version, time.Now()
	}
	c.localWire, c.localVersion = b, version
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

func (c *Cluster) handleState(s agent.State, format byte) {
	if s.Node == c.cfg.NodeName {
		return // our own state, echoed: only we write it
	}
	c.mu.Lock()
	if c.states.apply(s, format, time.Now()) {
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
		mb := c.members[name]
		out = append(out, NodeState{State: e.state, Alive: mb.alive, Updated: e.received, Boot: bootTime(mb.meta.Boot)})
	}
	selfUpdated := c.localUpdated
	if self.Version != c.localStateVersion {
		selfUpdated = time.Now() // published a moment ago; the run loop has not encoded it yet
	}
	c.mu.Unlock()
	out = append(out, NodeState{State: self, Alive: true, Updated: selfUpdated, Boot: bootTime(c.boot)})
	slices.SortFunc(out, func(a, b NodeState) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// bootTime is a boot time from node metadata (ns since the epoch, 0 when unknown).
func bootTime(ns uint64) time.Time {
	if ns == 0 || ns > math.MaxInt64 {
		return time.Time{}
	}
	return time.Unix(0, int64(ns))
}
