package critest_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/cri/critest"
)

const (
	repo    = "registry.test/cm/img"
	digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func connect(t *testing.T) (*critest.Server, *cri.Client) {
	t.Helper()
	srv := critest.Start(t)
	c, err := cri.New(t.Context(), srv.Endpoint(), cri.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return srv, c
}

func TestTagMoves(t *testing.T) {
	t.Parallel()
	srv, c := connect(t)
	ctx := t.Context()
	srv.AddRemote(repo+":weekly", digestA, 100)
	srv.AddRemote(repo+":w_1", digestA, 100)
	idA, err := c.PullImage(ctx, repo+":weekly", nil)
	require.NoError(t, err)
	_, err = c.PullImage(ctx, repo+":w_1", nil)
	require.NoError(t, err)

	// weekly moves to B; pulling it leaves A with its other tag.
	srv.AddRemote(repo+":weekly", digestB, 200)
	idB, err := c.PullImage(ctx, repo+":weekly", nil)
	require.NoError(t, err)
	require.NotEqual(t, idA, idB)
	require.Equal(t, critest.ImageID(digestB), idB)
	require.ElementsMatch(t, []cri.Image{
		{ID: idA, Tags: []string{repo + ":w_1"}, Digests: []string{repo + "@" + digestA}, Size: 100},
		{ID: idB, Tags: []string{repo + ":weekly"}, Digests: []string{repo + "@" + digestB}, Size: 200},
	}, srv.Images())

	// w_1 moves to B too; A is left dangling: no tags, digest kept.
	srv.AddRemote(repo+":w_1", digestB, 200)
	_, err = c.PullImage(ctx, repo+":w_1", nil)
	require.NoError(t, err)
	img, err := c.ImageStatus(ctx, idA)
	require.NoError(t, err)
	require.Empty(t, img.Tags)
	require.Equal(t, []string{repo + "@" + digestA}, img.Digests)
	img, err = c.ImageStatus(ctx, repo+":w_1")
	require.NoError(t, err)
	require.Equal(t, idB, img.ID)
	require.ElementsMatch(t, []string{repo + ":weekly", repo + ":w_1"}, img.Tags)

	fs, err := c.ImageFsInfo(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(300), fs[0].UsedBytes)
	require.Equal(t, uint64(2), fs[0].InodesUsed)
	srv.SetDiskUsage(42)
	fs, err = c.ImageFsInfo(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(42), fs[0].UsedBytes)
	require.DirExists(t, fs[0].Mountpoint)
}

func TestPullByDigestAndRemove(t *testing.T) {
	t.Parallel()
	srv, c := connect(t)
	ctx := t.Context()
	srv.AddRemote(repo+":v1", digestA, 100)

	id, err := c.PullImage(ctx, repo+"@"+digestA, nil)
	require.NoError(t, err)
	require.Equal(t, critest.ImageID(digestA), id)
	img, err := c.ImageStatus(ctx, repo+"@"+digestA)
	require.NoError(t, err)
	require.Empty(t, img.Tags, "a pull by digest adds no tag")

	_, err = c.PullImage(ctx, repo+"@"+digestB, nil)
	require.ErrorIs(t, err, cri.ErrNotFound)

	// Removing by ID, then an unknown image, succeeds.
	require.NoError(t, c.RemoveImage(ctx, id))
	require.NoError(t, c.RemoveImage(ctx, "sha256:unknown"))
	require.Empty(t, srv.Images())

	srv.RemoveRemote(repo + ":v1")
	_, err = c.PullImage(ctx, repo+":v1", nil)
	require.ErrorIs(t, err, cri.ErrNotFound)
	require.ErrorContains(t, err, "failed to resolve reference")
}

func TestCallsAndErrors(t *testing.T) {
	t.Parallel()
	srv, c := connect(t)
	ctx := t.Context()
	srv.AddRemote(repo+":v1", digestA, 100)
	before := time.Now()
	srv.SetError(critest.MethodPullImage, status.Error(codes.Unavailable, "restarting"))
	_, err := c.PullImage(ctx, repo+":v1", nil)
	require.ErrorIs(t, err, cri.ErrUnavailable)
	srv.SetError(critest.MethodPullImage, nil)
	_, err = c.PullImage(ctx, repo+":v1", nil)
	require.NoError(t, err)

	calls := srv.Calls()
	require.Len(t, calls, 3) // Version from cri.New, two pulls
	require.Equal(t, critest.MethodVersion, calls[0].Method)
	for _, call := range calls[1:] {
		require.Equal(t, critest.MethodPullImage, call.Method)
		require.Equal(t, repo+":v1", call.Ref)
		require.False(t, call.Time.Before(before))
	}
}

func TestPullLatency(t *testing.T) {
	t.Parallel()
	srv, c := connect(t)
	srv.AddRemote(repo+":v1", digestA, 100)
	srv.SetPullLatency(50 * time.Millisecond)
	start := time.Now()
	_, err := c.PullImage(t.Context(), repo+":v1", nil)
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond)

	srv.SetPullLatency(time.Minute)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = c.PullImage(ctx, repo+":v1", nil)
	require.ErrorIs(t, err, cri.ErrDeadline)
}

func TestImplicitLatest(t *testing.T) {
	t.Parallel()
	srv, c := connect(t)
	srv.AddRemote(repo, digestA, 100)
	_, err := c.PullImage(t.Context(), repo+":latest", nil)
	require.NoError(t, err)
	img, err := c.ImageStatus(t.Context(), repo)
	require.NoError(t, err)
	require.Equal(t, []string{repo + ":latest"}, img.Tags)
}
