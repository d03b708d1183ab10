package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// failoverResult is what (b) measured.
type failoverResult struct {
	times []time.Duration // SIGKILL of the leader -> correct status from the new leader
	notes []string
}

// measureFailover runs three agent processes on three real containerds with one image from a
// real registry, then kills the leader (SIGKILL) rounds times, timing until a surviving node's
// status API answers 200 naming the new leader with the common_cache of before. The killed
// node is restarted, and leads again, between rounds.
func measureFailover(ctx context.Context, o options) (failoverResult, error) {
	var res failoverResult
	reg, err := lab.StartRegistry(ctx, lab.RegistryOptions{})
	if err != nil {
		return res, err
	}
	defer reg.Close()
	const repo = "lsst/sciplat-lab"
	digest, err := lab.PushRandomImage(ctx, reg.Addr, repo, []string{"w_2024_10", "recommended"}, 2<<20, 1, nil)
	if err != nil {
		return res, err
	}
	refs := []string{reg.Addr + "/" + repo + ":recommended", reg.Addr + "/" + repo + ":w_2024_10"}
	want := []string{refs[0] + "@" + digest, refs[1] + "@" + digest}
	slices.Sort(want)

	dir, keyFile, err := newWorkDir(o.key)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	// Containerds are closed after the agents stop (defers run last-in, first-out).
	var cds []*lab.Containerd
	defer func() {
		for _, cd := range cds {
			if err := cd.Close(); err != nil {
				progress("  %v", err)
			}
		}
	}()
	for range 3 {
		cd, err := lab.StartContainerd(ctx, lab.ContainerdOptions{})
		if err != nil {
			return res, err
		}
		cds = append(cds, cd)
	}
	var procs []*lab.Agent
	defer func() {
		for _, p := range procs {
			if err := p.Stop(); err != nil {
				progress("  %v", err)
			}
		}
	}()
	var plans []agentPlan
	for _, name := range []string{"n1", "n2", "n3"} {
		p, err := newAgentPlan(dir, name)
		if err != nil {
			return res, err
		}
		plans = append(plans, p)
	}
	for i, p := range plans {
		var join []string
		for j, q := range plans {
			if j != i {
				join = append(join, q.gossipAddr())
			}
		}
		a, err := p.start(o.bin, cds[i].Endpoint(), agentSource{images: refs, digests: []string{digest, digest}}, join, keyFile)
		if err != nil {
			return res, err
		}
		procs = append(procs, a)
	}
	for _, p := range procs {
		if err := p.WaitReady(ctx, time.Minute); err != nil {
			return res, err
		}
	}
	n1, n2, n3 := procs[0], procs[1], procs[2]
	// ledBy waits until both other nodes answer with leader and the expected common_cache,
	// and the leader sees three alive nodes.
	ledBy := func(leader *lab.Agent, others ...*lab.Agent) error {
		return coordinatortest.Poll(ctx, 2*time.Minute, 100*time.Millisecond, func() (bool, string) {
			for _, p := range others {
				d, l, ok := getDump(p.HTTPAddr(), 2*time.Second)
				if !ok || l != leader.Node() || !slices.Equal(d.common(), want) {
					return false, fmt.Sprintf("%s: answered ok=%v leader=%q common_cache=%v, want leader %s and %v", p.Node(), ok, l, d.common(), leader.Node(), want)
				}
			}
			v, ok := getNodes(leader.HTTPAddr(), 2*time.Second)
			alive, done := v.settled(len(refs))
			return ok && alive == 3 && done == 3, fmt.Sprintf("%s: %d alive nodes, %d with every image", leader.Node(), alive, done)
		})
	}
	progress("  3 agents on 3 containerds: waiting for the images and for n1 to lead")
	if err := ledBy(n1, n2, n3); err != nil {
		return res, err
	}
	for r := range o.failoverRounds {
		// Let membership settle (a restarted leader refutes its old death for a moment).
		if lab.Sleep(ctx, 3*time.Second) != nil {
			return res, ctx.Err()
		}
		killed := time.Now()
		n1.Kill()
		var took time.Duration
		err := coordinatortest.Poll(ctx, time.Minute, 20*time.Millisecond, func() (bool, string) {
			for _, p := range []*lab.Agent{n2, n3} {
				d, l, ok := getDump(p.HTTPAddr(), time.Second)
				if ok && l == n2.Node() && slices.Equal(d.common(), want) {
					took = time.Since(killed)
					return true, ""
				}
			}
			return false, "a survivor to answer 200 from leader n2 with the same common_cache"
		})
		if err != nil {
			return res, fmt.Errorf("round %d: %w", r+1, err)
		}
		res.times = append(res.times, took)
		progress("  failover round %d/%d: %s", r+1, o.failoverRounds, ms(took))
		if err := n1.Start(); err != nil {
			return res, err
		}
		if err := n1.WaitReady(ctx, time.Minute); err != nil {
			return res, err
		}
		if err := ledBy(n1, n2, n3); err != nil {
			return res, fmt.Errorf("round %d: n1 back: %w", r+1, err)
		}
	}
	return res, nil
}
