package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/rubintag"
)

// imageSize keeps test images small: one layer of tens of KB.
const imageSize = 32 << 10

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		cfg      Config
		wantRef  string
		wantHTTP bool
		wantErr  string // substring; "" means success
	}{
		{name: "docker hub", cfg: Config{RegistryURL: "registry.hub.docker.com", Repo: "lsstsqre/sciplat-lab"},
			wantRef: "registry.hub.docker.com/lsstsqre/sciplat-lab"},
		{name: "docker.io normalised", cfg: Config{RegistryURL: "index.docker.io", Repo: "lsstsqre/sciplat-lab"},
			wantRef: "docker.io/lsstsqre/sciplat-lab"},
		{name: "ghcr", cfg: Config{RegistryURL: "ghcr.io", Repo: "lsst-sqre/sciplat-lab"}, wantRef: "ghcr.io/lsst-sqre/sciplat-lab"},
		{name: "https URL", cfg: Config{RegistryURL: "https://ghcr.io/", Repo: "/a/b/"}, wantRef: "ghcr.io/a/b"},
		{name: "http URL is insecure", cfg: Config{RegistryURL: "http://reg.example:5000", Repo: "a"},
			wantRef: "reg.example:5000/a", wantHTTP: true},
		{name: "insecure flag", cfg: Config{RegistryURL: "reg.example", Repo: "a", Insecure: true}, wantRef: "reg.example/a", wantHTTP: true},
		{name: "loopback is plain HTTP", cfg: Config{RegistryURL: "127.0.0.1:5000", Repo: "a/b"}, wantRef: "127.0.0.1:5000/a/b", wantHTTP: true},
		{name: "localhost is plain HTTP", cfg: Config{RegistryURL: "localhost:5000", Repo: "a"}, wantRef: "localhost:5000/a", wantHTTP: true},
		{name: "empty registry", cfg: Config{Repo: "a"}, wantErr: "registry URL is empty"},
		{name: "empty repo", cfg: Config{RegistryURL: "ghcr.io"}, wantErr: "new registry source ghcr.io: repository is empty"},
		{name: "bad registry", cfg: Config{RegistryURL: "gh cr.io", Repo: "a"}, wantErr: `registry "gh cr.io"`},
		{name: "registry with a path", cfg: Config{RegistryURL: "ghcr.io/lsst", Repo: "a"}, wantErr: `registry "ghcr.io/lsst"`},
		{name: "upper-case repo", cfg: Config{RegistryURL: "ghcr.io", Repo: "LSST/Lab"}, wantErr: `repository "LSST/Lab" in registry "ghcr.io"`},
		{name: "repo with a tag", cfg: Config{RegistryURL: "ghcr.io", Repo: "a/b:latest"}, wantErr: `repository "a/b:latest"`},
		{name: "negative parallelism", cfg: Config{RegistryURL: "ghcr.io", Repo: "a", Parallelism: -1}, wantErr: "parallelism -1"},
		{name: "negative page size", cfg: Config{RegistryURL: "ghcr.io", Repo: "a", PageSize: -5}, wantErr: "page size -5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := New(tt.cfg)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantRef, l.Repository())
			require.Equal(t, tt.wantHTTP, l.repo.Scheme() == "http")
			require.Zero(t, l.Calls(), "New makes no request")
		})
	}
}

func TestResolveDigestsRejectsInvalidTagWithoutRequests(t *testing.T) {
	t.Parallel()
	l, err := New(Config{RegistryURL: "127.0.0.1:1", Repo: "a"})
	require.NoError(t, err)
	_, err = l.ResolveDigests(t.Context(), []string{"ok", "bad tag"})
	require.ErrorContains(t, err, `resolve digest of 127.0.0.1:1/a:bad tag: invalid tag`)
	require.Zero(t, l.Calls())
}

func TestListTagsPaginates(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const repo = "lsstsqre/sciplat-lab"
	want := make([]string, 45)
	for i := range want {
		want[i] = fmt.Sprintf("w_2024_%02d", i)
	}
	digest := pushWithTags(t, reg.Addr, repo, want, nil)
	addr := paginatingProxy(t, reg.Addr)

	l, err := New(Config{RegistryURL: addr, Repo: repo, PageSize: 20})
	require.NoError(t, err)
	images, err := l.ListImages(ctx)
	require.NoError(t, err)
	got := make([]string, len(images))
	for i, im := range images {
		require.Empty(t, im.Digest, "ListImages resolves no digest")
		require.Equal(t, im.Tag(), im.Name, "a listed image is named by its tag")
		got[i] = im.Tag()
	}
	slices.Sort(got)
	require.Equal(t, want, got)
	require.Equal(t, 3, l.counter.tagPages(), "45 tags in pages of 20")
	require.Zero(t, l.counter.calls(http.MethodHead))

	// The default page size lists them in one page.
	l, err = New(Config{RegistryURL: addr, Repo: repo})
	require.NoError(t, err)
	images, err = l.ListImages(ctx)
	require.NoError(t, err)
	require.Len(t, images, len(want))
	require.Equal(t, 1, l.counter.tagPages())

	// ListImages output feeds the tag policy directly.
	images[0].Digest = digest
	require.NotEmpty(t, rubintag.Policy{NumWeeklies: 2}.Select(images))
}

