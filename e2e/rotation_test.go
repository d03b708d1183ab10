package e2e

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/registry"
)

// TestRotatedPasswordListsAndPullsWithoutRestart rotates a registry password the way a
// Kubernetes Secret rotation does: the registry's htpasswd changes, then the Secret volume's
// "..data" symlink is swapped to a dockerconfig with the new password. The running agent
// (standalone, RubinRepoMan source, pull_auth: dockerconfig) must list the registry and pull
// a weekly pushed after the rotation, without a restart, and never print either password.
func TestRotatedPasswordListsAndPullsWithoutRestart(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	const user, oldPass, newPass = "robot", "old-pass-3f9a1c", "new-pass-c41e7b"
	reg := lab.NewRegistry(t, lab.RegistryOptions{Username: user, Password: oldPass})
	const repo = "lsst/sciplat-lab"
	base := reg.Addr + "/" + repo
	w1, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_01"}, 2*mb, 1, &lab.Basic{Username: user, Password: oldPass})
	require.NoError(t, err)

	secretDir := filepath.Join(n.dir, "secret")
	require.NoError(t, os.Mkdir(secretDir, 0o755))
	dockerconfig := filepath.Join(secretDir, ".dockerconfigjson")
	mountSecret := func(n int, pass string) {
		t.Helper()
		require.NoError(t, lab.MountSecret(secretDir, n, map[string][]byte{".dockerconfigjson": lab.DockerconfigJSON(reg.Addr, user, pass)}))
	}
	mountSecret(1, oldPass)
	require.NoError(t, os.Symlink("..data/.dockerconfigjson", dockerconfig))

	cfg := lab.AgentConfig(n.dir, n.cd.Endpoint())
	cfg.RefreshInterval = config.Duration{Duration: 10 * time.Second}
	cfg.Repomen = []config.Repoman{rubinRepoMan(reg.Addr, repo)}
	fastRetries(&cfg)
	cfg.Agent.ResyncInterval = config.Duration{Duration: time.Second}
	cfg.Agent.PullAuth, cfg.Agent.Dockerconfig = config.PullAuthDockerconfig, dockerconfig
	p := startAgent(t, n.dir, cfg)
	httpAddr := p.HTTPAddr()
	pid := p.Pid()

	available := func(ref, digest string) bool {
		var v struct {
			Images []statusImage `json:"images"`
		}
		if _, ok := getStatus(t, httpAddr, "/cachemachine/jupyter/available", &v); !ok {
			return false
		}
		return slices.ContainsFunc(v.Images, func(img statusImage) bool {
			return img.ImageURL == ref && img.ImageHash == digest
		})
	}
	eventually(t, 60*time.Second, "the first weekly on the node and available", func() bool {
		return tagDigest(t, n.cri, base+":w_2024_01") == w1 && available(base+":w_2024_01", w1)
	})

	// Rotate: the registry takes only the new password, then the Secret follows.
	require.NoError(t, reg.SetPassword(user, newPass))
	eventually(t, 10*time.Second, "the registry to refuse the old password", func() bool {
		oldStatus, _ := reg.AuthStatus(t.Context(), user, oldPass)
		newStatus, _ := reg.AuthStatus(t.Context(), user, newPass)
		return oldStatus == http.StatusUnauthorized && newStatus == http.StatusOK
	})
	mountSecret(2, newPass)
	w2, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_02"}, 2*mb, 1, &lab.Basic{Username: user, Password: newPass})
	require.NoError(t, err)
	time.Sleep(registry.ReloadInterval) // the agent may have read the old file just now
	out, err := p.debug(t, "reconcile")
	require.NoError(t, err, out)

	// The reconcile's listing sees the new password; the periodic one (10 s) is the backstop.
	eventually(t, 60*time.Second, "the weekly pushed after the rotation listed, pulled and available", func() bool {
		return tagDigest(t, n.cri, base+":w_2024_02") == w2 && available(base+":w_2024_02", w2)
	})
	require.False(t, p.Exited(), "the agent was not restarted")
	require.Equal(t, pid, p.Pid())

	var raw map[string]any
	_, ok := getStatus(t, httpAddr, "/cachemachine/jupyter", &raw)
	require.True(t, ok)
	pulls, err := p.debug(t, "-o", "json", "pulls")
	require.NoError(t, err)
	p.stop(t)
	logs := p.Log()
	require.Contains(t, logs, "credentials reloaded", "the agent says it re-read the dockerconfig")
	for _, secret := range []string{oldPass, newPass, basicAuth(user, oldPass), basicAuth(user, newPass)} {
		require.NotContains(t, logs, secret)
		require.NotContains(t, fmt.Sprint(raw), secret)
		require.NotContains(t, pulls, secret)
	}
}

func basicAuth(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}
