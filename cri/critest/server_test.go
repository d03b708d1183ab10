package critest_test

import (
	"context"
	"testing"
	"testing/synctest"
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

// TestConformanceRuntime runs the conformance suite against the in-memory runtime itself, as
// agent tests and simulations use it (cri.TestConformanceFake runs it through the Server).
// With credentials required, every subtest runs.
func TestConformanceRuntime(t *testing.T) {
	t.Parallel()
	auth := &cri.Auth{Username: "oauth2accesstoken", Password: "ya29.token"}
	rt := critest.NewRuntime(critest.RuntimeOptions{})
	rt.AddRemote(repo+":v1", digestA, 100)
	rt.AddRemote(repo+":alias", digestA, 100)
	rt.SetPullAuth(auth.Username, auth.Password)
	critest.Conformance(t, rt, critest.Fixture{
		Ref:        repo + ":v1",
		Digest:     digestA,
		OtherTag:   "alias",
		MissingRef: repo + ":missing",
		Auth:       auth,
	})
	require.Empty(t, rt.Images(), "conformance leaves the node as found")
}

// TestRuntimeErrorsReadAsTheClients checks that the runtime, called directly, fails as a
// cri.Client connected to it through the Server does: same sentinel, same text.
func TestRuntimeErrorsReadAsTheClients(t *testing.T) {
	t.Parallel()
	srv, c := connect(t)
	srv.AddRemote(repo+":v1", digestA, 100)
	tests := []struct {
		name     string
		setup    func()
		ref      string
		sentinel error
	}{
		{name: "not found", setup: func() {}, ref: repo + ":missing", sentinel: cri.ErrNotFound},
		{name: "unauthorized", setup: func() { srv.SetPullAuth("u", "p") }, ref: repo + ":v1", sentinel: cri.ErrUnauthorized},
	}
	for _, tt := range tests {
		tt.setup()
		_, viaClient := c.PullImage(t.Context(), tt.ref, nil)
		_, direct := srv.PullImage(t.Context(), tt.ref, nil)
		require.ErrorIs(t, viaClient, tt.sentinel, tt.name)
		require.ErrorIs(t, direct, tt.sentinel, tt.name)
		require.EqualError(t, direct, viaClient.Error(), tt.name)
	}

	expired, cancel := context.WithTimeout(t.Context(), time.Nanosecond)
	defer cancel()
	<-expired.Done()
	_, err := srv.PullImage(expired, repo+":v1", &cri.Auth{Username: "u", Password: "p"})
	require.ErrorIs(t, err, cri.ErrDeadline)
	require.EqualError(t, err, "pull "+repo+":v1: deadline exceeded")
}

// TestRuntimeRunsOnTheBubbleClock checks that latency and held pulls wait on a synctest
// bubble's clock, and that the call log records when each pull began and ended.
func TestRuntimeRunsOnTheBubbleClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := critest.NewRuntime(critest.RuntimeOptions{})
		rt.AddRemote(repo+":v1", digestA, 100)
		rt.AddRemote(repo+":v2", digestB, 100)
		rt.SetPullLatency(time.Hour)
		start := time.Now()
		_, err := rt.PullImage(t.Context(), repo+":v1", nil)
		require.NoError(t, err)
		require.Equal(t, time.Hour, time.Since(start))

		rt.SetPullLatency(0)
		rt.HoldPulls()
		done := make(chan error, 1)
		go func() {
			_, err := rt.PullImage(t.Context(), repo+":v2", nil)
			done <- err
		}()
		time.Sleep(time.Minute)
		synctest.Wait()
		require.Len(t, rt.Images(), 1, "a held pull stores nothing yet")
		rt.ReleasePulls()
		require.NoError(t, <-done)
		require.Len(t, rt.Images(), 2)

		calls := rt.Calls()
		require.Len(t, calls, 2)
		require.Equal(t, start, calls[0].Time)
		require.Equal(t, start.Add(time.Hour), calls[0].End)
		require.Equal(t, time.Minute, calls[1].End.Sub(calls[1].Time))
		require.NoError(t, calls[1].Err)
	})
}