func TestResolveDigests(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const repo = "sciplat-lab"
	a := pushWithTags(t, reg.Addr, repo, []string{"recommended", "w_2024_10", "w_2024_09"}, nil)
	b := pushWithTags(t, reg.Addr, repo, []string{"w_2024_11", "latest_weekly"}, nil)
	var others []string
	for i := range 20 {
		others = append(others, fmt.Sprintf("d_2024_01_%02d", i))
	}
	pushWithTags(t, reg.Addr, repo, others, nil)

	l, err := New(Config{RegistryURL: reg.Addr, Repo: repo, Parallelism: 3})
	require.NoError(t, err)
	want := map[string]string{"recommended": a, "w_2024_10": a, "w_2024_11": b, "latest_weekly": b}
	tags := []string{"recommended", "w_2024_10", "w_2024_11", "latest_weekly", "never_pushed", "w_2024_10"}
	got, err := l.ResolveDigests(ctx, tags)
	require.NoError(t, err)
	require.Equal(t, want, got, "a missing tag is left out")
	require.Equal(t, 5, l.counter.calls(http.MethodHead), "only the requested tags, once each")
	require.LessOrEqual(t, l.counter.maxInFlight(), 3, "Parallelism bounds the lookups")

	// With the ping done, a second round costs exactly one request per tag.
	before := l.Calls()
	all := append(slices.Clone(others), "recommended")
	got, err = l.ResolveDigests(ctx, all)
	require.NoError(t, err)
	require.Len(t, got, len(all))
	require.Equal(t, len(all), l.Calls()-before)
	require.LessOrEqual(t, l.counter.maxInFlight(), 3)

	got, err = l.ResolveDigests(ctx, nil)
	require.NoError(t, err)
	require.Empty(t, got)
}

// TestSize reads an image's size (config plus layers) from its manifest once per digest, and
// a multi-platform index's linux/amd64 image.
func TestSize(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	img, err := random.Image(imageSize, 3)
	require.NoError(t, err)
	m, err := img.Manifest()
	require.NoError(t, err)
	want := m.Config.Size
	for _, l := range m.Layers {
		want += l.Size
	}
	ref, err := name.NewTag(reg.Addr+"/sized:w_2024_01", name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img, remote.WithContext(ctx)))
	d, err := img.Digest()
	require.NoError(t, err)

	arm, err := random.Image(imageSize, 1)
	require.NoError(t, err)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	iref, err := name.NewTag(reg.Addr+"/sized:multi", name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.WriteIndex(iref, idx, remote.WithContext(ctx)))
	id, err := idx.Digest()
	require.NoError(t, err)

	l, err := New(Config{RegistryURL: reg.Addr, Repo: "sized"})
	require.NoError(t, err)
	got, err := l.Size(ctx, d.String())
	require.NoError(t, err)
	require.EqualValues(t, want, got)
	calls := l.Calls()
	got, err = l.Size(ctx, d.String())
	require.NoError(t, err)
	require.EqualValues(t, want, got)
	require.Equal(t, calls, l.Calls(), "a digest's size is read once")

	got, err = l.Size(ctx, id.String())
	require.NoError(t, err)
	require.EqualValues(t, want, got, "the index's amd64 image")

	_, err = l.Size(ctx, "sha256:"+strings.Repeat("0", 64))
	require.ErrorContains(t, err, "size of "+reg.Addr+"/sized@sha256:000")
}

