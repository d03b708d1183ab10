package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/cri/critest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// rssSample is the memory of one process after convergence.
type rssSample struct {
	name   string
	rssKiB int64 // the largest VmRSS of a few samples
	hwmKiB int64 // VmHWM: the peak, formation included
	anon   int64 // RssAnon (heap, stacks) and RssFile (the binary's pages) of the last sample
	file   int64
}

// rssResult is what one run of (d) or (e) measured.
type rssResult struct {
	members, images int
	procs           []rssSample // the agent processes, the leader first
	formation       time.Duration
	liveHeap        []float64 // bytes of live Go heap per process, 0 when unknown
	notes           []string
}

// measureBinaryRSS runs the built binary as the leader (node "a000", the lowest name) and,
// with nonLeader, as one ordinary member ("z999"), both on one fake CRI server (in this
// process) that holds `images` images, so both agents are idle; the other members are
// in-process simulated nodes, each holding the same images. After convergence (every member
// alive at the leader with every image cached, common_cache complete) and steady gossip, it
// reads each process's VmRSS.
func measureBinaryRSS(ctx context.Context, o options, members, images int, nonLeader bool) (rssResult, error) {
	res := rssResult{members: members, images: images}
	start := time.Now()
	srv, err := critest.NewServer(critest.ServerOptions{})
	if err != nil {
		return res, err
	}
	defer srv.Close()
	var refs, digests []string
	for i := range images {
		ref := imageRef("w", i)
		refs = append(refs, ref)
		digests = append(digests, digestOf(ref))
		srv.AddRemote(ref, digestOf(ref), 1<<20)
	}
	client, err := cri.New(ctx, srv.Endpoint(), cri.Options{})
	if err != nil {
		return res, err
	}
	for _, ref := range refs {
		if _, err := client.PullImage(ctx, ref, nil); err != nil {
			client.Close()
			return res, err
		}
	}
	client.Close()

	dir, keyFile, err := newWorkDir(o.key)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	names := []string{"a000"}
	if nonLeader {
		names = append(names, "z999")
	}
	var procs []*lab.Agent
	defer func() {
		for _, p := range procs {
			if err := p.Stop(); err != nil {
				progress("  %v", err)
			}
		}
	}()
	for i, name := range names {
		p, err := newAgentPlan(dir, name)
		if err != nil {
			return res, err
		}
		var join []string
		if i > 0 {
			join = []string{procs[0].GossipAddr()}
		}
		a, err := p.start(o.bin, srv.Endpoint(), agentSource{images: refs, digests: digests}, join, keyFile)
		if err != nil {
			return res, err
		}
		procs = append(procs, a)
		if err := a.WaitReady(ctx, time.Minute); err != nil {
			return res, err
		}
	}
	leader := procs[0]

	// The members start from the leader's published list (as nodes that were up when it was
	// published), so convergence costs no metadata broadcast per member.
	var desired agent.Desired
	if err := coordinatortest.Poll(ctx, time.Minute, 200*time.Millisecond, func() (bool, string) {
		var b bytes.Buffer
		err := agent.RunDebug(ctx, leader.Config().Agent.DebugSocket, []string{"desired"}, true, &b)
		if err == nil {
			err = json.Unmarshal(b.Bytes(), &desired)
		}
		return err == nil && desired.Version != 0 && len(desired.Images) == images, fmt.Sprintf("the leader's desired list (%d images, err %v)", len(desired.Images), err)
	}); err != nil {
		return res, err
	}

	log := newCountingHandler()
	tune, how := simTimings(members)
	if how != "" {
		res.notes = append(res.notes, how+" (the leader process runs production timings)")
	}
	sc := &simCluster{key: o.key, join: []string{leader.GossipAddr()}, minLat: o.pullMin, maxLat: o.pullMax, logger: newLogger(log), tune: tune}
	defer sc.stop() // before the agent processes stop: the members leave first
	var simNames []string
	for i := 1; len(simNames) < members-len(names); i++ {
		simNames = append(simNames, nodeName(i))
	}
	aliveAtLeader := func() int {
		m, _ := leader.Metrics(ctx)
		v := m["cachemachine_members"]
		return int(v)
	}
	progress("  leader %s (pid %d) up; %d simulated members joining", leader.Node(), leader.Pid(), len(simNames))
	if err := sc.addBatches(ctx, simNames, o.batch, len(names), refs, desired, aliveAtLeader); err != nil {
		return res, err
	}
	if err := coordinatortest.Poll(ctx, 3*time.Minute, time.Second, func() (bool, string) {
		if err := leader.ExitErr(); err != nil {
			return false, err.Error()
		}
		v, ok := getNodes(leader.HTTPAddr(), 10*time.Second)
		alive, done := v.settled(images)
		if !ok || v.Leader != leader.Node() || alive != members || done != members {
			return false, fmt.Sprintf("leader %q: %d alive members of %d, %d with all %d images", v.Leader, alive, members, done, images)
		}
		d, _, ok := getDump(leader.HTTPAddr(), 10*time.Second)
		return ok && len(d.CommonCache) == images && len(d.ImagesToCache) == 0, fmt.Sprintf("common_cache %d of %d images", len(d.CommonCache), images)
	}); err != nil {
		return res, fmt.Errorf("convergence: %w", err)
	}
	res.formation = time.Since(start)
	if rate, ok := sc.waitQuiet(ctx, quietLimit, 3*time.Minute); !ok {
		res.notes = append(res.notes, fmt.Sprintf("gossip not quiet before the RSS reading (%.0f B/s per node)", rate))
	}
	// A spawner reads the status every few seconds: the leader's RSS includes serving it.
	for range 5 {
		if _, _, ok := getDump(leader.HTTPAddr(), 10*time.Second); !ok {
			return res, fmt.Errorf("leader %s does not serve its status", leader.Node())
		}
		if lab.Sleep(ctx, time.Second) != nil {
			return res, ctx.Err()
		}
	}
	samples := make([]rssSample, len(procs))
	for k := range 3 {
		if k > 0 && lab.Sleep(ctx, 2*time.Second) != nil {
			return res, ctx.Err()
		}
		for i, p := range procs {
			rss, err := lab.ProcStatusKiB(p.Pid(), "VmRSS")
			if err != nil {
				return res, err
			}
			hwm, err := lab.ProcStatusKiB(p.Pid(), "VmHWM")
			if err != nil {
				return res, err
			}
			anon, _ := lab.ProcStatusKiB(p.Pid(), "RssAnon")
			file, _ := lab.ProcStatusKiB(p.Pid(), "RssFile")
			samples[i] = rssSample{name: p.Node(), rssKiB: max(samples[i].rssKiB, rss), hwmKiB: hwm, anon: anon, file: file}
		}
	}
	res.procs = samples
	for i, p := range procs {
		mem, live, err := runtimeMemory(ctx, p, o.profileDir)
		if err != nil {
			mem = "heap profile: " + err.Error()
		}
		res.liveHeap = append(res.liveHeap, live)
		res.notes = append(res.notes, fmt.Sprintf("%s: RSS = anonymous %s + file-backed (binary) %s; Go: %s", p.Node(), mib(samples[i].anon), mib(samples[i].file), mem))
	}
	for _, l := range log.take(5) {
		res.notes = append(res.notes, "simulated members "+l)
	}
	for r, v := range sc.drops() {
		res.notes = append(res.notes, fmt.Sprintf("simulated members dropped %.0f gossip messages (%s)", v, r))
	}
	return res, nil
}

