package coordinator

import (
	"context"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"
)

// Member is one node of the cluster as this node sees it.
type Member struct {
	Name string `json:"name"`
	// Addr is the node's gossip address, "ip:port".
	Addr string `json:"addr"`
	// State is "alive", "left" or "failed".
	State  string `json:"state"`
	Alive  bool   `json:"alive"`
	Leader bool   `json:"leader"`
	// HTTPAddr is the node's status API address, from its metadata.
	HTTPAddr string `json:"http_addr,omitempty"`
	// StateVersion is the node's state version as its metadata announces it (refreshed by
	// the 30 s backstop, not on every change; StoredVersion is the fresh one on the leader).
	StateVersion uint64 `json:"state_version"`
	// StoredVersion is the version of the node's state this node holds (0: none).
	StoredVersion uint64 `json:"stored_version"`
}

// ClusterStatus is a JSON-able summary for `cachemachine debug cluster`.
type ClusterStatus struct {
	Node           string   `json:"node"`
	Ready          bool     `json:"ready"`
	Leader         string   `json:"leader"`
	LeaderHTTPAddr string   `json:"leader_http_addr,omitempty"`
	IsLeader       bool     `json:"is_leader"`
	DesiredVersion uint64   `json:"desired_version"`
	Members        []Member `json:"members"`
}

// member is one node as membership events last described it.
type member struct {
	name  string
	addr  string // "ip:port"
	ip    net.IP
	port  uint16
	alive bool
	state string // alive, left, failed
	since time.Time
	meta  nodeMeta
	// dmax is the highest delegate protocol the node's memberlist announces: at least
	// delegatePins when it decodes state version 2.
	dmax uint8
}

// memberEvent records a membership change. It runs on memberlist's goroutine with its node
// lock held: it only copies the node, updates c.members and signals.
func (c *Cluster) memberEvent(n *memberlist.Node, alive bool) {
	now := time.Now()
	mb := member{
		name:  n.Name,
		addr:  net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port))),
		ip:    append(net.IP(nil), n.Addr...),
		port:  n.Port,
		alive: alive,
		since: now,
		dmax:  n.DMax,
	}
	if len(n.Meta) > 0 {
		m, err := decodeMeta(n.Meta)
		if err != nil {
			c.drop(dropReason(err), err.Error())
		} else {
			mb.meta = m
		}
	}
	switch {
	case alive:
		mb.state = "alive"
	case mb.meta.Flags&metaLeaving != 0:
		mb.state = "left"
	default:
		mb.state = "failed"
	}
	if !utf8.ValidString(mb.name) || mb.name == "" {
		return
	}
	c.mu.Lock()
	if old, ok := c.members[mb.name]; ok && old.alive == alive {
		mb.since = old.since
	}
	c.setMemberLocked(mb)
	if !alive {
		c.states.depart(mb.name, mb.meta.StateVersion, now)
	} else {
		c.states.rejoin(mb.name)
	}
	c.mu.Unlock()
	signal(c.memberCh)
}

// metaUpdater re-announces this node's metadata (its state version) when the backstop asks
// and the version changed, at most once per metaMin: UpdateNode blocks until the alive
// broadcast went out.
func (c *Cluster) metaUpdater(ctx context.Context) {
	last := c.metaVer.Load() // what the join announced
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.metaCh:
		}
		if v := c.metaVer.Load(); v != last {
			last = v
			if err := c.ml.UpdateNode(c.t.metaTimeout); err != nil {
				c.log.Debug("metadata update", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.t.metaMin):
		}
	}
}

// Members returns every member this node knows of (departed ones until they are reaped),
// sorted by name.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.membersLocked()
}

func (c *Cluster) membersLocked() []Member {
	leader, _ := c.leaderLocked()
	out := make([]Member, 0, len(c.members))
	for _, name := range slices.Sorted(maps.Keys(c.members)) {
		mb := c.members[name]
		m := Member{
			Name:          name,
			Addr:          mb.addr,
			State:         mb.state,
			Alive:         mb.alive,
			Leader:        name == leader.name,
			HTTPAddr:      mb.meta.HTTPAddr,
			StateVersion:  mb.meta.StateVersion,
			StoredVersion: c.states.version(name),
		}
		if name == c.cfg.NodeName {
			m.HTTPAddr = c.cfg.HTTPAddr
			m.StateVersion = c.metaVer.Load()
			m.StoredVersion = m.StateVersion
		}
		out = append(out, m)
	}
	return out
}

// Status returns a summary of this node's view of the cluster.
func (c *Cluster) Status() ClusterStatus {
	name, addr, self := c.Leader()
	desired := c.local.Desired().Version
	c.mu.Lock()
	defer c.mu.Unlock()
	return ClusterStatus{
		Node:           c.cfg.NodeName,
		Ready:          c.ready.Load(),
		Leader:         name,
		LeaderHTTPAddr: addr,
		IsLeader:       self,
		DesiredVersion: desired,
		Members:        c.membersLocked(),
	}
}
