package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cachemachine/cachemachine/image"
	"github.com/stretchr/testify/require"
)

func TestDesiredListSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rt := newRuntime()
	a, err := New(Config{StateDir: dir}, rt, nil, nil)
	require.NoError(t, err)
	require.True(t, a.SetDesired(Desired{Version: 7, Images: []image.Image{{Ref: image.MustParseRef("ghcr.io/a/b:1"), Name: "one"}, {Ref: image.MustParseRef("busybox")}}}))
	require.False(t, a.SetDesired(Desired{Version: 6, Images: []image.Image{{Ref: image.MustParseRef("ghcr.io/old:1")}}}), "an older list must not replace a newer one")

	b, err := New(Config{StateDir: dir}, rt, nil, nil)
	require.NoError(t, err)
	require.Equal(t, Desired{Version: 7, Images: []image.Image{
		{Ref: image.MustParseRef("ghcr.io/a/b:1"), Name: "one"},
		{Ref: image.MustParseRef("docker.io/library/busybox:latest")},
	}}, b.Desired())
}

func TestDamagedDesiredListIsIgnored(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, desiredFile), []byte("{not json"), 0o600))
	a, err := New(Config{StateDir: dir}, newRuntime(), nil, nil)
	require.NoError(t, err)
	require.Empty(t, a.Desired().Images)
}
