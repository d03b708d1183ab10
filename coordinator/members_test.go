package coordinator

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/require"
)

func TestLeaderOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		alive []string
		want  string
	}{
		{name: "empty", alive: nil, want: ""},
		{name: "one", alive: []string{"n1"}, want: "n1"},
		{name: "lowest of several", alive: []string{"n3", "n1", "n2"}, want: "n1"},
		{name: "byte order, not numeric", alive: []string{"node-10", "node-9"}, want: "node-10"},
		{name: "order of input irrelevant", alive: []string{"b", "c", "a"}, want: "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, leaderOf(tt.alive))
		})
	}

	// Names are unique in memberlist, so ties are impossible; dead members are excluded.
	c := &Cluster{cfg: Config{NodeName: "n2"}, members: map[string]member{}}
	c.ready.Store(true)
	for _, mb := range []member{{name: "n1", alive: false}, {name: "n2", alive: true}, {name: "n3", alive: true}} {
		c.setMemberLocked(mb)
	}
	l, ok := c.leaderLocked()
	require.True(t, ok)
	require.Equal(t, "n2", l.name, "the dead n1 is not the leader")
}

// TestMembershipBookkeeping checks that the leader and alive count that memberEvent keeps
// current agree with the leader rule applied from scratch, through random joins, departures
// and rejoins.
func TestMembershipBookkeeping(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	c := &Cluster{cfg: Config{NodeName: "n05"}, members: map[string]member{}}
	c.ready.Store(true)
	for step := range 2000 {
		name := fmt.Sprintf("n%02d", rng.IntN(20))
		c.setMemberLocked(member{name: name, alive: rng.IntN(3) > 0})
		var alive []string
		for n, mb := range c.members {
			if mb.alive {
				alive = append(alive, n)
			}
		}
		require.Equal(t, len(alive), c.alive, "step %d: alive count", step)
		l, ok := c.leaderLocked()
		require.Equal(t, len(alive) > 0, ok, "step %d", step)
		require.Equal(t, leaderOf(alive), l.name, "step %d: leader", step)
	}
}

func TestMetaDecodeRejects(t *testing.T) {
	t.Parallel()
	good := encodeMeta(nodeMeta{Role: roleAgent, Boot: 1, StateVersion: 2, HTTPAddr: "10.0.0.1:8080"})
	tests := []struct {
		name   string
		in     []byte
		reason string
	}{
		{name: "empty", in: nil, reason: reasonShort},
		{name: "bad version", in: append([]byte{9}, good[1:]...), reason: reasonBadVersion},
		{name: "truncated", in: good[:len(good)-3], reason: reasonDecode},
		{name: "trailing", in: append(slices.Clone(good), 0), reason: reasonInvalid},
		{name: "too large", in: make([]byte, 600), reason: reasonTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := decodeMeta(tt.in)
			require.Error(t, err)
			require.Equal(t, tt.reason, dropReason(err))
		})
	}
}

func TestMemberEventState(t *testing.T) {
	t.Parallel()
	c := &Cluster{cfg: Config{NodeName: "n1"}, members: map[string]member{}, states: newNodeStore(), memberCh: make(chan struct{}, 1)}
	c.metrics, _ = newMetrics(nil)
	c.log = slog.New(slog.DiscardHandler)
	meta := func(flags byte) []byte {
		return encodeMeta(nodeMeta{Role: roleAgent, Flags: flags, Boot: 1, StateVersion: 9, HTTPAddr: "10.0.0.2:8080"})
	}
	node := func(name string, m []byte) *memberlist.Node {
		return &memberlist.Node{Name: name, Addr: net.ParseIP("10.0.0.2"), Port: 7946, Meta: m}
	}
	d := delegate{c}
	d.NotifyJoin(node("n2", meta(0)))
	d.NotifyJoin(node("n3", meta(0)))
	d.NotifyUpdate(node("n2", meta(metaLeaving)))
	d.NotifyLeave(node("n2", meta(metaLeaving)))
	d.NotifyLeave(node("n3", meta(0)))
	d.NotifyJoin(node("n4", []byte{1})) // bad metadata: a member without metadata
	ms := c.Members()
	require.Len(t, ms, 3)
	require.Equal(t, Member{Name: "n2", Addr: "10.0.0.2:7946", State: "left", HTTPAddr: "10.0.0.2:8080", StateVersion: 9, StoredVersion: 9}, ms[0])
	require.Equal(t, "failed", ms[1].State)
	require.Equal(t, "alive", ms[2].State)
	require.Empty(t, ms[2].HTTPAddr)
	require.Equal(t, 1.0, value(c.metrics.dropped.WithLabelValues(reasonShort)))
}