// containerdRSS starts a real containerd, makes one CRI ListImages call and reads its VmRSS.
func containerdRSS(ctx context.Context) (int64, string, error) {
	cd, err := lab.StartContainerd(ctx, lab.ContainerdOptions{})
	if err != nil {
		return 0, "", err
	}
	defer cd.Close()
	c, err := cri.New(ctx, cd.Endpoint(), cri.Options{})
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	v, err := c.Version(ctx)
	if err != nil {
		return 0, "", err
	}
	if _, err := c.ListImages(ctx); err != nil {
		return 0, "", err
	}
	if lab.Sleep(ctx, time.Second) != nil {
		return 0, "", ctx.Err()
	}
	pid, err := childPID("--config", filepath.Join(cd.Dir, "config.toml"))
	if err != nil {
		return 0, "", err
	}
	rss, err := lab.ProcStatusKiB(pid, "VmRSS")
	return rss, v.RuntimeName + " " + v.RuntimeVersion, err
}

// runtimeMemory reads the agent's Go memory statistics from the heap profile its debug socket
// serves, and saves the profile in dir when dir is set.
func runtimeMemory(ctx context.Context, p *lab.Agent, dir string) (string, float64, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.Config().Agent.DebugSocket)
		},
	}}
	get := func(path string) ([]byte, error) { return lab.GetBody(ctx, client, "http://agent"+path) }
	text, err := get("/debug/pprof/heap?debug=1")
	if err != nil {
		return "", 0, err
	}
	stats := map[string]float64{}
	for _, line := range strings.Split(string(text), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "# "), " = "); ok && line != strings.TrimPrefix(line, "# ") {
			if f, err := strconv.ParseFloat(strings.Fields(v + " ")[0], 64); err == nil { // "Stack = inuse / sys"
				stats[k] = f
			}
		}
	}
	if dir != "" {
		if raw, err := get("/debug/pprof/heap"); err == nil {
			_ = os.WriteFile(filepath.Join(dir, p.Node()+".heap.pprof"), raw, 0o644)
		}
	}
	m := func(k string) string { return fmt.Sprintf("%.1f", stats[k]/(1<<20)) }
	return fmt.Sprintf("live heap %s MiB, heap in use %s, idle not yet returned %.1f, stacks %s, GC metadata %s, other %s, total Sys %s MiB",
		m("HeapAlloc"), m("HeapInuse"), (stats["HeapIdle"]-stats["HeapReleased"])/(1<<20), m("Stack"), m("GCSys"), m("OtherSys"), m("Sys")), stats["HeapAlloc"], nil
}
