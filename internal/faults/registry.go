package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/status"
)

// faultKind is a way a registry fails.
type faultKind struct {
	name  string // in the scenario names
	slug  string // repository and node names
	fault fault
	// pullError is what the agent's failed pull must say.
	pullError string
	// recoverWithin bounds the time from healing to the image cached and shown: the retry
	// delay at most (backoff_max 4 s), the pull, and for a hung registry the attempt still
	// hanging until pull_timeout (10 s).
	recoverWithin time.Duration
}

var (
	faultRefuse = faultKind{name: "refusing (401)", slug: "refuse", fault: fault{status: http.StatusUnauthorized}, pullError: "registry refused credentials", recoverWithin: 20 * time.Second}
	faultFail   = faultKind{name: "failing (503)", slug: "fail", fault: fault{status: http.StatusServiceUnavailable}, pullError: "503 Service Unavailable", recoverWithin: 20 * time.Second}
	faultHang   = faultKind{name: "hung", slug: "hang", fault: fault{hang: true}, pullError: "deadline exceeded", recoverWithin: 30 * time.Second}
)

// hungPullTimeout is the agent's pull_timeout in the registry scenarios (the least the
// config accepts), so that a hung pull ends soon.
const hungPullTimeout = 10 * time.Second

// reconcileBound is how long `debug reconcile` may take while a source is late: the
// leader's reconcile wait (10 s, README "sources still listing after 10s") and 2 s for the
// debug client's start and round trip.
const reconcileBound = 12 * time.Second

// registryFault is two rows for one kind of registry failure, injected by a proxy in front
// of the real docker-registry: on the listing path (every request: the RubinRepoMan source
// cannot list) and on the pull path (blob requests only: containerd resolves the tag, then
// cannot fetch).
func registryFault(k faultKind) group {
	listing := newCheck("registry "+k.name+", listing path (proxy before docker-registry)",
		fmt.Sprintf("reconcile answers within %s naming the source; the last good listing stays (cached weekly still available); probes answer", secs(reconcileBound)))
	pull := newCheck("registry "+k.name+", pull path (proxy before docker-registry)",
		fmt.Sprintf("pull fails with %q, never shown cached; cached and available within %s of healing; probes answer; RSS < 128 MiB", k.pullError, secs(k.recoverWithin)))
	return group{rows: []*check{listing, pull}, run: func(ctx context.Context, e *env) error {
		return runRegistryFault(ctx, e, k, listing, pull)
	}}
}

func runRegistryFault(ctx context.Context, e *env, k faultKind, listing, pull *check) error {
	repo := "faults/" + k.slug
	w1, err := e.push(ctx, repo, "w_2024_01", 4, 2)
	if err != nil {
		return err
	}
	p, err := startProxy(e.reg.Addr)
	if err != nil {
		return err
	}
	defer p.close()
	n, err := e.newNode(ctx, "reg-"+k.slug, "")
	if err != nil {
		return err
	}
	defer n.close()
	cfg := e.config(n, rubin(p.addr, repo))
	cfg.Agent.PullTimeout = config.Duration{Duration: hungPullTimeout}
	if err := e.start(ctx, n, cfg); err != nil {
		return err
	}
	viaProxy := func(img pushed) pushed {
		return pushed{ref: strings.Replace(img.ref, e.reg.Addr, p.addr, 1), digest: img.digest}
	}
	w1 = viaProxy(w1)
	if err := waitFor(ctx, 90*time.Second, "first weekly cached and available", func() bool { return n.cachedAndShown(ctx, w1) }); err != nil {
		return err
	}
	listing.start()
	p.set(k.fault)
	w2, err := e.push(ctx, repo, "w_2024_02", 4, 2) // straight to the registry: a new weekly the source cannot list
	if err != nil {
		return err
	}
	w2 = viaProxy(w2)
	w := watch(ctx, time.Second, n, n)
	listingRow(ctx, n, listing, w1, w2)
	w.stop()
	w.report(listing, true)

	pull.start()
	w = watch(ctx, time.Second, n, n)
	pullRow(ctx, n, p, k, pull, w2)
	w.stop()
	w.report(pull, true)
	return nil
}

