package e2e

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
)

const garHost = "us-central1-docker.pkg.dev"

// TestAgentListsArtifactRegistryAndPullsGARNames runs the binary standalone with a
// RubinRepoGar source served by the fake Artifact Registry, backed by the real registry's
// contents; containerd reaches the GAR host name through a hosts.toml redirect.
func TestAgentListsArtifactRegistryAndPullsGARNames(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const regRepo = "rubin/sciplat/sciplat-lab"
	weekly, err := lab.PushRandomImage(t.Context(), reg.Addr, regRepo, []string{"w_2024_10", "recommended"}, 2*mb, 1, nil)
	require.NoError(t, err)
	_, err = lab.PushRandomImage(t.Context(), reg.Addr, regRepo, []string{"w_2024_09"}, 2*mb, 1, nil)
	require.NoError(t, err)
	daily, err := lab.PushRandomImage(t.Context(), reg.Addr, regRepo, []string{"d_2024_03_05"}, 2*mb, 1, nil)
	require.NoError(t, err)
	fake := gartest.Start(t)
	require.NoError(t, fake.AddFromRegistry(t.Context(), reg.Addr, regRepo, "projects/rubin/locations/us-central1/repositories/sciplat", "sciplat-lab"))

	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cd := lab.NewContainerd(t, lab.ContainerdOptions{Mirrors: map[string]string{garHost: reg.Addr}})
	c := criClient(t, cd)
	cfg := lab.AgentConfig(dir, cd.Endpoint())
	cfg.RefreshInterval = config.Duration{Duration: time.Minute}
	src := config.DefaultRepoman(config.TypeRubinRepoGar)
	src.ProjectID, src.Location, src.GARRepository, src.GARImage = "rubin", "us-central1", "sciplat", "sciplat-lab"
	src.NumWeeklies, src.NumDailies = 1, 1
	src.Endpoint, src.InsecureEndpoint = fake.Addr(), true
	cfg.Repomen = []config.Repoman{src}
	fastRetries(&cfg)
	p := startAgent(t, dir, cfg)

	base := garHost + "/rubin/sciplat/sciplat-lab"
	want := map[string]string{base + ":recommended": weekly, base + ":w_2024_10": weekly, base + ":d_2024_03_05": daily}
	eventually(t, 60*time.Second, "the policy's selection on the node under GAR names", func() bool {
		for ref, d := range want {
			if tagDigest(t, c, ref) != d {
				return false
			}
		}
		return true
	})
	require.Equal(t, "", tagDigest(t, c, base+":w_2024_09"), "num_weeklies: 1 leaves the older weekly out")
	out, err := p.debug(t, "desired")
	require.NoError(t, err)
	require.Contains(t, out, "Recommended (Weekly 2024_10)")
	require.Contains(t, out, "Daily 2024_03_05")
}

// TestGoogleTokenPullsThroughTheRedirect checks pull_auth: google end to end: the agent
// passes an access token as oauth2accesstoken to containerd, which sends it to a registry
// behind htpasswd reached through the GAR host redirect.
func TestGoogleTokenPullsThroughTheRedirect(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	const token = "ya29.test-token-5e1f"
	reg := lab.NewRegistry(t, lab.RegistryOptions{Username: gar.TokenUsername, Password: token})
	auth := &lab.Basic{Username: gar.TokenUsername, Password: token}
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "rubin/sciplat/sciplat-lab", []string{"w_2024_11"}, 2*mb, 1, auth)
	require.NoError(t, err)
	cd := lab.NewContainerd(t, lab.ContainerdOptions{Mirrors: map[string]string{garHost: reg.Addr}})
	c := criClient(t, cd)
	ref := garHost + "/rubin/sciplat/sciplat-lab:w_2024_11"

	pull := func(ts oauth2.TokenSource) agent.State {
		var creds agent.Credentials
		if ts != nil {
			creds = gar.NewTokenCredentials(ts)
		}
		a, err := agent.New(agent.Config{Node: "n", BackoffInitial: time.Hour}, c, creds, slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		a.SetDesired(agent.Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digest}}})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		defer func() { cancel(); require.NoError(t, <-done) }()
		eventually(t, 30*time.Second, "the pull to end", func() bool {
			st := a.State()
			return len(st.Cached) == 1 || len(st.Failed) == 1
		})
		return a.State()
	}

	st := pull(nil)
	require.Len(t, st.Failed, 1, "without the token the registry refuses")
	require.Contains(t, st.Failed[0].Error, "refused credentials")

	st = pull(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "ya29.wrong", Expiry: time.Now().Add(time.Hour)}))
	require.Len(t, st.Failed, 1)
	require.NotContains(t, st.Failed[0].Error, "ya29.wrong")

	st = pull(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: token, Expiry: time.Now().Add(time.Hour)}))
	require.Equal(t, map[string]string{ref: digest}, st.Cached)
	require.Equal(t, digest, tagDigest(t, c, ref))
}
