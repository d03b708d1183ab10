package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unsafe"

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

	require.True(t, st.apply(s(10, "a"), 1, now), "first state is news")
	require.False(t, st.apply(s(10, "b"), 1, now), "same version is not news")
	require.False(t, st.apply(s(9, "c"), 1, now), "older version loses")
	require.Equal(t, []string{"a"}, st.entries["n2"].state.Missing)
	require.True(t, st.apply(s(11, "d"), 1, now), "higher version wins")
	require.True(t, st.apply(s(11, "d2"), stateVersionPins, now), "the same version in a newer format carries more")
	require.False(t, st.apply(s(11, "d1"), 1, now), "and the older format does not take it back")

	// Departure tombstones the entry: stale states stay out, its last words still count.
	st.depart("n2", 5, now)
	require.False(t, st.apply(s(11, "stale"), 1, now))
	require.Equal(t, uint64(11), st.version("n2"), "metadata's older version does not lower the fence")
	require.True(t, st.apply(s(12, "last words"), 1, now))
	require.False(t, st.entries["n2"].departed.IsZero(), "still departed")

	// A node whose state never arrived is fenced by its metadata version.
	st.depart("n3", 100, now)
	require.False(t, st.apply(agent.State{Node: "n3", Version: 99}, 1, now))
	require.True(t, st.apply(agent.State{Node: "n3", Version: 101}, 1, now))

	// Rejoin clears the tombstone.
	st.rejoin("n2")
	require.True(t, st.entries["n2"].departed.IsZero())

	// Reap: departed entries go after the interval; non-members are tombstoned first.
	st.apply(agent.State{Node: "stranger", Version: 1}, 1, now)
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

// TestNodeStoreInterns checks that states of different nodes share one copy of each string,
// keep their content, and that strings no state uses any more are dropped by compaction.
func TestNodeStoreInterns(t *testing.T) {
	t.Parallel()
	now := time.Now()
	st := newNodeStore()
	// fresh returns a new copy of s, as decoding a message does.
	fresh := func(s string) string { return string([]byte(s)) }
	state := func(node string, v uint64, tag string) agent.State {
		ref := "registry.example/lab:" + tag
		dig := "sha256:" + strings.Repeat("ab", 32)
		return agent.State{
			Node: node, Version: v,
			Images:  []agent.CachedImage{{Tags: []string{fresh(ref)}, Digests: []string{fresh("registry.example/lab@" + dig)}}},
			Cached:  map[string]string{fresh(ref): fresh(dig)},
			Missing: []string{fresh("registry.example/lab:other")},
		}
	}
	require.True(t, st.apply(state("n1", 1, "w_2024_01"), 1, now))
	require.True(t, st.apply(state("n2", 1, "w_2024_01"), 1, now))
	a, b := st.entries["n1"].state, st.entries["n2"].state
	require.Equal(t, a.Images, b.Images)
	require.Equal(t, a.Cached, b.Cached)
	require.Same(t, unsafe.StringData(a.Images[0].Tags[0]), unsafe.StringData(b.Images[0].Tags[0]))
	require.Same(t, unsafe.StringData(a.Images[0].Digests[0]), unsafe.StringData(b.Images[0].Digests[0]))
	require.Same(t, unsafe.StringData(a.Missing[0]), unsafe.StringData(b.Missing[0]))
	for ref, d := range b.Cached {
		require.Same(t, unsafe.StringData(a.Images[0].Tags[0]), unsafe.StringData(ref))
		require.Equal(t, "sha256:"+strings.Repeat("ab", 32), d)
	}

	// Weeks of new tags: once the table has doubled, only what the states use remains.
	for i := range 2000 {
		st.apply(state("n1", uint64(i+2), fmt.Sprintf("w_%04d", i)), 1, now)
		st.apply(state("n2", uint64(i+2), fmt.Sprintf("w_%04d", i)), 1, now)
	}
	st.reap(func(string) bool { return true }, now, time.Minute)
	require.Len(t, st.strs, 4, "the tag, the repo digest, the digest and the missing reference of the newest states")
	require.Equal(t, "registry.example/lab:w_1999", st.entries["n1"].state.Images[0].Tags[0])
}
