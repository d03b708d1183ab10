package image

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseRef(t *testing.T) {
	t.Parallel()
	digest := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, in, want, repo, tag, digest, err string
	}{
		{name: "official image", in: "ubuntu", want: "docker.io/library/ubuntu:latest", repo: "docker.io/library/ubuntu", tag: "latest"},
		{name: "hub user image", in: "lsstsqre/sciplat-lab:recommended", want: "docker.io/lsstsqre/sciplat-lab:recommended", repo: "docker.io/lsstsqre/sciplat-lab", tag: "recommended"},
		{name: "docker.io", in: "docker.io/library/busybox:1", want: "docker.io/library/busybox:1", repo: "docker.io/library/busybox", tag: "1"},
		{name: "index.docker.io", in: "index.docker.io/lsstsqre/x:t", want: "docker.io/lsstsqre/x:t", repo: "docker.io/lsstsqre/x", tag: "t"},
		{name: "registry.hub.docker.com kept", in: "registry.hub.docker.com/lsstsqre/x:t", want: "registry.hub.docker.com/lsstsqre/x:t", repo: "registry.hub.docker.com/lsstsqre/x", tag: "t"},
		{name: "gar, upper-case tag", in: "us-central1-docker.pkg.dev/p/r/img:Recommended_C0027", want: "us-central1-docker.pkg.dev/p/r/img:Recommended_C0027", repo: "us-central1-docker.pkg.dev/p/r/img", tag: "Recommended_C0027"},
		{name: "host with port, no tag", in: "127.0.0.1:5000/a/b", want: "127.0.0.1:5000/a/b:latest", repo: "127.0.0.1:5000/a/b", tag: "latest"},
		{name: "host with port and tag", in: "127.0.0.1:5000/a/b:w_2024_01", want: "127.0.0.1:5000/a/b:w_2024_01", repo: "127.0.0.1:5000/a/b", tag: "w_2024_01"},
		{name: "localhost", in: "localhost/a:1", want: "localhost/a:1", repo: "localhost/a", tag: "1"},
		{name: "digest only", in: "ghcr.io/a/b@" + digest, want: "ghcr.io/a/b@" + digest, repo: "ghcr.io/a/b", digest: digest},
		{name: "tag and digest", in: "ghcr.io/a/b:t@" + digest, want: "ghcr.io/a/b:t@" + digest, repo: "ghcr.io/a/b", tag: "t", digest: digest},
		{name: "empty", in: "", err: "empty"},
		{name: "space", in: "a b", err: "white space"},
		{name: "upper-case repository", in: "ghcr.io/A/b:t", err: "repository"},
		{name: "empty tag", in: "ghcr.io/a/b:", err: "tag"},
		{name: "bad digest", in: "ghcr.io/a/b@sha256:xyz", err: "invalid"},
		{name: "trailing slash", in: "ghcr.io/a/", err: "repository"},
		{name: "scheme", in: "https://ghcr.io/a/b", err: "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRef(tt.in)
			if tt.err != "" {
				require.ErrorIs(t, err, ErrInvalidRef)
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got.String())
			require.Equal(t, tt.repo, got.Repository())
			require.Equal(t, tt.tag, got.Tag())
			require.Equal(t, tt.digest, got.Digest())
			again, err := ParseRef(got.String())
			require.NoError(t, err)
			require.Equal(t, got, again, "normalising is idempotent")
		})
	}
}

func TestRefDerivations(t *testing.T) {
	t.Parallel()
	r := MustParseRef("lsstsqre/sciplat-lab:recommended")
	require.Equal(t, "docker.io/lsstsqre/sciplat-lab:w_2024_01", r.WithTag("w_2024_01").String())
	require.Equal(t, "docker.io/lsstsqre/sciplat-lab@sha256:ab", r.WithDigest("sha256:ab").String())
	require.Equal(t, "docker.io", r.Registry())
	require.Equal(t, "lsstsqre/sciplat-lab", r.Path())
	p := MustParseRef("127.0.0.1:5000/a/b/c:t")
	require.Equal(t, "127.0.0.1:5000", p.Registry())
	require.Equal(t, "a/b/c", p.Path())
	require.True(t, Ref{}.IsZero())
	require.False(t, r.IsZero())
}

func TestImageJSONRoundTrip(t *testing.T) {
	t.Parallel()
	in := Image{Ref: MustParseRef("ghcr.io/a/b:t"), Digest: "sha256:aa", Name: "T", Size: 42, Priority: 3}
	b, err := json.Marshal(in)
	require.NoError(t, err)
	require.JSONEq(t, `{"image_url":"ghcr.io/a/b:t","image_hash":"sha256:aa","name":"T","size":42,"priority":3}`, string(b))
	var out Image
	require.NoError(t, json.Unmarshal(b, &out))
	require.Equal(t, in, out)
	// A reference is normalised as it is decoded.
	require.NoError(t, json.Unmarshal([]byte(`{"image_url":"busybox"}`), &out))
	require.Equal(t, "docker.io/library/busybox:latest", out.Ref.String())
	require.Error(t, json.Unmarshal([]byte(`{"image_url":"Bad Ref"}`), &out))
}

func TestWantDigest(t *testing.T) {
	t.Parallel()
	d := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	require.Equal(t, "sha256:x", Image{Ref: MustParseRef("a/b:c"), Digest: "sha256:x"}.WantDigest())
	require.Equal(t, d, Image{Ref: MustParseRef("a/b@" + d)}.WantDigest())
	require.Equal(t, "", Image{Ref: MustParseRef("a/b:c")}.WantDigest())
}

func TestSplitDigestRef(t *testing.T) {
	t.Parallel()
	repo, d, ok := SplitDigestRef("docker.io/library/busybox@sha256:ab")
	require.True(t, ok)
	require.Equal(t, "docker.io/library/busybox", repo)
	require.Equal(t, "sha256:ab", d)
	_, _, ok = SplitDigestRef("docker.io/library/busybox:1")
	require.False(t, ok)
	_, _, ok = SplitDigestRef("docker.io/library/busybox@")
	require.False(t, ok)
}

func TestSplitTagRef(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][2]string{
		"docker.io/library/busybox:1":  {"docker.io/library/busybox", "1"},
		"127.0.0.1:5000/a/b:w_2024_01": {"127.0.0.1:5000/a/b", "w_2024_01"},
		"127.0.0.1:5000/a/b":           {"127.0.0.1:5000/a/b", ""},
		"docker.io/a/b@sha256:00":      {"docker.io/a/b@sha256:00", ""},
	} {
		repo, tag := SplitTagRef(in)
		require.Equal(t, want, [2]string{repo, tag}, in)
		if tag != "" {
			r := MustParseRef(in)
			require.Equal(t, r.Repository(), repo, "agrees with ParseRef")
			require.Equal(t, r.Tag(), tag, "agrees with ParseRef")
		}
	}
}

func TestFormatSize(t *testing.T) {
	for b, want := range map[uint64]string{
		0:             "0 B",
		1023:          "1023 B",
		1024:          "1.0 KiB",
		24 << 20:      "24.0 MiB",
		4_294_967_296: "4.0 GiB",
		1536 << 30:    "1.5 TiB",
		^uint64(0):    "16.0 EiB",
	} {
		if got := FormatSize(b); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", b, got, want)
		}
	}
}
