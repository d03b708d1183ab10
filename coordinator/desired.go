package coordinator

import (
	"errors"
	"fmt"
	"time"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// ErrNotLeader is returned by PublishDesired on a node that is not the leader.
var ErrNotLeader = errors.New("coordinator: not the leader")

// sentMark records the last desired version sent to a node.
type sentMark struct {
	version uint64
	at      time.Time
}

func (c *Cluster) handleDesired(from string, d agent.Desired) {
	c.mu.Lock()
	c.highestDesired = max(c.highestDesired, d.Version)
	c.mu.Unlock()
	if _, _, self := c.Leader(); self {
		// The leader's list is the one it publishes. A list from another node (one that led its
		// side of a partition, sent as the partition healed) must not replace it; the nodes that
		// took that list show its version in their states, and superseded answers them.
		c.log.Info("desired list from another node ignored: this node is the leader", "version", d.Version, "peer", from)
		return
	}
	if c.local.SetDesired(d) {
		c.log.Info("desired list applied", "version", d.Version, "images", len(d.Images), "peer", from)
	} else {
		c.log.Debug("desired list ignored: not newer", "version", d.Version, "peer", from)
	}
}

// catchUp, on the leader, sends d to node when node's state shows an older desired version;
// a node is sent one version at most once per desiredResend. A node showing a newer version
// than the leader's list is answered by superseded.
func (c *Cluster) catchUp(node string, nodeVersion uint64, d agent.Desired) {
	if nodeVersion > d.Version {
		c.superseded(node, nodeVersion, d.Version)
		return
	}
	if d.Version == 0 || nodeVersion == d.Version {
		return
	}
	now := time.Now()
	c.mu.Lock()
	mb, ok := c.members[node]
	mark := c.desiredSent[node]
	if !ok || !mb.alive || (mark.version == d.Version && now.Sub(mark.at) < c.t.desiredResend) {
		c.mu.Unlock()
		return
	}
	c.desiredSent[node] = sentMark{version: d.Version, at: now}
	b, err := c.desiredWireLocked(d)
	c.mu.Unlock()
	if err != nil {
		c.log.Error("encoding desired list", "err", err)
		return
	}
	c.log.Debug("sending desired list to catch up", "node", node, "version", d.Version, "node_version", nodeVersion)
	c.enqueue(mb, msgDesired, b)
}

// superseded, on the leader, signals Superseded when node holds a list above the leader's:
// another node's, taken while the cluster was partitioned and each side had a leader. The
// leader lists its sources and publishes above every version seen; otherwise that list would
// stay on such nodes until the leader's selection changed. At most once per backstop interval
// (30 s): a node that never takes the new list costs a listing that often, no more.
func (c *Cluster) superseded(node string, nodeVersion, version uint64) {
	now := time.Now()
	c.mu.Lock()
	if now.Sub(c.supersededAt) < c.t.backstop {
		c.mu.Unlock()
		return
	}
	c.supersededAt = now
	c.mu.Unlock()
	c.log.Info("a node holds a newer desired list than the leader's: listing and publishing again",
		"node", node, "node_version", nodeVersion, "version", version)
	c.metrics.superseded.Inc()
	signal(c.newerCh)
}

// Superseded receives a value (coalesced) on the leader when a node holds a newer desired
// list than the leader's own; the receiver should list its sources and publish again, even
// an unchanged selection (PublishDesired versions it above every list seen).
func (c *Cluster) Superseded() <-chan struct{} { return c.newerCh }

// desiredWireLocked returns d encoded, cached per version. Callers hold c.mu.
func (c *Cluster) desiredWireLocked(d agent.Desired) ([]byte, error) {
	if c.desiredWire != nil && c.desiredWireVer == d.Version {
		return c.desiredWire, nil
	}
	clean, _ := cleanDesired(d.Images)
	b, err := encodeMessage(message{Type: msgDesired, Desired: desiredToWire(c.cfg.NodeName, agent.Desired{Version: d.Version, Images: clean})})
	if err != nil {
		return nil, err
	}
	c.desiredWire, c.desiredWireVer = b, d.Version
	return b, nil
}

// PublishDesired makes images the cluster's desired list. It fails with ErrNotLeader unless
// this node is the leader. The version is max(now in ns, highest desired version seen + 1), so
// it supersedes every earlier list, including a previous leader's. The list is applied locally
// (LocalAgent.SetDesired) and queued for a reliable send to every alive member; PublishDesired
// does not wait for the sends. Images that cannot travel (bad reference or digest) are left
// out and logged.
func (c *Cluster) PublishDesired(images []image.Image) (uint64, error) {
	if _, _, self := c.Leader(); !self {
		return 0, ErrNotLeader
	}
	clean, errs := cleanDesired(images)
	for _, err := range errs {
		c.log.Warn("desired image left out", "err", err)
	}
	current := c.local.Desired().Version
	c.mu.Lock()
	v := max(uint64(time.Now().UnixNano()), c.highestDesired+1, current+1)
	c.highestDesired = v
	d := agent.Desired{Version: v, Images: clean}
	b, err := c.desiredWireLocked(d)
	var targets []member
	now := time.Now()
	if err == nil {
		for _, mb := range c.members {
			if mb.alive && mb.name != c.cfg.NodeName {
				targets = append(targets, mb)
				c.desiredSent[mb.name] = sentMark{version: v, at: now}
			}
		}
	}
	c.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("coordinator: publish desired: %w", err)
	}
	c.local.SetDesired(d)
	for _, mb := range targets {
		c.enqueue(mb, msgDesired, b)
	}
	c.log.Info("desired list published", "version", v, "images", len(clean), "members", len(targets)+1)
	return v, nil
}

// catchUpAll, on the leader, sends the desired list to every alive member whose last known
// state shows an older list, or that has sent no state yet (a member that just joined).
func (c *Cluster) catchUpAll() {
	c.mu.Lock()
	leader, ok := c.leaderLocked()
	if !ok || leader.name != c.cfg.NodeName {
		c.mu.Unlock()
		return
	}
	versions := map[string]uint64{}
	for name, mb := range c.members {
		if !mb.alive || name == c.cfg.NodeName {
			continue
		}
		versions[name] = 0
		if e := c.states.entries[name]; e != nil {
			versions[name] = e.state.DesiredVersion
		}
	}
	c.mu.Unlock()
	d := c.local.Desired()
	for name, v := range versions {
		c.catchUp(name, v, d)
	}
}
