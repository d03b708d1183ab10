package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/registry"
)

// rotationWithin bounds the time from the Secret swap to the weekly pushed after the
// rotation cached and available (a reconcile is asked for; the 10 s refresh is the backstop).
const rotationWithin = time.Minute

func rotation() group {
	row := newCheck("credential rotation: htpasswd docker-registry, Secret volume ..data swap",
		fmt.Sprintf("a weekly pushed after the rotation is listed, pulled and available within %s of the swap, without a restart; no password in logs, status or debug", secs(rotationWithin)))
	return group{rows: []*check{row}, run: func(ctx context.Context, e *env) error {
		const user, oldPass, newPass = "robot", "old-pass-5b2e91", "new-pass-0c7d44"
		reg, err := lab.StartRegistry(ctx, lab.RegistryOptions{Username: user, Password: oldPass})
		if err != nil {
			return err
		}
		defer reg.Close()
		const repo = "faults/private"
		push := func(tag, pass string) (pushed, error) {
			d, err := lab.PushRandomImage(ctx, reg.Addr, repo, []string{tag}, 2*mib, 1, &lab.Basic{Username: user, Password: pass})
			return pushed{ref: reg.Addr + "/" + repo + ":" + tag, digest: d}, err
		}
		w1, err := push("w_2024_01", oldPass)
		if err != nil {
			return err
		}
		n, err := e.newNode(ctx, "rot", "")
		if err != nil {
			return err
		}
		defer n.close()
		secret := filepath.Join(n.dir, "secret")
		mount := func(version int, pass string) error {
			return lab.MountSecret(secret, version, map[string][]byte{".dockerconfigjson": lab.DockerconfigJSON(reg.Addr, user, pass)})
		}
		if err := os.MkdirAll(secret, 0o755); err != nil {
			return err
		}
		if err := mount(1, oldPass); err != nil {
			return err
		}
		if err := os.Symlink("..data/.dockerconfigjson", filepath.Join(secret, ".dockerconfigjson")); err != nil {
			return err
		}
		cfg := e.config(n, rubin(reg.Addr, repo))
		cfg.Agent.PullAuth, cfg.Agent.Dockerconfig = config.PullAuthDockerconfig, filepath.Join(secret, ".dockerconfigjson")
		if err := e.start(ctx, n, cfg); err != nil {
			return err
		}
		if err := waitFor(ctx, 90*time.Second, "the first weekly cached and available", func() bool { return n.cachedAndShown(ctx, w1) }); err != nil {
			return err
		}
		row.start()
		w := watch(ctx, time.Second, n, n)
		defer w.report(row, true)
		defer w.stop()
		pid := n.agent.Pid()
		if err := reg.SetPassword(user, newPass); err != nil {
			return err
		}
		if err := waitFor(ctx, 15*time.Second, "the registry to take only the new password", func() bool {
			before, _ := reg.AuthStatus(ctx, user, oldPass)
			after, _ := reg.AuthStatus(ctx, user, newPass)
			return before == http.StatusUnauthorized && after == http.StatusOK
		}); err != nil {
			return err
		}
		w2, err := push("w_2024_02", newPass)
		if err != nil {
			return err
		}
		if err := mount(2, newPass); err != nil {
			return err
		}
		swapped := time.Now()
		lab.Sleep(ctx, registry.ReloadInterval) // the agent may have read the old file just now
		if out, err := n.debug(ctx, "reconcile"); err != nil {
			row.figure("first reconcile: %q", shorten(err.Error()+out, 60))
		}
		err = waitFor(ctx, 2*rotationWithin, "the new weekly cached and available", func() bool { return n.cachedAndShown(ctx, w2) })
		took := time.Since(swapped)
		row.figure("new weekly available %s after the swap", secs(took))
		row.expect(err == nil && took <= rotationWithin, "after the swap: %v after %s", err, secs(took))
		row.expect(!n.agent.Exited() && n.agent.Pid() == pid, "the agent restarted")
		leaks := secretLeaks(ctx, n, user, oldPass, newPass)
		row.expect(leaks == "", "a password leaked: %s", leaks)
		return nil
	}}
}

// secretLeaks names where either password (or its basic-auth token) appears: the agent's
// log, its status dump, its debug pulls.
func secretLeaks(ctx context.Context, n *node, user string, passwords ...string) string {
	d, _ := n.dump(ctx)
	pulls, _ := n.debug(ctx, "pulls")
	places := map[string]string{"log": n.agent.Log(), "status": fmt.Sprint(d), "debug pulls": pulls}
	var found []string
	for _, p := range passwords {
		for _, secret := range []string{p, base64.StdEncoding.EncodeToString([]byte(user + ":" + p))} {
			for where, text := range places {
				if strings.Contains(text, secret) {
					found = append(found, where)
				}
			}
		}
	}
	return strings.Join(found, ", ")
}
