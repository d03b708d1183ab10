package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
)

const mb = 1 << 20

func testAgentCachesDesiredImagesByTagAndDigest(t *testing.T, version lab.ContainerdVersion) {
	t.Parallel()
	n := newNodeOn(t, version)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	repo := reg.Addr + "/lsst/sciplat-lab"
	weekly, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/sciplat-lab", []string{"w_2024_01", "recommended"}, 4*mb, 2, nil)
	require.NoError(t, err)
	daily, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/sciplat-lab", []string{"d_2024_01_02"}, 2*mb, 1, nil)
	require.NoError(t, err)

	want := map[string]string{repo + ":recommended": weekly, repo + ":w_2024_01": weekly, repo + ":d_2024_01_02": daily}
	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(),
		[]string{repo + ":recommended", repo + ":w_2024_01", repo + ":d_2024_01_02"}, weekly, weekly, ""))
	eventually(t, 60*time.Second, "every desired tag on the node with its digest", func() bool {
		for ref, digest := range want {
			if tagDigest(t, n.cri, ref) != digest {
				return false
			}
		}
		return true
	})
	eventually(t, 10*time.Second, "the agent to report all three cached", func() bool {
		v, ok := p.pulls(t)
		return ok && len(v.Cached) == 3
	})

	out, err := p.debug(t, "node")
	require.NoError(t, err, out)
	require.Contains(t, out, "containerd")
	require.Contains(t, out, repo+":recommended")
	require.Contains(t, out, weekly[:19])

	out, err = p.debug(t, "desired")
	require.NoError(t, err, out)
	require.Contains(t, out, repo+":d_2024_01_02")
	require.Contains(t, out, "image 2")

	out, err = p.debug(t, "pulls")
	require.NoError(t, err, out)
	require.Regexp(t, `(?m)^`+repo+`:w_2024_01\s+cached`, out)
}

func TestAgentBacksOffWhileRegistryIsDownThenRecovers(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_02"}, 2*mb, 1, nil)
	require.NoError(t, err)
	ref := reg.Addr + "/lsst/lab:w_2024_02"
	require.NoError(t, reg.Stop())

	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), []string{ref}))
	eventually(t, 30*time.Second, "two failed attempts with a retry scheduled", func() bool {
		v, ok := p.pulls(t)
		return ok && len(v.Failed) == 1 && v.Failed[0].Attempts >= 2 && v.Failed[0].NextRetry.After(time.Now().Add(-time.Second))
	})
	v, _ := p.pulls(t)
	require.Contains(t, v.Failed[0].Error, "connection refused")
	require.Empty(t, v.Cached, "a failed pull is never reported as cached")
	out, err := p.debug(t, "pulls")
	require.NoError(t, err)
	require.Regexp(t, `failed\s+attempt \d+, retry in`, out)
	require.Equal(t, "", tagDigest(t, n.cri, ref))

	require.NoError(t, reg.Start(t.Context()))
	eventually(t, 30*time.Second, "the image once the registry is back", func() bool {
		return tagDigest(t, n.cri, ref) == digest
	})
	eventually(t, 10*time.Second, "the failure to clear", func() bool {
		v, ok := p.pulls(t)
		return ok && len(v.Failed) == 0 && len(v.Cached) == 1
	})
}

func testAgentFinishesAfterContainerdIsKilledMidPull(t *testing.T, version lab.ContainerdVersion) {
	t.Parallel()
	n := newNodeOn(t, version)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/big", []string{"r27_0_0"}, 400*mb, 4, nil)
	require.NoError(t, err)
	ref := reg.Addr + "/lsst/big:r27_0_0"

	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), []string{ref}))
	eventually(t, 30*time.Second, "the pull to start", func() bool {
		v, ok := p.pulls(t)
		return ok && len(v.Pulling) == 1
	})
	require.NoError(t, n.cd.Kill())
	time.Sleep(300 * time.Millisecond) // let the agent notice the runtime is gone
	require.NoError(t, n.cd.Restart(t.Context()))

	c := criClient(t, n.cd)
	eventually(t, 90*time.Second, "the image after the restart", func() bool {
		return tagDigest(t, c, ref) == digest
	})
	eventually(t, 10*time.Second, "the agent to report it cached", func() bool {
		v, ok := p.pulls(t)
		return ok && len(v.Cached) == 1
	})
}

func testAgentPullsAgainAnImageRemovedBehindItsBack(t *testing.T, version lab.ContainerdVersion) {
	t.Parallel()
	n := newNodeOn(t, version)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_03"}, 2*mb, 1, nil)
	require.NoError(t, err)
	ref := reg.Addr + "/lsst/lab:w_2024_03"

	startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), []string{ref}))
	eventually(t, 30*time.Second, "the first pull", func() bool { return tagDigest(t, n.cri, ref) == digest })

	require.NoError(t, n.cri.RemoveImage(t.Context(), ref)) // what kubelet image GC does
	require.Equal(t, "", tagDigest(t, n.cri, ref))
	eventually(t, 30*time.Second, "the image to come back", func() bool { return tagDigest(t, n.cri, ref) == digest })
}

