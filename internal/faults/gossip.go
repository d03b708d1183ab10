package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/status"
)

// memberlist's stream framing (its net.go and label.go): what a peer without the key can
// still send.
const (
	mlLabelByte   = 244 // hasLabelMsg
	mlEncryptMsg  = 10  // encryptMsg
	gossipLabel   = "jupyter"
	mlMaxDeclared = 20<<20 - 1 // below memberlist's own 20 MiB limit
	// guardMaxStream is the largest stream an agent admits (README, Hardening of the gossip
	// port: 1,835,117 bytes).
	guardMaxStream = 1_835_117
)

// labelled prefixes b with memberlist's label header.
func labelled(b []byte) []byte {
	return append(append([]byte{mlLabelByte, byte(len(gossipLabel))}, gossipLabel...), b...)
}

// encryptedHeader starts an "encrypted" stream declaring n more bytes.
func encryptedHeader(n uint32) []byte {
	return labelled(binary.BigEndian.AppendUint32([]byte{mlEncryptMsg}, n))
}

// gossipHostile is three rows on one two-agent cluster (g1 leads, g2), one after the other:
// a node with the wrong key, garbage, and oversized streams on g1's gossip port.
func gossipHostile() group {
	wrongKey := newCheck("wrong gossip key (a third agent, g0, joins g1)",
		"g0 is kept out (members stay g1, g2; leader g1) and its log names the key; g1 counts decrypt drops")
	garbage := newCheck("garbage gossip: 200 TCP streams of random bytes, 2,000 UDP packets",
		"every stream closed and every stream counted in gossip_dropped_total; cluster intact; probes answer; goroutines back")
	oversized := newCheck("oversized gossip: 16 streams declaring 20 MiB, 32 at the 1.75 MiB bound",
		"closed before the declared bytes; RSS < 128 MiB; cluster intact; probes answer; goroutines back")
	return group{rows: []*check{wrongKey, garbage, oversized}, run: func(ctx context.Context, e *env) error {
		nodes, err := e.newNodes(ctx, "g", 2)
		if err != nil {
			return err
		}
		defer closeAll(nodes)
		img, err := e.push(ctx, "faults/gossip", "w_2024_01", 2, 1)
		if err != nil {
			return err
		}
		if err := e.startCluster(ctx, nodes, simple(img), img); err != nil {
			return err
		}
		g1 := nodes[0]
		runWrongKey(ctx, e, wrongKey, nodes, img)
		underAttack(ctx, garbage, g1, nodes, func(ctx context.Context) error {
			return garbageStreams(ctx, garbage, nodes, img)
		})
		underAttack(ctx, oversized, g1, nodes, func(ctx context.Context) error {
			return oversizedStreams(ctx, oversized, nodes, img)
		})
		return nil
	}}
}

// startCluster starts keyed agents on nodes, each joining the others, listing source, and
// waits until the first (the leader: the lowest name) shows every image of want in
// common_cache.
func (e *env) startCluster(ctx context.Context, nodes []*node, source *config.Repoman, want ...pushed) error {
	cfgs := make([]config.Config, len(nodes))
	for i, n := range nodes {
		c := e.config(n, source)
		if err := e.cluster(&c); err != nil {
			return err
		}
		cfgs[i] = c
	}
	for i, n := range nodes {
		for j, o := range cfgs {
			if j != i {
				cfgs[i].Cluster.Join = append(cfgs[i].Cluster.Join, net.JoinHostPort(o.Cluster.BindAddr, strconv.Itoa(o.Cluster.BindPort)))
			}
		}
		if err := e.start(ctx, n, cfgs[i]); err != nil {
			return err
		}
	}
	return waitFor(ctx, 2*time.Minute, "the cluster formed with every image in common_cache", func() bool {
		return clusterIntact(ctx, nodes, want...) == nil
	})
}