// pullRow checks the pull-path fault: blob requests fail while w2 becomes desired; its pull
// must fail with k's error and never show as cached, and succeed soon after healing.
func pullRow(ctx context.Context, n *node, p *proxy, k faultKind, c *check, w2 pushed) {
	f := k.fault
	f.path = "/blobs/"
	p.set(f)
	faced := p.faced.Load()
	// A listing hung since the listing fault holds the source until its deadline (10 s):
	// reconcile says so until a listing started after it succeeds.
	healed := time.Now()
	err := waitFor(ctx, 45*time.Second, "a reconcile to succeed with the listing healed", func() bool {
		_, err := n.debug(ctx, "reconcile")
		return err == nil
	})
	if !c.expect(err == nil, "%v", err) {
		return
	}
	c.figure("listing back in %s", secs(time.Since(healed)))
	failed := func() (status.Failed, bool) {
		v, err := n.view(ctx)
		if err != nil {
			return status.Failed{}, false
		}
		i := slices.IndexFunc(v.Failed, func(f status.Failed) bool { return f.ImageURL == w2.ref })
		if i < 0 {
			return status.Failed{}, false
		}
		return v.Failed[i], true
	}
	err = waitFor(ctx, 2*hungPullTimeout+30*time.Second, "the new weekly's pull to fail", func() bool { _, ok := failed(); return ok })
	if c.expect(err == nil, "%v", err) {
		f, _ := failed()
		c.figure("failed: %q", shorten(f.Error, 90))
		c.expect(strings.Contains(f.Error, k.pullError), "failed pull's error %q lacks %q", f.Error, k.pullError)
	}
	c.expect(p.faced.Load() > faced, "no blob request met the fault")
	c.expect(!n.holds(ctx, w2) && !n.available(ctx, w2), "the new weekly is on the node or shown available during the fault")
	p.set(fault{})
	healed = time.Now()
	err = waitFor(ctx, 3*k.recoverWithin, "the new weekly cached and available after healing", func() bool { return n.cachedAndShown(ctx, w2) })
	took := time.Since(healed)
	if c.expect(err == nil, "%v", err) {
		c.figure("recovered in %s", secs(took))
		c.expect(took <= k.recoverWithin, "recovered in %s, bound %s", secs(took), secs(k.recoverWithin))
	}
}

// listingRow checks the listing-path fault: the registry fails every request while w2 is
// new; a reconcile must answer within its bound naming the source, and w1 stay desired and
// available.
func listingRow(ctx context.Context, n *node, c *check, w1, w2 pushed) {
	start := time.Now()
	out, err := n.debug(ctx, "reconcile")
	took := time.Since(start)
	msg := out
	if err != nil {
		msg = err.Error()
	}
	c.figure("reconcile answered in %s: %q", secs(took), shorten(msg, 90))
	c.expect(err != nil && strings.Contains(msg, "repomen[0]"), "reconcile did not report the failing source: %v %s", err, out)
	c.expect(took <= reconcileBound, "reconcile took %s", secs(took))
	// reconcile answers when the round ends; the leader publishes after that: two agent
	// passes leave it time to publish, so that the list checked is the round's.
	err = n.waitPasses(ctx, 2)
	c.expect(err == nil, "after reconcile: %v", err)
	var desired status.ImageList
	if c.expect(getJSON(ctx, n.agent.HTTPAddr(), "/cachemachine/jupyter/desired", &desired) == nil, "no /desired") {
		refs := make([]string, 0, len(desired.Images))
		for _, i := range desired.Images {
			refs = append(refs, i.ImageURL)
		}
		c.expect(slices.Contains(refs, w1.ref) && !slices.Contains(refs, w2.ref), "desired %v: want the last good listing (%s, without %s)", refs, w1.ref, w2.ref)
	}
	c.expect(n.cachedAndShown(ctx, w1), "the cached weekly is no longer available")
}

// shorten cuts s to n runes.
func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
