package coordinator

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
)

func TestNodeStore(t *testing.T) {
	t.Parallel()
	now := time.Now()
	st := newNodeStore()
	s := func(v uint64, missing ...string) agent.State {
		return agent.State{Node: "n2", Version: v, Missing: missing}
	}

	require.True(t, st.apply(s(10, "a"), now), "first state is news")
	require.False(t, st.apply(s(10, "b"), now), "same version is not news")
	require.False(t, st.apply(s(9, "c"), now), "older version loses")
	require.Equal(t, []string{"a"}, st.entries["n2"].state.Missing)
	require.True(t, st.apply(s(11, "d"), now), "higher version wins")

	// Departure tombstones the entry: stale states stay out, its last words still count.
	st.depart("n2", 5, now)
	require.False(t, st.apply(s(11, "stale"), now))
	require.Equal(t, uint64(11), st.version("n2"), "metadata's older version does not lower the fence")
	require.True(t, st.apply(s(12, "last words"), now))
	require.False(t, st.entries["n2"].departed.IsZero(), "still departed")

	// A node whose state never arrived is fenced by its metadata version.
	st.depart("n3", 100, now)
	require.False(t, st.apply(agent.State{Node: "n3", Version: 99}, now))
	require.True(t, st.apply(agent.State{Node: "n3", Version: 101}, now))

	// Rejoin clears the tombstone.
	st.rejoin("n2")
	require.True(t, st.entries["n2"].departed.IsZero())

	// Reap: departed entries go after the interval; non-members are tombstoned first.
	st.apply(agent.State{Node: "stranger", Version: 1}, now)
	isMember := func(n string) bool { return n == "n2" }
	st.reap(isMember, now, time.Minute)
	require.Contains(t, st.entries, "stranger")
	require.False(t, st.entries["stranger"].departed.IsZero())
	st.reap(isMember, now.Add(2*time.Minute), time.Minute)
	require.NotContains(t, st.entries, "stranger")
	require.NotContains(t, st.entries, "n3")
	require.Contains(t, st.entries, "n2", "members are never reaped")
	require.Zero(t, st.version("nobody"))
}
