package leader

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// TestMissingFromByTheAgentsRule: a node holds "repo:tag@digest" by its digest record (the
// runtime records no tag for it), as the agent decides; a moved tag is missing.
func TestMissingFromByTheAgentsRule(t *testing.T) {
	const repo = "ghcr.io/lsst/lab"
	dA, dB := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	st := agent.State{Images: []agent.CachedImage{
		{ID: "sha256:" + strings.Repeat("1", 64), Digests: []string{repo + "@" + dA}},
		{ID: "sha256:" + strings.Repeat("2", 64), Tags: []string{repo + ":moved"}, Digests: []string{repo + "@" + dB}},
	}}
	desired := []image.Image{
		{Ref: image.MustParseRef(repo + ":w_2024_01@" + dA)},
		{Ref: image.MustParseRef(repo + "@" + dA)},
		{Ref: image.MustParseRef(repo + ":moved"), Digest: dA},
		{Ref: image.MustParseRef(repo + ":moved")},
		{Ref: image.MustParseRef(repo + ":absent")},
		{Ref: image.MustParseRef(repo + ":w_2024_02@" + dB)},
	}
	require.Equal(t, []string{repo + ":moved", repo + ":absent"}, missingFrom(st, desired))
	require.Equal(t, []string{repo + ":w_2024_01@" + dA}, missingFrom(agent.State{}, desired[:1]))
}