// clusterIntact checks, at the leader nodes[0], that exactly nodes are alive members with
// nodes[0] leading and every img in common_cache.
func clusterIntact(ctx context.Context, nodes []*node, imgs ...pushed) error {
	leader := nodes[0]
	v, err := leader.nodes(ctx)
	if err != nil {
		return err
	}
	var alive, want []string
	for _, nv := range v.Nodes {
		if nv.Alive {
			alive = append(alive, nv.Name)
		}
	}
	for _, n := range nodes {
		want = append(want, n.name)
	}
	slices.Sort(alive)
	if v.Leader != leader.name || !slices.Equal(alive, want) {
		return fmt.Errorf("leader %q and alive members %v, want %s and %v", v.Leader, alive, leader.name, want)
	}
	d, err := leader.dump(ctx)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if !slices.ContainsFunc(d.CommonCache, func(c status.CommonImage) bool { return c.ImageURL == img.ref && c.ImageHash == img.digest }) {
			return fmt.Errorf("%s not in common_cache", img.ref)
		}
	}
	return nil
}

// drops are an agent's cachemachine_gossip_dropped_total by reason.
func drops(ctx context.Context, n *node) map[string]float64 {
	m, err := n.agent.Metrics(ctx)
	out := map[string]float64{}
	if err != nil {
		return out
	}
	for k, v := range m {
		if r, ok := strings.CutPrefix(k, `cachemachine_gossip_dropped_total{reason="`); ok {
			out[strings.TrimSuffix(r, `"}`)] = v
		}
	}
	return out
}

// dropsSince is the increase of every reason since before, as "reason +n" sorted, and the
// total increase.
func dropsSince(ctx context.Context, n *node, before map[string]float64) (string, float64) {
	now := drops(ctx, n)
	var parts []string
	total := 0.0
	for _, r := range slices.Sorted(maps.Keys(now)) {
		if d := now[r] - before[r]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s +%.0f", r, d))
			total += d
		}
	}
	return strings.Join(parts, ", "), total
}

// runWrongKey starts g0 with another key, joining g1, on g1's containerd (g0 caches
// nothing), and checks it stays out.
func runWrongKey(ctx context.Context, e *env, c *check, nodes []*node, img pushed) {
	c.start()
	g1 := nodes[0]
	before := drops(ctx, g1)
	intruder := &node{name: "g0", dir: filepath.Join(e.dir, "g0"), cd: g1.cd, cri: g1.cri}
	cfg := e.config(intruder, nil)
	err := e.cluster(&cfg, g1.agent.GossipAddr())
	if err == nil {
		cfg.Cluster.GossipKeyFile = filepath.Join(e.dir, "wrong.key")
		err = lab.WriteGossipKey(cfg.Cluster.GossipKeyFile, []byte("another-key-of-32-bytes-00000000"))
	}
	if err == nil {
		err = e.start(ctx, intruder, cfg)
	}
	if err != nil {
		c.fail(err)
		return
	}
	defer func() { _ = intruder.agent.Stop() }() // its exit status says nothing of g1
	err = waitFor(ctx, 45*time.Second, "g0 to log why it cannot join", func() bool {
		return strings.Contains(intruder.agent.Log(), "check the gossip key")
	})
	c.expect(err == nil, "g0's log does not name the gossip key: %s", intruder.agent.Tail(3))
	if line := logLine(intruder.agent.Log(), "check the gossip key"); line != "" {
		c.figure("g0 logs %q", shorten(line, 80))
	}
	// g0's gossip has reached g1 once g1 counts a packet or stream it could not decrypt: a
	// wrong join would show by then.
	err = waitFor(ctx, 30*time.Second, "g1 to drop gossip it cannot decrypt", func() bool {
		return drops(ctx, g1)["decrypt"] > before["decrypt"]
	})
	c.expect(err == nil, "%v", err)
	c.expect(clusterIntact(ctx, nodes, img) == nil, "cluster changed: %v", clusterIntact(ctx, nodes, img))
	got, total := dropsSince(ctx, g1, before)
	c.figure("members g1, g2; g1 dropped %s", got)
	c.expect(total > 0, "g1 counted no dropped gossip")
}

// logLine returns the "err" of the first log line containing s.
func logLine(log, s string) string {
	for line := range strings.Lines(log) {
		if i := strings.Index(line, s); i >= 0 {
			if j := strings.Index(line, `"err":"`); j >= 0 {
				return strings.TrimSpace(line[j+7:])
			}
			return strings.TrimSpace(line[max(0, i-60):])
		}
	}
	return ""
}