func testDiskGuardHoldsAPullThatWouldNotFit(t *testing.T, version lab.ContainerdVersion) {
	t.Parallel()
	n := newNodeOn(t, version)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	_, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_04"}, 2*mb, 1, nil)
	require.NoError(t, err)
	ref := reg.Addr + "/lsst/lab:w_2024_04"

	// No disk keeps 99.99 % free: every pull must be held.
	p, v := startHeld(t, n, ref, 99.99)
	require.Equal(t, ref, v.Held[0].Ref)
	require.Contains(t, v.Held[0].Reason, "insufficient disk")
	out, err := p.debug(t, "pulls")
	require.NoError(t, err)
	require.Regexp(t, `held\s+insufficient disk`, out)
	p.waitPasses(t, 3)
	require.Equal(t, "", tagDigest(t, n.cri, ref))
}

func TestWrongRegistryCredentialsGiveAClearErrorWithoutTheSecret(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	const user, password, wrong = "robot", "right-pass-7d1c", "wrong-pass-93ab"
	reg := lab.NewRegistry(t, lab.RegistryOptions{Username: user, Password: password})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/private", []string{"w_2024_05"}, 2*mb, 1, &lab.Basic{Username: user, Password: password})
	require.NoError(t, err)
	ref := reg.Addr + "/lsst/private:w_2024_05"

	writeDockerconfig := func(pass string) string {
		path := filepath.Join(n.dir, "dockerconfig-"+pass)
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		require.NoError(t, os.WriteFile(path, fmt.Appendf(nil, `{"auths": {%q: {"auth": %q}}}`, reg.Addr, auth), 0o600))
		return path
	}
	withCredentials := func(pass string) config.Config {
		cfg := standalone(n.dir, n.cd.Endpoint(), []string{ref})
		cfg.Agent.PullAuth, cfg.Agent.Dockerconfig = config.PullAuthDockerconfig, writeDockerconfig(pass)
		return cfg
	}
	p := startAgent(t, n.dir, withCredentials(wrong))
	eventually(t, 30*time.Second, "the pull to fail", func() bool {
		v, ok := p.pulls(t)
		return ok && len(v.Failed) == 1
	})
	v, _ := p.pulls(t)
	require.Contains(t, v.Failed[0].Error, "refused credentials")
	require.Contains(t, v.Failed[0].Error, ref)
	p.stop(t)
	for _, secret := range []string{wrong, base64.StdEncoding.EncodeToString([]byte(user + ":" + wrong))} {
		require.NotContains(t, p.Log(), secret)
		require.NotContains(t, v.Failed[0].Error, secret)
	}
	require.Equal(t, "", tagDigest(t, n.cri, ref))

	// The right credentials pull.
	p = startAgent(t, n.dir, withCredentials(password))
	eventually(t, 30*time.Second, "the pull with the right credentials", func() bool { return tagDigest(t, n.cri, ref) == digest })
	p.stop(t)
	require.NotContains(t, p.Log(), password)
}

func TestBadConfigExitsWithStatus2NamingTheField(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name, yaml, want string
		args             []string // after agent --config FILE
	}{
		{name: "unknown field", yaml: "agent:\n  max_paralel_pulls: 3\n", want: "agent.max_paralel_pulls"},
		{name: "bad duration", yaml: "agent:\n  pull_timeout: 10 minutes\n", want: "agent.pull_timeout"},
		{name: "negative count", yaml: "repomen:\n  - type: RubinRepoMan\n    repo: a/b\n    num_weeklies: -1\n", want: "repomen[0].num_weeklies"},
		{name: "harmful resync", yaml: "agent:\n  resync_interval: 1ns\n", want: "agent.resync_interval: must be between 1s and 1h0m0s, got 1ns"},
		{name: "harmful flag", yaml: "agent:\n  max_parallel_pulls: 2\n", want: "agent.max_parallel_pulls: must be between 1 and 16, got 500", args: []string{"--max-parallel-pulls", "500"}},
		{name: "bad image", yaml: "cluster:\n  enabled: false\nrepomen:\n  - type: SimpleRepoMan\n    images:\n      - image_url: 'not a ref'\n", want: "repomen[0].images[0].image_url"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".yaml")
			require.NoError(t, os.WriteFile(path, []byte(tt.yaml), 0o600))
			args := append([]string{"agent", "--config", path}, tt.args...)
			out, err := exec.Command(binary, args...).CombinedOutput()
			var exit *exec.ExitError
			require.ErrorAs(t, err, &exit, string(out))
			require.Equal(t, 2, exit.ExitCode(), string(out))
			require.Contains(t, string(out), path)
			require.Contains(t, string(out), tt.want)
		})
	}
}

func TestDebugAgainstAMissingSocketSaysWhereItLooked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nope.sock")
	out, err := exec.Command(binary, "debug", "--socket", path, "node").CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	require.Equal(t, 1, exit.ExitCode())
	require.Contains(t, string(out), path)
	require.Contains(t, string(out), "--socket")
}
