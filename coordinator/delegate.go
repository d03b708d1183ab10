package coordinator

import (
	"encoding/binary"

	"github.com/hashicorp/memberlist"
)

// Node metadata: byte 0 = metaVersion, byte 1 = role, byte 2 = flags (metaLeaving), uvarint
// boot time (ns: tells a restarted node from the one before it), uvarint state version,
// uvarint length + HTTP address. memberlist carries it in every alive message and panics when it is longer
// than the limit it passes (memberlist.MetaMaxSize = 512), so NodeMeta checks the size.
const (
	metaVersion = 1
	roleAgent   = 1 // every node today; a reserved byte for e.g. observers later
	// metaLeaving is set just before a graceful leave. memberlist does not tell a left node
	// from a failed one in NotifyLeave, so the node says so itself.
	metaLeaving = 1
	maxHTTPAddr = 256
)

// delegatePins is the delegate protocol version memberlist announces (as
// DelegateProtocolMax) for a node that decodes state version 2: memberlist carries it in
// every alive message, so a node learns what each member understands without a message of
// ours. The current version stays 0, as older agents have it, so memberlist's own check that
// every member speaks a version the others understand always passes.
const delegatePins = 1

// nodeMeta is the decoded metadata of a member.
type nodeMeta struct {
	Role         byte
	Flags        byte
	Boot         uint64
	StateVersion uint64
	HTTPAddr     string
}

func encodeMeta(m nodeMeta) []byte {
	b := []byte{metaVersion, m.Role, m.Flags}
	b = binary.AppendUvarint(b, m.Boot)
	b = binary.AppendUvarint(b, m.StateVersion)
	b = binary.AppendUvarint(b, uint64(len(m.HTTPAddr)))
	return append(b, m.HTTPAddr...)
}

func decodeMeta(b []byte) (nodeMeta, error) {
	if len(b) < 3 {
		return nodeMeta{}, wireErr(reasonShort, "metadata of %d bytes", len(b))
	}
	if len(b) > memberlist.MetaMaxSize {
		return nodeMeta{}, wireErr(reasonTooLarge, "metadata of %d bytes", len(b))
	}
	if b[0] != metaVersion {
		return nodeMeta{}, wireErr(reasonBadVersion, "metadata version %d", b[0])
	}
	if b[2]&^metaLeaving != 0 {
		return nodeMeta{}, wireErr(reasonInvalid, "unknown metadata flags %#x", b[2])
	}
	r := &rbuf{b: b[3:]}
	m := nodeMeta{Role: b[1], Flags: b[2], Boot: r.uvarint(), StateVersion: r.uvarint()}
	m.HTTPAddr = r.str(maxHTTPAddr, false)
	if r.err == nil && len(r.b) != 0 {
		r.fail(reasonInvalid, "%d trailing metadata bytes", len(r.b))
	}
	if r.err != nil {
		return nodeMeta{}, r.err
	}
	return m, nil
}

// delegate is the memberlist Delegate and EventDelegate of a Cluster. memberlist calls it
// from its packet, stream and state goroutines, concurrently (events: one at a time, with
// memberlist's node lock held), so no method blocks or calls back into memberlist: messages
// are copied into c.inbox (dropped and counted when it is full), membership changes update
// c.members under c.mu and signal the run loop.
type delegate struct{ c *Cluster }

// NodeMeta returns this node's metadata, at most limit bytes: when the HTTP address does not
// fit, it is left out (and logged) rather than letting memberlist panic.
func (d delegate) NodeMeta(limit int) []byte {
	c := d.c
	m := nodeMeta{Role: roleAgent, Boot: c.boot, StateVersion: c.metaVer.Load(), HTTPAddr: c.cfg.HTTPAddr}
	if c.leaving.Load() {
		m.Flags |= metaLeaving
	}
	b := encodeMeta(m)
	if len(b) <= limit && len(m.HTTPAddr) <= maxHTTPAddr {
		return b
	}
	m.HTTPAddr = ""
	b = encodeMeta(m)
	if c.metaBig.CompareAndSwap(false, true) {
		c.log.Warn("node metadata too large: leaving out the HTTP address", "limit", limit, "http_addr_bytes", len(c.cfg.HTTPAddr))
	}
	if len(b) > limit {
		return nil
	}
	return b
}

// NotifyMsg receives a user message (a reliable send from a peer).
func (d delegate) NotifyMsg(b []byte) { d.c.deliver(b) }

// GetBroadcasts returns nothing: states go to the leader and desired lists to every member by
// direct reliable sends, which are not limited to one UDP packet.
func (d delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState returns this node's own encoded state for a push/pull exchange.
func (d delegate) LocalState(join bool) []byte {
	c := d.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.localWire
}

// MergeRemoteState receives the peer's LocalState from a push/pull exchange.
func (d delegate) MergeRemoteState(b []byte, join bool) {
	if len(b) == 0 {
		return
	}
	d.c.deliver(b)
}

func (d delegate) NotifyJoin(n *memberlist.Node)   { d.c.memberEvent(n, true) }
func (d delegate) NotifyUpdate(n *memberlist.Node) { d.c.memberEvent(n, true) }
func (d delegate) NotifyLeave(n *memberlist.Node)  { d.c.memberEvent(n, false) }

// deliver hands a copy of b to the run loop without blocking.
func (c *Cluster) deliver(b []byte) {
	if len(b) == 0 {
		return
	}
	select {
	case c.inbox <- append([]byte(nil), b...):
	default:
		c.drop(reasonOverflow, "inbox full")
	}
}

// signal sends on a capacity-1 channel without blocking: bursts coalesce into one wake-up.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