// garbageStreams sends random bytes on 200 TCP streams (half after a valid label header)
// and 2,000 UDP packets to g1's gossip port.
func garbageStreams(ctx context.Context, c *check, nodes []*node, img pushed) error {
	g1 := nodes[0]
	before := drops(ctx, g1)
	const streams, packets = 200, 2000
	var closed atomic.Int64
	fanOut(streams, 50, func(i int) {
		conn, err := net.Dial("tcp", g1.agent.GossipAddr())
		if err != nil {
			return
		}
		defer conn.Close()
		b := make([]byte, 4096)
		_, _ = rand.Read(b)
		if i%2 == 0 {
			b = labelled(b)
		}
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write(b)
		if closedByPeer(conn, 10*time.Second) {
			closed.Add(1)
		}
	})
	lab.Sleep(ctx, time.Second)
	tcp, tcpTotal := dropsSince(ctx, g1, before)
	c.figure("%d/%d streams closed by g1, dropped %s", closed.Load(), streams, tcp)
	c.expect(closed.Load() == streams, "%d of %d garbage streams left open", streams-int(closed.Load()), streams)
	c.expect(tcpTotal >= streams, "only %.0f drops counted for %d streams", tcpTotal, streams)
	before = drops(ctx, g1)
	udp, err := net.Dial("udp", g1.agent.GossipAddr())
	if err != nil {
		return err
	}
	for i := range packets {
		b := make([]byte, 200)
		_, _ = rand.Read(b)
		if i%2 == 0 {
			b = labelled(b)
		}
		_, _ = udp.Write(b)
		if i%50 == 49 {
			lab.Sleep(ctx, 2*time.Millisecond) // do not overrun the socket buffer
		}
	}
	udp.Close()
	lab.Sleep(ctx, 2*time.Second)
	got, _ := dropsSince(ctx, g1, before)
	c.figure("%d packets: dropped %s", packets, got)
	c.expect(clusterIntact(ctx, nodes, img) == nil, "cluster changed: %v", clusterIntact(ctx, nodes, img))
	return nil
}

// oversizedStreams sends 16 streams declaring 20 MiB and 32 declaring the guard's bound,
// each followed by random bytes as fast as g1 takes them.
func oversizedStreams(ctx context.Context, c *check, nodes []*node, img pushed) error {
	g1 := nodes[0]
	before := drops(ctx, g1)
	chunk := make([]byte, 64<<10)
	_, _ = rand.Read(chunk)
	sizes := slices.Concat(slices.Repeat([]int{mlMaxDeclared}, 16), slices.Repeat([]int{guardMaxStream}, 32))
	var closedEarly, closed atomic.Int64
	fanOut(len(sizes), len(sizes), func(i int) {
		conn, err := net.Dial("tcp", g1.agent.GossipAddr())
		if err != nil {
			return
		}
		defer conn.Close()
		declared := sizes[i]
		_ = conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
		written := 0
		if _, err := conn.Write(encryptedHeader(uint32(declared))); err == nil {
			for written < declared {
				n, err := conn.Write(chunk[:min(len(chunk), declared-written)])
				written += n
				if err != nil {
					break
				}
			}
		}
		if closedByPeer(conn, 10*time.Second) {
			closed.Add(1)
			if written < declared && declared == mlMaxDeclared {
				closedEarly.Add(1)
			}
		}
	})
	got, _ := dropsSince(ctx, g1, before)
	c.figure("%d/%d streams closed, %d/16 of 20 MiB before their bytes; dropped %s", closed.Load(), len(sizes), closedEarly.Load(), got)
	c.expect(closed.Load() == int64(len(sizes)), "%d of %d streams left open", int64(len(sizes))-closed.Load(), len(sizes))
	c.expect(closedEarly.Load() == 16, "%d of the 16 streams declaring 20 MiB were read in full", 16-closedEarly.Load())
	c.expect(clusterIntact(ctx, nodes, img) == nil, "cluster changed: %v", clusterIntact(ctx, nodes, img))
	return nil
}
