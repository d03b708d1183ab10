package coordinator

import (
	"time"

	"github.com/cachemachine/cachemachine/agent"
)

// stateEntry is the newest state known for one node.
type stateEntry struct {
	state    agent.State
	received time.Time
	// format is the wire format version the state arrived in: the same version in a newer
	// format (sent again once every member understands it) carries more and replaces it.
	format byte
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
	// strs holds one copy of every reference, digest and text the stored states use: a
	// hundred nodes holding the same hundred images would otherwise keep a hundred copies of
	// each string. It is rebuilt from the entries when it has doubled (see reap).
	strs      map[string]string
	strsBuilt int // len(strs) after the last rebuild
}

func newNodeStore() nodeStore {
	return nodeStore{entries: map[string]*stateEntry{}, strs: map[string]string{}}
}

// intern returns the store's copy of s.
func (st *nodeStore) intern(s string) string {
	if s == "" {
		return ""
	}
	if c, ok := st.strs[s]; ok {
		return c
	}
	st.strs[s] = s
	return s
}

// internState makes s use the store's copies of its strings. It writes into s's slices and
// maps: s must be a state nothing else refers to (freshly decoded, or a clone).
func (st *nodeStore) internState(s *agent.State) {
	s.Runtime = st.intern(s.Runtime)
	for i := range s.Images {
		img := &s.Images[i]
		img.ID = st.intern(img.ID)
		for j, t := range img.Tags {
			img.Tags[j] = st.intern(t)
		}
		for j, d := range img.Digests {
			img.Digests[j] = st.intern(d)
		}
	}
	cached := make(map[string]string, len(s.Cached))
	for ref, d := range s.Cached {
		cached[st.intern(ref)] = st.intern(d)
	}
	s.Cached = cached
	for j, ref := range s.Missing {
		s.Missing[j] = st.intern(ref)
	}
	for j, ref := range s.Queued {
		s.Queued[j] = st.intern(ref)
	}
	for j := range s.Pulling {
		s.Pulling[j].Ref = st.intern(s.Pulling[j].Ref)
	}
	for j := range s.Held {
		s.Held[j].Ref = st.intern(s.Held[j].Ref)
		s.Held[j].Reason = st.intern(s.Held[j].Reason)
	}
	for j := range s.Failed {
		s.Failed[j].Ref = st.intern(s.Failed[j].Ref)
	}
	for j, ref := range s.Pinned {
		s.Pinned[j] = st.intern(ref)
	}
	for j, ref := range s.Pinning.OverBudget {
		s.Pinning.OverBudget[j] = st.intern(ref)
	}
	s.Pinning.Detail = st.intern(s.Pinning.Detail)
}

// compact rebuilds strs from the stored states once it has doubled since the last rebuild,
// so that strings no state uses any more (last week's tags) do not accumulate.
func (st *nodeStore) compact() {
	if len(st.strs) < max(2*st.strsBuilt, 1024) {
		return
	}
	old := st.strs
	st.strs = make(map[string]string, st.strsBuilt)
	for _, e := range st.entries {
		// A copy: readers of NodeStates may hold the stored state's slices and maps.
		s := e.state.Clone()
		st.internState(&s)
		e.state = s
	}
	st.strsBuilt = len(st.strs)
	clear(old)
}

// apply stores s if it is newer than what is known for s.Node and reports whether it was news.
// A departed node's state is still accepted when newer (its last words), but the node stays
// departed until membership says it is back.
func (st *nodeStore) apply(s agent.State, format byte, now time.Time) bool {
	e := st.entries[s.Node]
	if e != nil && (s.Version < e.state.Version || s.Version == e.state.Version && format <= e.format) {
		return false
	}
	st.internState(&s)
	if e == nil {
		st.entries[s.Node] = &stateEntry{state: s, received: now, format: format}
		return true
	}
	e.state, e.received, e.format = s, now, format
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
	st.compact()
}

// version returns the version of node's stored state, 0 when none.
func (st *nodeStore) version(node string) uint64 {
	if e := st.entries[node]; e != nil {
		return e.state.Version
	}
	return 0
}
