package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNormalizeRef(t *testing.T) {
	t.Parallel()
	digest := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, in, want, err string
	}{
		{name: "official image", in: "busybox", want: "docker.io/library/busybox:latest"},
		{name: "hub user image", in: "lsstsqre/sciplat-lab:w_2022_40", want: "docker.io/lsstsqre/sciplat-lab:w_2022_40"},
		{name: "index.docker.io", in: "index.docker.io/lsstsqre/x:t", want: "docker.io/lsstsqre/x:t"},
		{name: "registry.hub.docker.com kept", in: "registry.hub.docker.com/lsstsqre/x:t", want: "registry.hub.docker.com/lsstsqre/x:t"},
		{name: "gar", in: "us-central1-docker.pkg.dev/p/r/img:Recommended_C0027", want: "us-central1-docker.pkg.dev/p/r/img:Recommended_C0027"},
		{name: "host with port", in: "127.0.0.1:5000/a/b", want: "127.0.0.1:5000/a/b:latest"},
		{name: "localhost", in: "localhost/a:1", want: "localhost/a:1"},
		{name: "digest", in: "ghcr.io/a/b@" + digest, want: "ghcr.io/a/b@" + digest},
		{name: "tag and digest", in: "ghcr.io/a/b:t@" + digest, want: "ghcr.io/a/b:t@" + digest},
		{name: "empty", in: "", err: "empty"},
		{name: "space", in: "a b", err: "invalid characters"},
		{name: "upper repo", in: "ghcr.io/A/b:t", err: "invalid characters"},
		{name: "empty tag", in: "ghcr.io/a/b:", err: "empty tag"},
		{name: "bad digest", in: "ghcr.io/a/b@sha256:xyz", err: "invalid digest"},
		{name: "trailing slash", in: "ghcr.io/a/", err: "invalid repository"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := NormalizeRef(tt.in)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestBackoffDoublesWithJitterUpToMax(t *testing.T) {
	t.Parallel()
	initial, maxDelay := 10*time.Second, 5*time.Minute
	for failures, ceiling := range map[int]time.Duration{1: 10 * time.Second, 2: 20 * time.Second, 3: 40 * time.Second, 6: 5 * time.Minute, 60: 5 * time.Minute} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := backoff(initial, maxDelay, failures)
			require.GreaterOrEqual(t, d, ceiling/2, "failures=%d", failures)
			require.LessOrEqual(t, d, ceiling, "failures=%d", failures)
			seen[d] = true
		}
		require.Greater(t, len(seen), 10, "failures=%d: no jitter", failures)
	}
}
