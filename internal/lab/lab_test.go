package lab

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const mb = 1 << 20

func TestRandomLayerIsAValidGzippedTar(t *testing.T) {
	t.Parallel()
	for _, size := range []int64{0, 1, 511, 512, 513, 3*mb + 7} {
		l, err := newRandomLayer(size)
		require.NoError(t, err)

		rc, err := l.Compressed()
		require.NoError(t, err)
		zr, err := gzip.NewReader(rc)
		require.NoError(t, err)
		tr := tar.NewReader(zr)
		hdr, err := tr.Next()
		require.NoError(t, err)
		require.Equal(t, size, hdr.Size)
		n, err := io.Copy(io.Discard, tr)
		require.NoError(t, err)
		require.Equal(t, size, n)
		_, err = tr.Next()
		require.ErrorIs(t, err, io.EOF)

		// Regenerated streams must match the digests computed once.
		again, err := newSeededLayer(l.seed, l.size)
		require.NoError(t, err)
		require.Equal(t, l.digest, again.digest)
		require.Equal(t, l.diffID, again.diffID)
		require.Equal(t, l.compressedSize, again.compressedSize)
		require.GreaterOrEqual(t, l.compressedSize, size, "random data must not shrink")
	}
}

func TestMountPointsUnder(t *testing.T) {
	t.Parallel()
	info := strings.Join([]string{
		`22 1 0:21 / / rw - ext4 /dev/vda rw`,
		`30 22 0:30 / /tmp/cm1/root/x rw - overlay overlay rw`,
		`31 22 0:31 / /tmp/cm1/root/x/y\040z rw - overlay overlay rw`,
		`32 22 0:32 / /tmp/cm12 rw - tmpfs tmpfs rw`,
		`33 22 0:33 / /tmp/cm1 rw - tmpfs tmpfs rw`,
	}, "\n")
	got, err := mountPointsUnder(bufio.NewScanner(strings.NewReader(info)), "/tmp/cm1/")
	require.NoError(t, err)
	require.Equal(t, []string{"/tmp/cm1/root/x/y z", "/tmp/cm1/root/x", "/tmp/cm1"}, got)
}

func TestRegistryAuth(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := NewRegistry(t, RegistryOptions{Username: "alice", Password: "s3cret"})
	good := &Basic{Username: "alice", Password: "s3cret"}

	digest, err := PushRandomImage(ctx, reg.Addr, "p/r/img", []string{"v1", "latest"}, 2*mb, 2, good)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(digest, "sha256:"), digest)
	for _, tag := range []string{"v1", "latest"} {
		require.Equal(t, digest, headDigest(t, reg.Addr+"/p/r/img:"+tag, good))
	}

	require.NoError(t, Tag(ctx, reg.Addr, "p/r/img", digest, "moved", good))
	require.Equal(t, digest, headDigest(t, reg.Addr+"/p/r/img:moved", good))

	_, err = PushRandomImage(ctx, reg.Addr, "p/r/img", []string{"v2"}, mb, 1, &Basic{Username: "alice", Password: "wrong"})
	requireStatus(t, err, http.StatusUnauthorized)
	_, err = PushRandomImage(ctx, reg.Addr, "p/r/img", []string{"v2"}, mb, 1, nil)
	requireStatus(t, err, http.StatusUnauthorized)
	requireStatus(t, Tag(ctx, reg.Addr, "p/r/img", digest, "v2", nil), http.StatusUnauthorized)
}

func TestRegistryStopStartKeepsData(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := NewRegistry(t, RegistryOptions{})
	digest, err := PushRandomImage(ctx, reg.Addr, "lib/app", []string{"1.0"}, mb, 1, nil)
	require.NoError(t, err)
	addr := reg.Addr

	require.NoError(t, reg.Stop())
	_, err = http.Get("http://" + addr + "/v2/")
	require.Error(t, err, "registry must be down")
	require.NoError(t, reg.Stop(), "stopping twice is a no-op")

	require.NoError(t, reg.Start(ctx))
	require.Equal(t, addr, reg.Addr)
	require.Error(t, reg.Start(ctx), "already running")
	require.Equal(t, digest, headDigest(t, addr+"/lib/app:1.0", nil))

	require.NoError(t, reg.Close())
	_, err = os.Stat(reg.Dir)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.NoError(t, reg.Close(), "Close is idempotent")
}

