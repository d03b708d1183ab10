package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// show displays the progress until common_cache is complete, then pushes a new weekly (pu)
// and shows the push event, the listing and the pulls it causes, prints where to look and,
// unless --until-cached, keeps reporting changes until ctx ends.
func show(ctx context.Context, o options, out *console, bin string, plans []nodePlan, agents []*lab.Agent, pu *pusher) error {
	statusURL := "http://" + plans[0].httpAddr() + "/cachemachine/jupyter"
	p := newPoller(statusURL, agents)
	tr := tracker{}
	lines := newLineDisplay(out)
	var disp display = lines
	if isTerminal(os.Stdout) {
		var names []string
		for _, pl := range plans {
			names = append(names, pl.name)
		}
		disp = &tableDisplay{w: out.w, start: out.start, statusURL: statusURL, nodes: names}
	}
	out.say("the leader picks the images to cache; every node pulls them")

	waitCtx, cancel := ctx, context.CancelFunc(func() {})
	if o.untilCached {
		waitCtx, cancel = context.WithTimeout(ctx, o.timeout)
	}
	defer cancel()
	v, err := watch(waitCtx, p, agents, disp, tr, func(v view) bool { return v.complete(len(agents)) })
	switch {
	case ctx.Err() != nil:
		return errInterrupted
	case err != nil && waitCtx.Err() != nil:
		printTimeout(out, v, tr, statusURL, agents)
		return fmt.Errorf("timed out after %s: common_cache does not hold every desired image yet (see above)", o.timeout)
	case err != nil:
		return err
	}
	out.say("done: all %d desired images are in common_cache, cached on all %d nodes", len(v.dump.DesiredImages), len(agents))

	// A new weekly arrives: the Pub/Sub event, the listing, the pulls, within seconds.
	lines.prime(v)
	lines.logs = newLogWatcher(agents)
	lines.logs.skip()
	ref, pushed, err := pu.push(waitCtx, out)
	if err != nil {
		if ctx.Err() != nil {
			return errInterrupted
		}
		return err
	}
	lines.fresh = &freshness{ref: ref, pushed: pushed}
	v, err = watch(waitCtx, p, agents, lines, tr, func(view) bool { return lines.fresh.reported })
	switch {
	case ctx.Err() != nil:
		return errInterrupted
	case err != nil && waitCtx.Err() != nil:
		printTimeout(out, v, tr, statusURL, agents)
		return fmt.Errorf("timed out after %s: the pushed %s is not available yet (see above)", o.timeout, freshTag)
	case err != nil:
		return err
	}
	if o.untilCached {
		dump, err := p.raw(ctx, statusURL)
		if err != nil {
			return err
		}
		fmt.Fprintf(out.w, "\nleader's status (GET %s):\n%s\n", statusURL, strings.TrimSpace(dump))
	}
	printSummary(out, v, statusURL, bin, plans, agents[0].Config().Agent.DebugSocket, !o.untilCached)
	if o.untilCached {
		return nil
	}
	fmt.Fprintf(out.w, "running; Ctrl-C stops everything and removes %s\n\n", filepath.Dir(plans[0].dir))
	lines.prime(v)
	_, err = watch(ctx, p, agents, lines, tr, func(view) bool { return false })
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// watch polls and shows every refreshEvery until done holds (returning that view), ctx ends
// (returning the last complete poll), or an agent exits.
func watch(ctx context.Context, p *poller, agents []*lab.Agent, disp display, tr tracker, done func(view) bool) (view, error) {
	tick := time.NewTicker(refreshEvery)
	defer tick.Stop()
	var last view
	for {
		for _, a := range agents {
			if err := a.ExitErr(); err != nil {
				return last, err
			}
		}
		v := p.poll(ctx)
		if ctx.Err() != nil {
			return last, ctx.Err() // v was cut short
		}
		last = v
		tr.observe(v)
		disp.show(v, tr)
		if done(v) {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-tick.C:
		}
	}
}

// printTimeout shows the last nodes view as a table and the agents' recent warnings, since
// the logs go with the temp dir.
func printTimeout(out *console, v view, tr tracker, statusURL string, agents []*lab.Agent) {
	var names []string
	for _, a := range agents {
		names = append(names, a.Node())
	}
	t := &tableDisplay{start: out.start, statusURL: statusURL, nodes: names}
	fmt.Fprintf(out.w, "\nnodes view (%s/nodes) when the time ran out:\n", statusURL)
	for _, l := range t.lines(v, tr) {
		fmt.Fprintln(out.w, "  "+l)
	}
	for _, a := range agents {
		if warn := warnings(a.Log(), 3); warn != "" {
			fmt.Fprintf(out.w, "last warnings of agent %s:\n%s\n", a.Node(), warn)
		}
	}
}

// printSummary tells where to look next: the status API, common_cache, the debug socket.
//
// live says the demo keeps running, so the debug socket and logs are worth pointing at.
func printSummary(out *console, v view, statusURL, bin string, plans []nodePlan, debugSocket string, live bool) {
	w := out.w
	fmt.Fprintf(w, "\nstatus API (any agent answers, through the leader %s):\n", v.leader)
	fmt.Fprintf(w, "  %s        (HTML matrix in a browser)\n", statusURL)
	fmt.Fprintf(w, "  %s/nodes  (per node)\n", statusURL)
	fmt.Fprintf(w, "common_cache, on every node (%d entries):\n", len(v.dump.CommonCache))
	var repos []string
	rows := map[string][][]string{} // repository -> its tags' rows
	for _, c := range v.dump.CommonCache {
		repo, _ := image.SplitTagRef(c.ImageURL)
		repo += ":"
		if rows[repo] == nil {
			repos = append(repos, repo)
		}
		also := ""
		if len(c.Tags) > 0 {
			also = "also " + strings.Join(c.Tags, ", ")
		}
		rows[repo] = append(rows[repo], []string{"    " + tagOf(c.ImageURL), shortDigest(c.ImageHash), also})
	}
	for _, repo := range repos {
		fmt.Fprintln(w, "  "+repo)
		for _, l := range formatRows(rows[repo]) {
			fmt.Fprintln(w, strings.TrimRight(l, " "))
		}
	}
	if !live {
		return // the sockets and logs are about to go
	}
	fmt.Fprintf(w, "node debug socket (also: node, desired, cluster):\n  %s debug --socket %s pulls\n", relToWd(bin), debugSocket)
	fmt.Fprintf(w, "agent logs: %s/n{1..%d}/agent.log\n", filepath.Dir(plans[0].dir), len(plans))
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

// relToWd shortens path to a relative one when it is under the working directory.
func relToWd(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	rel, err := filepath.Rel(wd, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		return path
	}
	return rel
}

// isTerminal reports whether f is a character device, the test golang.org/x/term would make
// more precisely.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
