package cri_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/cri/critest"
)

const (
	testRef    = "registry.test/cm/img:v1"
	testDigest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
)

// newClient starts a fake server with testRef in its registry and connects to it.
func newClient(t *testing.T, opts cri.Options) (*critest.Server, *cri.Client) {
	t.Helper()
	srv := critest.Start(t)
	srv.AddRemote(testRef, testDigest, 5<<20)
	c, err := cri.New(t.Context(), srv.Endpoint(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return srv, c
}

func TestConformanceFake(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		auth *cri.Auth
	}{
		{name: "anonymous"},
		{name: "auth", auth: &cri.Auth{Username: "oauth2accesstoken", Password: "ya29.token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, c := newClient(t, cri.Options{})
			srv.AddRemote("registry.test/cm/img:alias", testDigest, 5<<20)
			if tt.auth != nil {
				srv.SetPullAuth(tt.auth.Username, tt.auth.Password)
			}
			critest.Conformance(t, c, critest.Fixture{
				Ref:        testRef,
				Digest:     testDigest,
				OtherTag:   "alias",
				MissingRef: "registry.test/cm/img:missing",
				Auth:       tt.auth,
			})
			require.Empty(t, srv.Images(), "conformance leaves the node as found")
		})
	}
}

func TestEndpoint(t *testing.T) {
	t.Parallel()
	srv := critest.Start(t)
	bare := srv.Endpoint()[len("unix://"):]
	c, err := cri.New(t.Context(), bare, cri.Options{})
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, srv.Endpoint(), c.Endpoint())
}

func TestPullDeadline(t *testing.T) {
	t.Parallel()
	srv, c := newClient(t, cri.Options{PullTimeout: 100 * time.Millisecond})
	srv.SetPullLatency(time.Minute)

	_, err := c.PullImage(t.Context(), testRef, nil)
	require.ErrorIs(t, err, cri.ErrDeadline)
	require.Contains(t, err.Error(), "pull "+testRef)
	require.Empty(t, srv.Images(), "a timed-out pull stores nothing")

	// The caller's cancel and deadline, on a client whose own pull deadline is far away (a
	// cancel 50 ms before a 100 ms deadline could lose the race on a loaded machine).
	srv, c = newClient(t, cri.Options{PullTimeout: time.Minute})
	srv.SetPullLatency(time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = c.PullImage(ctx, testRef, nil)
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, srv.Images())

	// The caller's own shorter deadline counts the same.
	ctx, cancel = context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err = c.PullImage(ctx, testRef, nil)
	require.ErrorIs(t, err, cri.ErrDeadline)
	require.Empty(t, srv.Images())
}

func TestInjectedErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		method string
		err    error
		want   error
		call   func(context.Context, *cri.Client) error
	}{
		{name: "list unavailable", method: critest.MethodListImages,
			err: status.Error(codes.Unavailable, "restarting"), want: cri.ErrUnavailable,
			call: func(ctx context.Context, c *cri.Client) error { _, err := c.ListImages(ctx); return err }},
		{name: "status internal", method: critest.MethodImageStatus,
			err: status.Error(codes.Internal, "boom"), want: cri.ErrRuntime,
			call: func(ctx context.Context, c *cri.Client) error { _, err := c.ImageStatus(ctx, testRef); return err }},
		{name: "remove unavailable", method: critest.MethodRemoveImage,
			err: status.Error(codes.Unavailable, "restarting"), want: cri.ErrUnavailable,
			call: func(ctx context.Context, c *cri.Client) error { return c.RemoveImage(ctx, testRef) }},
		{name: "fsinfo unimplemented", method: critest.MethodImageFsInfo,
			err: status.Error(codes.Unimplemented, "no"), want: cri.ErrNotCRI,
			call: func(ctx context.Context, c *cri.Client) error { _, err := c.ImageFsInfo(ctx); return err }},
		{name: "pull registry down", method: critest.MethodPullImage,
			err: status.Error(codes.Unknown, "dial tcp 127.0.0.1:5000: connect: connection refused"), want: cri.ErrRuntime,
			call: func(ctx context.Context, c *cri.Client) error { _, err := c.PullImage(ctx, testRef, nil); return err }},
		{name: "version unavailable", method: critest.MethodVersion,
			err: status.Error(codes.Unavailable, "restarting"), want: cri.ErrUnavailable,
			call: func(ctx context.Context, c *cri.Client) error { _, err := c.Version(ctx); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, c := newClient(t, cri.Options{})
			srv.SetError(tt.method, tt.err)
			require.ErrorIs(t, tt.call(t.Context(), c), tt.want)
			srv.SetError(tt.method, nil)
			require.NoError(t, tt.call(t.Context(), c))
		})
	}
}

