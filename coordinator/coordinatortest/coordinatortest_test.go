package coordinatortest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
)

func TestPoll(t *testing.T) {
	t.Parallel()
	n := 0
	require.NoError(t, Poll(t.Context(), time.Second, time.Millisecond, func() (bool, string) {
		n++
		return n == 3, "three calls"
	}))

	err := Poll(t.Context(), 20*time.Millisecond, time.Millisecond, func() (bool, string) { return false, "never" })
	require.ErrorContains(t, err, "timed out after 20ms: never")

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err = Poll(ctx, time.Minute, time.Millisecond, func() (bool, string) { return false, "never" })
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "never")
}

func TestAgentVersions(t *testing.T) {
	t.Parallel()
	a := NewAgent("n1")
	v0 := a.State().Version
	require.True(t, a.SetDesired(agent.Desired{Version: 5}))
	require.False(t, a.SetDesired(agent.Desired{Version: 5}), "not newer")
	require.Equal(t, []string{"set 5", "ignore 5"}, a.Calls())
	require.Equal(t, uint64(5), a.State().DesiredVersion)
	v := a.Update(func(s *agent.State) { s.Missing = []string{"docker.io/a/b:c"} })
	require.Equal(t, v0+2, v)
	select {
	case <-a.Changes():
	default:
		t.Fatal("no change signalled")
	}
	select {
	case <-a.Changes():
		t.Fatal("changes are coalesced")
	default:
	}
}

func TestStartStop(t *testing.T) {
	_, err := Start(t.Context(), Options{})
	require.Error(t, err, "a node needs a name")

	a := NewNode(t, Options{Name: "a"})
	require.Contains(t, a.Addr(), "127.0.0.1:")
	b := StartNode(t, "b", []string{a.Addr()})
	WaitLeader(t, 10*time.Second, "a", a, b)
	require.NoError(t, StopAll([]*Node{a, b}))
	<-a.Done()
	require.NoError(t, a.Stop(), "a second stop returns at once")
	require.NoError(t, a.Kill(), "killing a stopped node does nothing")
}
