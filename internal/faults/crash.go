package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// crashRecoverWithin bounds the time from the crashed process's restart to the image cached
// and shown: a fresh pull of the big image on a busy machine, with room to spare.
const crashRecoverWithin = 2 * time.Minute

// crash is a process of a node SIGKILLed in the middle of a pull and started again.
type crash struct {
	what    string
	slug    string
	kill    func(n *node) error
	restart func(ctx context.Context, n *node) error
	// probes: the agent keeps answering probes (it is not the process killed).
	probes bool
}

func containerdKilled() group {
	return midPullCrash(crash{what: "containerd", slug: "kcd", probes: true,
		kill:    func(n *node) error { return n.cd.Kill() },
		restart: func(ctx context.Context, n *node) error { return n.cd.Restart(ctx) },
	})
}

func agentKilled() group {
	return midPullCrash(crash{what: "agent", slug: "kag",
		kill: func(n *node) error { n.agent.Kill(); return nil },
		restart: func(ctx context.Context, n *node) error {
			if err := n.agent.Start(); err != nil { // same state dir; its debug socket is now stale
				return err
			}
			return n.agent.WaitReady(ctx, time.Minute)
		},
	})
}

// midPullCrash is one row: the agent pulls the big image; 1 s into the pull the process is
// SIGKILLed, 1 s later started again; the image must end up cached and shown, and never be
// shown cached before containerd has it.
func midPullCrash(k crash) group {
	expect := fmt.Sprintf("the image is cached and available within %s of the restart; never shown cached before containerd has it; RSS < 128 MiB", secs(crashRecoverWithin))
	if k.probes {
		expect += "; the agent answers probes throughout"
	}
	row := newCheck(k.what+" SIGKILL mid-pull (then restarted)", expect)
	return group{rows: []*check{row}, run: func(ctx context.Context, e *env) error {
		big, err := e.bigImage(ctx)
		if err != nil {
			return err
		}
		n, err := e.newNode(ctx, k.slug, "")
		if err != nil {
			return err
		}
		defer n.close()
		cfg := e.config(n, simple(big))
		cfg.Agent.PullTimeout = config.Duration{Duration: 3 * time.Minute}
		if err := e.start(ctx, n, cfg); err != nil {
			return err
		}
		row.start()
		w := watch(ctx, 500*time.Millisecond, n, n)
		defer w.report(row, k.probes)
		defer w.stop()
		if err := waitFor(ctx, time.Minute, "the pull to start", func() bool { return pulling(ctx, n, big) }); err != nil {
			return err
		}
		started := time.Now()
		lab.Sleep(ctx, time.Second)
		if !row.expect(pulling(ctx, n, big) && !n.holds(ctx, big), "the pull was not in flight at the kill (finished already? raise --big-mb)") {
			return nil
		}
		if err := k.kill(n); err != nil {
			return err
		}
		killedAt := time.Since(started)
		lab.Sleep(ctx, time.Second)
		if err := k.restart(ctx, n); err != nil {
			return err
		}
		restarted := time.Now()
		err = waitFor(ctx, crashRecoverWithin+time.Minute, "the image cached and available after the restart", func() bool { return n.cachedAndShown(ctx, big) })
		took := time.Since(restarted)
		row.figure("killed %s into the pull; cached and available %s after the restart", secs(killedAt), secs(took))
		row.expect(err == nil && took <= crashRecoverWithin, "recovery: %v after %s", err, secs(took))
		return nil
	}}
}

// pulling reports whether n's agent shows img's pull in flight.
func pulling(ctx context.Context, n *node, img pushed) bool {
	v, err := n.view(ctx)
	return err == nil && slices.Contains(v.Pulling, img.ref)
}
