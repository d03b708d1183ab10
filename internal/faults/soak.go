package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/status"
)

const (
	soakNodes = 3
	// soakEvery is the period of the desired list's changes: a new weekly is pushed and the
	// leader asked to reconcile, so the two newest weeklies change.
	soakEvery = 20 * time.Second
	// soakRSSGrowthKiB is how much more an agent may hold at the end of the soak than after
	// the first change (warm caches, a grown heap target): more is a leak.
	soakRSSGrowthKiB = 10 << 10
	// soakConvergeWithin bounds each change's time to the new weekly in common_cache.
	soakConvergeWithin = soakEvery
)

// soak is one row: soakNodes agents on their own containerds; the desired list changes every
// soakEvery for d; common_cache is sampled against every node's CRI ListImages.
func soak(d time.Duration) group {
	row := newCheck(fmt.Sprintf("soak: %d agents, desired list changing every %s for %s", soakNodes, secs(soakEvery), secs(d)),
		fmt.Sprintf("no common_cache sample holds an image the containerd of a node it counts (alive, not warming) lacks; each change in common_cache within %s; RSS flat (< 128 MiB, +%s at most) and goroutines flat (+%d); probes answer",
			secs(soakConvergeWithin), mibs(soakRSSGrowthKiB), goroutineSlack))
	return group{rows: []*check{row}, run: func(ctx context.Context, e *env) error {
		nodes, err := e.newNodes(ctx, "s", soakNodes)
		if err != nil {
			return err
		}
		defer closeAll(nodes)
		const repo = "faults/soak"
		var weeklies []pushed
		next := func() error {
			img, err := e.push(ctx, repo, fmt.Sprintf("w_2024_%02d", len(weeklies)+1), 2, 1)
			weeklies = append(weeklies, img)
			return err
		}
		for range 2 {
			if err := next(); err != nil {
				return err
			}
		}
		if err := e.startCluster(ctx, nodes, rubin(e.reg.Addr, repo), weeklies...); err != nil {
			return err
		}
		row.start()
		leader := nodes[0]
		w := watch(ctx, 500*time.Millisecond, leader, nodes...)
		defer w.report(row, true)
		defer w.stop()
		var took []time.Duration
		var base []usage
		for start := time.Now(); time.Since(start) < d && ctx.Err() == nil; {
			period := time.Now()
			if err := next(); err != nil {
				return err
			}
			if out, err := leader.debug(ctx, "reconcile"); err != nil {
				row.expect(false, "reconcile: %v %s", err, out)
			}
			newest := weeklies[len(weeklies)-1]
			err := waitFor(ctx, soakConvergeWithin, "the new weekly in common_cache", func() bool { return inCommon(ctx, leader, newest) })
			took = append(took, time.Since(period))
			row.expect(err == nil, "change %d: %v", len(took), err)
			if base == nil {
				base = usages(ctx, nodes) // after the first change: warm
			}
			lab.Sleep(ctx, soakEvery-time.Since(period))
		}
		end := usages(ctx, nodes)
		for i, n := range nodes {
			if i < len(base) && i < len(end) {
				row.expect(end[i].rssKiB <= base[i].rssKiB+soakRSSGrowthKiB, "%s: RSS %s → %s", n.name, mibs(base[i].rssKiB), mibs(end[i].rssKiB))
				row.expect(base[i].goroutines >= 0 && end[i].goroutines >= 0 && end[i].goroutines <= base[i].goroutines+goroutineSlack, "%s: goroutines %d → %d", n.name, base[i].goroutines, end[i].goroutines)
			}
		}
		slices.Sort(took)
		if len(took) > 0 {
			row.figure("%d changes, each in common_cache after ≤ %s", len(took), secs(took[len(took)-1]))
		}
		row.figure("RSS %s; goroutines %s", formatUsage(base, end, func(u usage) string { return mibs(u.rssKiB) }), formatUsage(base, end, func(u usage) string { return fmt.Sprint(u.goroutines) }))
		return nil
	}}
}

// inCommon reports whether the leader's common_cache holds img.
func inCommon(ctx context.Context, leader *node, img pushed) bool {
	d, err := leader.dump(ctx)
	return err == nil && slices.ContainsFunc(d.CommonCache, func(c status.CommonImage) bool { return c.ImageURL == img.ref && c.ImageHash == img.digest })
}

// usage is an agent's RSS and goroutines at one moment.
type usage struct {
	rssKiB     int64
	goroutines int
}

// usages reads every node's agent; a node whose agent does not answer gets a zero usage
// with -1 goroutines, which fails the flatness check.
func usages(ctx context.Context, nodes []*node) []usage {
	out := make([]usage, len(nodes))
	for i, n := range nodes {
		out[i].goroutines = -1
		if m, err := n.agent.Memory(); err == nil {
			out[i].rssKiB = m.RSSKiB
		}
		if g, err := n.goroutines(ctx); err == nil {
			out[i].goroutines = g
		}
	}
	return out
}

// formatUsage is "a → b, c → d, …" of f over the nodes.
func formatUsage(base, end []usage, f func(usage) string) string {
	var parts []string
	for i := range min(len(base), len(end)) {
		parts = append(parts, f(base[i])+" → "+f(end[i]))
	}
	return strings.Join(parts, ", ")
}
