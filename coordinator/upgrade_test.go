package coordinator

import (
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/cachemachine/cachemachine/agent"
)

// TestRollingUpgradeStateVersion: while a member does not announce state version 2 (an older
// agent), states travel as version 1, which it decodes; pins and progress arrive once it is
// gone.
func TestRollingUpgradeStateVersion(t *testing.T) {
	t.Parallel()
	a := startNode(t, "node-a", nil)
	b := startNode(t, "node-b", []string{a.addr()})
	old := startNodeWith(t, "node-c", []string{a.addr()}, []Option{WithMemberlistTuning(func(c *memberlist.Config) {
		c.DelegateProtocolMax = 0 // what an agent before state version 2 announces
	})})
	waitLeader(t, 10*time.Second, "node-a", a, b, old)

	b.a.update(func(s *agent.State) {
		s.Pinning = agent.Pinning{Status: agent.PinHonoured, Detail: "containerd 2.1"}
	})
	waitFor(t, 10*time.Second, "node-b's newest state on the leader", func() bool {
		ns, ok := a.stateOf("node-b")
		return ok && ns.Version == b.a.State().Version
	})
	ns, _ := a.stateOf("node-b")
	if ns.Pinning.Status != "" {
		t.Fatalf("with an older agent in the cluster, states travel as version 1: got pinning %+v", ns.Pinning)
	}
	if v := b.c.stateVersion(); v != wireVersion {
		t.Fatalf("state version %d with an older member", v)
	}

	old.stop(t)
	waitFor(t, 10*time.Second, "node-b's pins on the leader once the older agent left", func() bool {
		ns, ok := a.stateOf("node-b")
		return ok && ns.Pinning.Status == agent.PinHonoured
	})
}
