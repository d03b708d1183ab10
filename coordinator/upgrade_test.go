package coordinator_test

import (
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
)

// TestRollingUpgradeStateVersion: while a member does not announce state version 2 (an older
// agent), states travel as version 1, which it decodes; pins and progress arrive once it is
// gone, even at the same state version.
func TestRollingUpgradeStateVersion(t *testing.T) {
	a := coordinatortest.StartNode(t, "node-a", nil)
	b := coordinatortest.StartNode(t, "node-b", []string{a.Addr()})
	old := coordinatortest.NewNode(t, coordinatortest.Options{Name: "node-c", Join: []string{a.Addr()}, Options: []coordinator.Option{
		coordinator.WithMemberlistTuning(func(c *memberlist.Config) {
			c.DelegateProtocolMax = 0 // what an agent before state version 2 announces
		}),
	}})
	coordinatortest.WaitLeader(t, 10*time.Second, "node-a", a, b, old)

	b.Agent.Update(func(s *agent.State) {
		s.Pinning = agent.Pinning{Status: agent.PinHonoured, Detail: "containerd 2.1"}
	})
	coordinatortest.WaitFor(t, 10*time.Second, "node-b's newest state on the leader", func() bool {
		ns, ok := a.StateOf("node-b")
		return ok && ns.Version == b.Agent.State().Version
	})
	ns, _ := a.StateOf("node-b")
	require.Empty(t, ns.Pinning.Status, "with an older agent in the cluster, states travel as version 1")

	require.NoError(t, old.Stop())
	coordinatortest.WaitFor(t, 10*time.Second, "node-b's pins on the leader once the older agent left", func() bool {
		ns, ok := a.StateOf("node-b")
		return ok && ns.Pinning.Status == agent.PinHonoured
	})
}