func TestPullAuth(t *testing.T) {
	t.Parallel()
	const password = "s3cret-token"
	srv, c := newClient(t, cri.Options{})
	srv.SetPullAuth("oauth2accesstoken", password)

	_, err := c.PullImage(t.Context(), testRef, nil)
	require.ErrorIs(t, err, cri.ErrUnauthorized)

	wrong := &cri.Auth{Username: "oauth2accesstoken", Password: "wrong-" + password}
	_, err = c.PullImage(t.Context(), testRef, wrong)
	require.ErrorIs(t, err, cri.ErrUnauthorized)
	require.NotContains(t, err.Error(), wrong.Password)

	id, err := c.PullImage(t.Context(), testRef, &cri.Auth{Username: "oauth2accesstoken", Password: password})
	require.NoError(t, err)
	require.Equal(t, critest.ImageID(testDigest), id)

	// A runtime that echoed the password would still not leak it.
	srv.SetError(critest.MethodPullImage, status.Error(codes.Unknown, "bad token "+password+": 401 Unauthorized"))
	_, err = c.PullImage(t.Context(), testRef, &cri.Auth{Username: "oauth2accesstoken", Password: password})
	require.ErrorIs(t, err, cri.ErrUnauthorized)
	require.NotContains(t, err.Error(), password)
	require.Contains(t, err.Error(), "<redacted>")
}

func TestNewMissingSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "missing.sock")
	_, err := cri.New(t.Context(), "unix://"+path, cri.Options{CallTimeout: time.Second})
	require.ErrorIs(t, err, cri.ErrUnavailable)
	require.ErrorContains(t, err, "cri socket "+path)
	require.ErrorContains(t, err, "no such file")
}

func TestNewNotListening(t *testing.T) {
	t.Parallel()
	// A socket file with nobody listening: a runtime that died without cleaning up.
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "dead.sock")
	lis, err := net.Listen("unix", path)
	require.NoError(t, err)
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, lis.Close())

	_, err = cri.New(t.Context(), path, cri.Options{CallTimeout: time.Second})
	require.ErrorIs(t, err, cri.ErrUnavailable)
	require.ErrorContains(t, err, "cri socket "+path)
}

func TestNewNotCRI(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "grpc.sock")
	lis, err := net.Listen("unix", path)
	require.NoError(t, err)
	g := grpc.NewServer()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	t.Cleanup(func() {
		g.Stop()
		<-served
	})

	_, err = cri.New(t.Context(), "unix://"+path, cri.Options{})
	require.ErrorIs(t, err, cri.ErrNotCRI)
	require.ErrorContains(t, err, path)
}

func TestReconnectAfterRestart(t *testing.T) {
	t.Parallel()
	srv, c := newClient(t, cri.Options{CallTimeout: time.Second})
	_, err := c.PullImage(t.Context(), testRef, nil)
	require.NoError(t, err)

	srv.Stop()
	_, err = c.ListImages(t.Context())
	require.ErrorIs(t, err, cri.ErrUnavailable)

	require.NoError(t, srv.Restart())
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		imgs, err := c.ListImages(t.Context())
		if assert.NoError(ct, err) {
			assert.Len(ct, imgs, 1)
		}
	}, 10*time.Second, 50*time.Millisecond, "the client reconnects after a runtime restart")
}
