package lab

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestBuiltReleasesMatchInstallScript: the releases the lab looks for are the ones make deps
// builds.
func TestBuiltReleasesMatchInstallScript(t *testing.T) {
	t.Parallel()
	script, err := os.ReadFile(filepath.Join("..", "..", "scripts", "install-deps.sh"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^CONTAINERD_BUILDS=\(([^)]*)\)`).FindSubmatch(script)
	require.NotNil(t, m, "install-deps.sh sets CONTAINERD_BUILDS=(...)")
	var want []string
	for _, v := range ContainerdVersions() {
		if v.Release() != "" {
			want = append(want, v.Release())
		}
	}
	require.ElementsMatch(t, want, strings.Fields(string(m[1])))
}

func TestContainerdVersionBinary(t *testing.T) {
	t.Setenv("CACHEMACHINE_CACHE", t.TempDir())
	_, err := Containerd2.Binary()
	require.ErrorContains(t, err, "scripts/build-containerd.sh v2.4.2")
	_, err = ContainerdVersion("9.9").Binary()
	require.ErrorContains(t, err, "unknown version")

	p, err := BuiltContainerdPath("v2.4.2")
	require.NoError(t, err)
	require.Equal(t, filepath.Join(os.Getenv("CACHEMACHINE_CACHE"), "containerd-v2.4.2", "bin", "containerd"), p)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755))
	got, err := Containerd2.Binary()
	require.NoError(t, err)
	require.Equal(t, p, got)
	require.Equal(t, "1.6", ContainerdVersion("").String())
}

// TestEveryContainerdPullsThroughMirrorWithAuth starts each containerd version with the config
// format it needs and pulls a GAR-named image through a hosts.toml redirect to an htpasswd
// registry, then checks the image survives a SIGKILL and a restart.
func TestEveryContainerdPullsThroughMirrorWithAuth(t *testing.T) {
	t.Parallel()
	reg := NewRegistry(t, RegistryOptions{Username: "bob", Password: "pw"})
	auth := &Basic{Username: "bob", Password: "pw"}
	digest, err := PushRandomImage(t.Context(), reg.Addr, "p/r/img", []string{"tag"}, 3*mb, 2, auth)
	require.NoError(t, err)
	const ref = "us-central1-docker.pkg.dev/p/r/img:tag"

	for _, v := range ContainerdVersions() {
		t.Run(v.String(), func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			c := NewContainerd(t, ContainerdOptions{Version: v, Mirrors: map[string]string{"us-central1-docker.pkg.dev": reg.Addr}})
			require.Contains(t, c.Version(), v.String()+".")
			if v.Release() != "" {
				require.Equal(t, v.Release(), c.Version())
			}
			images := imageClient(t, c)

			_, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			// 1.6 asks the registry and reports its 401; 1.7 and 2.x refuse a Basic challenge
			// they have no credentials for themselves.
			refusal := "401 Unauthorized"
			if v != Containerd16 {
				refusal = "authorization failed: no basic auth credentials"
			}
			require.ErrorContains(t, err, refusal, "anonymous pull from an auth registry")
			_, err = images.PullImage(ctx, &runtimeapi.PullImageRequest{
				Image: &runtimeapi.ImageSpec{Image: ref},
				Auth:  &runtimeapi.AuthConfig{Username: "bob", Password: "pw"},
			})
			require.NoError(t, err)
			requireImage(t, images, ref, "us-central1-docker.pkg.dev/p/r/img@"+digest)

			require.NoError(t, c.Kill())
			require.NoError(t, c.Restart(ctx))
			requireImage(t, imageClient(t, c), ref, "us-central1-docker.pkg.dev/p/r/img@"+digest)
		})
	}
}

// TestBinaryVersionCached: a binary's version is asked once, and again only when the file
// changes. Not parallel: a script written while other tests fork may fail to run with
// ETXTBSY (golang/go#22315).
func TestBinaryVersionCached(t *testing.T) {
	dir := t.TempDir()
	bin, calls := filepath.Join(dir, "containerd"), filepath.Join(dir, "calls")
	write := func(version string) {
		script := "#!/bin/sh\necho x >> " + calls + "\necho containerd github.com/containerd/containerd/v2 " + version + " abc\n"
		require.NoError(t, os.WriteFile(bin, []byte(script), 0o755))
	}
	ran := func() int {
		b, _ := os.ReadFile(calls)
		return strings.Count(string(b), "x")
	}
	write("v2.4.2")
	for range 3 {
		v, major, err := binaryVersion(t.Context(), bin)
		require.NoError(t, err)
		require.Equal(t, "v2.4.2", v)
		require.Equal(t, 2, major)
	}
	require.Equal(t, 1, ran())
	write("v1.7.35~ds1")
	v, major, err := binaryVersion(t.Context(), bin)
	require.NoError(t, err)
	require.Equal(t, "v1.7.35~ds1", v)
	require.Equal(t, 1, major)
	require.Equal(t, 2, ran())
}