func TestResolveDigestsVanishedTag(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const repo = "lab"
	keep := pushWithTags(t, reg.Addr, repo, []string{"w_2024_01"}, nil)
	gone := pushWithTags(t, reg.Addr, repo, []string{"w_2024_02"}, nil)

	l, err := New(Config{RegistryURL: reg.Addr, Repo: repo})
	require.NoError(t, err)
	images, err := l.ListImages(ctx)
	require.NoError(t, err)
	base := image.MustParseRef(reg.Addr + "/" + repo)
	require.ElementsMatch(t, []image.Image{{Ref: base.WithTag("w_2024_01"), Name: "w_2024_01"}, {Ref: base.WithTag("w_2024_02"), Name: "w_2024_02"}}, images)

	// The tag vanishes between listing and resolving.
	ref, err := name.NewDigest(reg.Addr+"/"+repo+"@"+gone, name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.Delete(ref, remote.WithContext(ctx)))

	got, err := l.ResolveDigests(ctx, []string{"w_2024_01", "w_2024_02"})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"w_2024_01": keep}, got)
}

func TestUnknownRepository(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	pushWithTags(t, reg.Addr, "exists", []string{"v1"}, nil)

	l, err := New(Config{RegistryURL: reg.Addr, Repo: "no/such-repo"})
	require.NoError(t, err)
	_, err = l.ListImages(ctx)
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorContains(t, err, "list tags of "+reg.Addr+"/no/such-repo: ")
	t.Log(err)

	// A HEAD on an unknown repository is a 404 too: nothing to resolve.
	got, err := l.ResolveDigests(ctx, []string{"v1"})
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestRegistryDown(t *testing.T) {
	t.Parallel()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	addr := reg.Addr
	require.NoError(t, reg.Close())

	l, err := New(Config{RegistryURL: addr, Repo: "a"})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // go-containerregistry retries refused connections; do not wait for its backoff
	_, err = l.ListImages(ctx)
	require.ErrorContains(t, err, "list tags of "+addr+"/a: ")
	_, err = l.ResolveDigests(ctx, []string{"v1"})
	require.ErrorContains(t, err, "resolve digest of "+addr+"/a:v1: ")
}

func TestAuthFromDockerConfig(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const user, pass = "rubin", "pa55:word-s3cret"
	reg := lab.NewRegistry(t, lab.RegistryOptions{Username: user, Password: pass})
	const repo = "lsstsqre/sciplat-lab"
	digest := pushWithTags(t, reg.Addr, repo, []string{"recommended", "w_2024_01"}, &lab.Basic{Username: user, Password: pass})

	load := func(t *testing.T, user, pass string) *DockerConfig {
		path := filepath.Join(t.TempDir(), ".dockerconfigjson")
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		body := fmt.Sprintf(`{"auths": {"ghcr.io": {"auth": "Zm9vOmJhcg=="}, "http://%s/v2/": {"auth": %q}}}`, reg.Addr, auth)
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		dc, err := LoadDockerConfig(path, nil)
		require.NoError(t, err)
		return dc
	}

	t.Run("right credentials", func(t *testing.T) {
		t.Parallel()
		l, err := New(Config{RegistryURL: reg.Addr, Repo: repo, Auth: load(t, user, pass)})
		require.NoError(t, err)
		images, err := l.ListImages(ctx)
		require.NoError(t, err)
		require.Len(t, images, 2)
		got, err := l.ResolveDigests(ctx, []string{"recommended", "w_2024_01"})
		require.NoError(t, err)
		require.Equal(t, map[string]string{"recommended": digest, "w_2024_01": digest}, got)
	})

	const wrong = "not-the-Password"
	secrets := []string{wrong, base64.StdEncoding.EncodeToString([]byte(user + ":" + wrong))}
	for _, tt := range []struct {
		name string
		auth authn.Keychain
	}{
		{name: "wrong password", auth: load(t, user, wrong)},
		{name: "anonymous", auth: nil},
		{name: "no entry for this registry", auth: mustParse(t, `{"auths": {"ghcr.io": {"username": "u", "password": "`+wrong+`"}}}`)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := New(Config{RegistryURL: reg.Addr, Repo: repo, Auth: tt.auth})
			require.NoError(t, err)
			_, err = l.ListImages(ctx)
			require.ErrorIs(t, err, ErrUnauthorized)
			require.ErrorContains(t, err, "list tags of "+reg.Addr+"/"+repo+": ")
			t.Log(err)
			requireNoSecret(t, err, secrets)

			_, err = l.ResolveDigests(ctx, []string{"w_2024_01"})
			require.ErrorIs(t, err, ErrUnauthorized)
			require.ErrorContains(t, err, "resolve digest of "+reg.Addr+"/"+repo+":w_2024_01: ")
			requireNoSecret(t, err, secrets)
		})
	}
}

