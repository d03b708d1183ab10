package cri_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/cri/critest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// TestConformanceContainerd runs the conformance suite against every containerd the lab runs
// (Debian's 1.6, and 1.7 and 2.x built from source: lab.ContainerdVersions) pulling from a real
// docker-registry on loopback (plain HTTP, no containerd config needed), anonymously and with
// htpasswd auth.
func TestConformanceContainerd(t *testing.T) {
	lab.Require(t)
	t.Parallel()
	tests := []struct {
		name string
		auth *cri.Auth
	}{
		{name: "anonymous"},
		{name: "basic auth", auth: &cri.Auth{Username: "puller", Password: "pa55-conformance"}},
	}
	lab.OnEveryContainerd(t, func(t *testing.T, v lab.ContainerdVersion) {
		t.Parallel()
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				var regOpts lab.RegistryOptions
				var push *lab.Basic
				if tt.auth != nil {
					regOpts.Username, regOpts.Password = tt.auth.Username, tt.auth.Password
					push = &lab.Basic{Username: tt.auth.Username, Password: tt.auth.Password}
				}
				ctd := lab.NewContainerd(t, lab.ContainerdOptions{Version: v})
				reg := lab.NewRegistry(t, regOpts)

				const repo = "cm/conformance"
				digest, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"v1", "alias"}, 2<<20, 2, push)
				require.NoError(t, err)

				c, err := cri.New(t.Context(), ctd.Endpoint(), cri.Options{})
				require.NoError(t, err)
				t.Cleanup(func() { _ = c.Close() })

				name := reg.Addr + "/" + repo
				critest.Conformance(t, c, critest.Fixture{
					Ref:        name + ":v1",
					Digest:     digest,
					OtherTag:   name + ":alias",
					MissingRef: name + ":missing",
					Auth:       tt.auth,
				})
			})
		}
	})
}

// TestContainerdRestart checks that one Client keeps working across a containerd crash and
// restart on the same socket.
func TestContainerdRestart(t *testing.T) {
	lab.Require(t)
	t.Parallel()
	ctd := lab.NewContainerd(t, lab.ContainerdOptions{})
	c, err := cri.New(t.Context(), ctd.Endpoint(), cri.Options{CallTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })

	require.NoError(t, ctd.Kill())
	_, err = c.ListImages(t.Context())
	require.ErrorIs(t, err, cri.ErrUnavailable)

	require.NoError(t, ctd.Restart(t.Context()))
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		v, err := c.Version(t.Context())
		if assert.NoError(ct, err) {
			assert.Equal(ct, "v1", v.RuntimeAPIVersion)
		}
	}, 10*time.Second, 50*time.Millisecond, "the client reconnects after a containerd restart")
}
