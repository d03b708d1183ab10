package coordinator

import (
	"time"

	"github.com/cachemachine/cachemachine/agent"
)

// stateEntry is the newest state known for one node.
type stateEntry struct {
	state    agent.State
	received time.Time
	// departed is when the node left or failed (zero while it is a member). The entry is a
	// tombstone from then on: its version still fences off older states, and it is reaped
	// reapAfter later.
	departed time.Time
}

// nodeStore holds the newest state of every node heard of. Each node is the only writer of
// its state and a higher version wins, so applying is idempotent and order-insensitive. It
// has no lock of its own: Cluster.mu guards it.
type nodeStore struct {
	entries map[string]*stateEntry
}

func newNodeStore() nodeStore { return nodeStore{entries: map[string]*stateEntry{}} }

// apply stores s if it is newer than what is known for s.Node and reports whether it was news.
// A departed node's state is still accepted when newer (its last words), but the node stays
// departed until membership says it is back.
func (st *nodeStore) apply(s agent.State, now time.Time) bool {
	e := st.entries[s.Node]
	if e == nil {
		st.entries[s.Node] = &stateEntry{state: s, received: now}
		return true
	}
	if s.Version <= e.state.Version {
		return false
	}
	e.state, e.received = s, now
	return true
}

// depart tombstones node: version is the newest version known from elsewhere (its metadata),
// so even a node whose state never arrived fences off anything not newer.
func (st *nodeStore) depart(node string, version uint64, now time.Time) {
	e := st.entries[node]
	if e == nil {
		e = &stateEntry{state: agent.State{Node: node}}
		st.entries[node] = e
	}
	if version > e.state.Version && e.state.Version == 0 {
		e.state.Version = version
	}
	if e.departed.IsZero() {
		e.departed = now
	}
}

// rejoin clears node's tombstone: membership says it is alive again.
func (st *nodeStore) rejoin(node string) {
	if e := st.entries[node]; e != nil {
		e.departed = time.Time{}
	}
}

// reap forgets nodes departed for longer than after, and tombstones nodes that are not members
// (a state that arrived for a node membership never showed) so they are reaped in turn.
func (st *nodeStore) reap(isMember func(string) bool, now time.Time, after time.Duration) {
	for name, e := range st.entries {
		switch {
		case e.departed.IsZero() && !isMember(name):
			e.departed = now
		case !e.departed.IsZero() && now.Sub(e.departed) > after:
			delete(st.entries, name)
		}
	}
}

// version returns the version of node's stored state, 0 when none.
func (st *nodeStore) version(node string) uint64 {
	if e := st.entries[node]; e != nil {
		return e.state.Version
	}
	return 0
}
