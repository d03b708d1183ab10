package coordinator

import (
	"fmt"
	"slices"
)

// leaderLocked returns the leader: the lowest alive member (the leader rule, leaderOf, kept
// current by memberEvent). ok is false before the first join attempt finished, and when not
// even this node is alive (memberlist is shut down or we left). Callers hold c.mu.
func (c *Cluster) leaderLocked() (member, bool) {
	if !c.ready.Load() || c.leader == "" {
		return member{}, false
	}
	return c.members[c.leader], true
}

// setMemberLocked records mb and keeps the alive count and the leader current: O(1), except
// when the leader itself departs. Callers hold c.mu.
func (c *Cluster) setMemberLocked(mb member) {
	if old, ok := c.members[mb.name]; ok && old.alive {
		c.alive--
	}
	c.members[mb.name] = mb
	switch {
	case mb.alive:
		c.alive++
		if c.leader == "" || mb.name < c.leader {
			c.leader = mb.name
		}
	case mb.name == c.leader:
		var names []string
		for name, m := range c.members {
			if m.alive {
				names = append(names, name)
			}
		}
		c.leader = leaderOf(names)
	}
}

// leaderOf is the leader rule: the lowest name among the alive members, "" when there are none.
// Every node that sees the same membership picks the same leader.
func leaderOf(alive []string) string {
	if len(alive) == 0 {
		return ""
	}
	return slices.Min(alive)
}

// Leader returns the leader's name and status API address, and whether it is this node. name
// is "" until the first join attempt finished (Ready). It does not block.
func (c *Cluster) Leader() (name, httpAddr string, self bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.leaderLocked()
	if !ok {
		return "", "", false
	}
	addr := l.meta.HTTPAddr
	if l.name == c.cfg.NodeName {
		addr = c.cfg.HTTPAddr
	}
	return l.name, addr, l.name == c.cfg.NodeName
}

// LeaderChanges receives a value (coalesced) whenever the leader changed, including the first
// time one is known (when the node becomes Ready). Receivers then call Leader.
func (c *Cluster) LeaderChanges() <-chan struct{} { return c.leaderCh }

// membershipChanged recomputes the leader after membership events (or readiness).
func (c *Cluster) membershipChanged() {
	c.mu.Lock()
	if v := c.stateVersionLocked(); v != c.localVersion && c.localWire != nil {
		c.mu.Unlock()
		// The last old agent left (or an old one joined): say the same in the other format.
		if err := c.encodeLocal(c.local.State()); err != nil {
			c.log.Error("own state not re-encoded", "err", err)
		}
		c.sendStateToLeader()
		c.mu.Lock()
	}
	alive := c.alive
	leader, ok := c.leaderLocked()
	id := ""
	if ok {
		id = fmt.Sprintf("%s/%d", leader.name, leader.meta.Boot)
	}
	prev := c.leaderID
	c.leaderID = id
	c.mu.Unlock()
	c.metrics.members.Set(float64(alive))
	self := ok && leader.name == c.cfg.NodeName
	if self {
		c.metrics.isLeader.Set(1)
	} else {
		c.metrics.isLeader.Set(0)
	}
	// A member that just became alive gets the desired list now, not at its next state.
	c.catchUpAll()
	if id == prev {
		return
	}
	c.log.Info("leader changed", "leader", leader.name, "self", self, "members", alive)
	signal(c.leaderCh)
	if ok && !self {
		// A new leader (or a restarted one) learns every state within one round trip.
		c.sendStateToLeader()
	}
}