func TestContainerdPullsThroughMirrorWithAuth(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := NewRegistry(t, RegistryOptions{Username: "bob", Password: "pw"})
	digest, err := PushRandomImage(ctx, reg.Addr, "p/r/img", []string{"tag"}, 3*mb, 2, &Basic{Username: "bob", Password: "pw"})
	require.NoError(t, err)

	c := NewContainerd(t, ContainerdOptions{Mirrors: map[string]string{"us-central1-docker.pkg.dev": reg.Addr}})
	require.Less(t, len(c.Socket), 100)
	require.Equal(t, "unix://"+c.Socket, c.Endpoint())

	const ref = "us-central1-docker.pkg.dev/p/r/img:tag"
	images := imageClient(t, c)

	_, err = images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	require.ErrorContains(t, err, "401 Unauthorized", "anonymous pull from an auth registry")

	start := time.Now()
	resp, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{
		Image: &runtimeapi.ImageSpec{Image: ref},
		Auth:  &runtimeapi.AuthConfig{Username: "bob", Password: "pw"},
	})
	require.NoError(t, err)
	t.Logf("pulled %s as %s in %s", ref, resp.ImageRef, time.Since(start))
	requireImage(t, images, ref, "us-central1-docker.pkg.dev/p/r/img@"+digest)
	fi, err := os.Stat(c.ImageFsDir())
	require.NoError(t, err)
	require.True(t, fi.IsDir())

	// A crash and a restart on the same root keep the image.
	require.NoError(t, c.Kill())
	require.NoError(t, c.Kill(), "killing twice is a no-op")
	require.NoError(t, c.Restart(ctx))
	require.Error(t, c.Restart(ctx), "already running")
	requireImage(t, imageClient(t, c), ref, "us-central1-docker.pkg.dev/p/r/img@"+digest)

	// A graceful stop and restart too.
	require.NoError(t, c.Stop())
	require.NoError(t, c.Restart(ctx))
	requireImage(t, imageClient(t, c), ref, "us-central1-docker.pkg.dev/p/r/img@"+digest)

	require.NoError(t, c.Close())
	_, err = os.Stat(c.Dir)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestStartContainerdFailsFastWithLogTail(t *testing.T) {
	t.Parallel()
	Require(t)
	if os.Geteuid() != 0 {
		SkipOrFail(t, "containerd needs root")
	}
	c, err := StartContainerd(t.Context(), ContainerdOptions{Snapshotter: "bogus"})
	require.Nil(t, c)
	// Not "not ready: context deadline exceeded" after 20 s: a missing CRI service fails at once.
	require.ErrorContains(t, err, "containerd serves no CRI")
	require.ErrorContains(t, err, `failed to find snapshotter \"bogus\"`, "the log tail explains why")

	long := filepath.Join(os.TempDir(), strings.Repeat("x", 100))
	_, err = StartContainerd(t.Context(), ContainerdOptions{Dir: long})
	require.ErrorContains(t, err, "shorter Dir")
	require.NoDirExists(t, long)
}

// requireStatus checks that err is a registry error with the given HTTP status.
func requireStatus(t *testing.T, err error, status int) {
	t.Helper()
	var terr *transport.Error
	require.ErrorAs(t, err, &terr)
	require.Equal(t, status, terr.StatusCode, "%v", err)
}

// headDigest returns the manifest digest that ref resolves to.
func headDigest(t *testing.T, ref string, auth *Basic) string {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	require.NoError(t, err)
	desc, err := remote.Head(r, remoteOptions(t.Context(), auth)...)
	require.NoError(t, err)
	return desc.Digest.String()
}

// imageClient dials c's CRI image service.
func imageClient(t *testing.T, c *Containerd) runtimeapi.ImageServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(c.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return runtimeapi.NewImageServiceClient(conn)
}

// requireImage checks that ref is present with repoDigest among its repo digests.
func requireImage(t *testing.T, images runtimeapi.ImageServiceClient, ref, repoDigest string) {
	t.Helper()
	st, err := images.ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	require.NoError(t, err)
	require.NotNil(t, st.Image, "image %s missing", ref)
	require.True(t, slices.Contains(st.Image.RepoDigests, repoDigest), "repo digests %v lack %s", st.Image.RepoDigests, repoDigest)
	require.Contains(t, st.Image.RepoTags, ref)
}

// TestProcessStopReportsOnlyUnexpectedExits checks Stop's verdicts: a process that exited on
// its own with a failure is reported, one killed on purpose with Kill is not, and a running
// one stops on SIGTERM without an error.
func TestProcessStopReportsOnlyUnexpectedExits(t *testing.T) {
	t.Parallel()
	sh, err := lookPath("sh")
	require.NoError(t, err)

	failed, err := StartProcess(sh, []string{"-c", "exit 3"}, io.Discard)
	require.NoError(t, err)
	<-failed.Done()
	require.ErrorContains(t, failed.Stop(time.Second), "exited on its own")

	killed, err := StartProcess(sh, []string{"-c", "sleep 60"}, io.Discard)
	require.NoError(t, err)
	killed.Kill()
	require.Error(t, killed.Err(), "SIGKILL is a failed exit")
	require.NoError(t, killed.Stop(time.Second), "a deliberate kill is no news")

	running, err := StartProcess(sh, []string{"-c", "sleep 60"}, io.Discard)
	require.NoError(t, err)
	require.NoError(t, running.Stop(5*time.Second))
	require.True(t, running.Exited())
}