// TestMultiArchDigestMatchesContainerd checks the decision that a multi-platform tag resolves to
// its index digest, and that containerd's CRI records that same digest in repo_digests after a
// pull by tag.
func TestMultiArchDigestMatchesContainerd(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const repo = "multi/lab"
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	var platformDigests []string
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(imageSize, 1)
		require.NoError(t, err)
		cf, err := img.ConfigFile()
		require.NoError(t, err)
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		img, err = mutate.ConfigFile(img, cf)
		require.NoError(t, err)
		d, err := img.Digest()
		require.NoError(t, err)
		platformDigests = append(platformDigests, d.String())
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}},
		})
	}
	indexDigest, err := idx.Digest()
	require.NoError(t, err)
	ref, err := name.NewTag(reg.Addr+"/"+repo+":w_2024_05", name.Insecure)
	require.NoError(t, err)
	require.NoError(t, remote.WriteIndex(ref, idx, remote.WithContext(ctx)))

	l, err := New(Config{RegistryURL: reg.Addr, Repo: repo})
	require.NoError(t, err)
	got, err := l.ResolveDigests(ctx, []string{"w_2024_05"})
	require.NoError(t, err)
	require.Equal(t, indexDigest.String(), got["w_2024_05"])
	require.NotContains(t, platformDigests, got["w_2024_05"])

	// containerd, pulling by tag, records the index digest.
	c := lab.NewContainerd(t, lab.ContainerdOptions{Mirrors: map[string]string{"registry.test": reg.Addr}})
	conn, err := grpc.NewClient(c.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	images := runtimeapi.NewImageServiceClient(conn)
	image := "registry.test/" + repo + ":w_2024_05"
	_, err = images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image}})
	require.NoError(t, err)
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: image}})
	require.NoError(t, err)
	require.NotNil(t, st.Image)
	require.Equal(t, []string{"registry.test/" + repo + "@" + indexDigest.String()}, st.Image.RepoDigests)
}

// pushWithTags pushes one small random image to addr/repo under every tag and returns its
// digest. Tags are added one at a time: docker-registry answers concurrent tag writes to one
// repository with errors that go-containerregistry retries after a 1 s backoff.
func pushWithTags(t *testing.T, addr, repo string, tags []string, auth *lab.Basic) string {
	t.Helper()
	ctx := t.Context()
	digest, err := lab.PushRandomImage(ctx, addr, repo, tags[:1], imageSize, 1, auth)
	require.NoError(t, err)
	for _, tag := range tags[1:] {
		require.NoError(t, lab.Tag(ctx, addr, repo, digest, tag, auth))
	}
	return digest
}

// paginatingProxy serves docker-registry at backend through a reverse proxy that paginates
// the tag list as the distribution spec describes (the n and last parameters, a Link header to
// the next page), which docker-registry 2.8 does not do. It returns the proxy's address.
func paginatingProxy(t *testing.T, backend string) string {
	t.Helper()
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: backend})
			r.Out.URL.RawQuery = "" // docker-registry ignores n and last anyway
		},
		ModifyResponse: func(resp *http.Response) error {
			req := resp.Request
			if req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, "/tags/list") || resp.StatusCode != http.StatusOK {
				return nil
			}
			var list struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
				return err
			}
			_ = resp.Body.Close()
			in := resp.Request.Header.Get("X-Original-Query")
			q, err := url.ParseQuery(in)
			if err != nil {
				return err
			}
			slices.Sort(list.Tags)
			if last := q.Get("last"); last != "" {
				i, _ := slices.BinarySearch(list.Tags, last)
				for i < len(list.Tags) && list.Tags[i] <= last {
					i++
				}
				list.Tags = list.Tags[i:]
			}
			if n, err := strconv.Atoi(q.Get("n")); err == nil && n > 0 && n < len(list.Tags) {
				list.Tags = list.Tags[:n]
				next := url.Values{"n": {strconv.Itoa(n)}, "last": {list.Tags[n-1]}}
				resp.Header.Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, req.URL.Path, next.Encode()))
			}
			body, err := json.Marshal(list)
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
			return nil
		},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Keep the client's query for ModifyResponse; Rewrite drops it from the forwarded request.
		r.Header.Set("X-Original-Query", r.URL.RawQuery)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// mustParse loads a DockerConfig from body, written to a temporary file.
func mustParse(t *testing.T, body string) *DockerConfig {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
	dc, err := LoadDockerConfig(path, nil)
	require.NoError(t, err)
	return dc
}

func requireNoSecret(t *testing.T, err error, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		require.False(t, strings.Contains(err.Error(), s), "error leaks a secret: %v", err)
		require.False(t, strings.Contains(fmt.Sprintf("%+v", err), s), "error leaks a secret: %+v", err)
	}
}
