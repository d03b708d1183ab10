package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// Freshness end to end: a push reaches every node in seconds through Artifact Registry's
// Pub/Sub messages (the real emulator) or a registry's push notifications (the real
// docker-registry), with refresh_interval 1h so that only the event can explain it; and a
// node that joins a converged pool never shrinks available_images while it fills its cache.

// freshCluster builds the agents' configs: every node gets base's sources and refresh
// interval, and its own ports, directories and runtime.
type freshCluster struct {
	base    func(c *config.Config) // sets the sources, refresh_interval, http extras
	env     []string
	mirrors map[string]string
	keyFile string
	nodes   []*clusterNode
}

// addNode makes a node (containerd, directory, ports, config) without starting its agent.
func (c *freshCluster) addNode(t *testing.T, name string) *clusterNode {
	t.Helper()
	lab.Require(t)
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	cd := lab.NewContainerd(t, lab.ContainerdOptions{Mirrors: c.mirrors})
	n := &clusterNode{name: name, n: node{dir: dir, cd: cd, cri: criClient(t, cd)}}
	if c.keyFile == "" {
		c.keyFile = filepath.Join(dir, "gossip.key")
		require.NoError(t, lab.WriteGossipKey(c.keyFile, []byte("0123456789abcdef0123456789abcdef")))
	}
	n.cfg = gossipConfig(t, n.n, c.keyFile)
	c.nodes = append(c.nodes, n)
	return n
}

// start runs n's agent with the cluster's settings, joining every other node.
func (c *freshCluster) start(t *testing.T, n *clusterNode) {
	t.Helper()
	c.base(&n.cfg)
	var args []string
	for _, o := range c.nodes {
		if o != n {
			args = append(args, "--join", joinAddrOf(o))
		}
	}
	a := lab.NewAgent(t, lab.AgentOptions{Binary: binary, Node: n.name, Dir: n.n.dir, Config: n.cfg, Args: args, Env: c.env})
	n.p = &agentProc{Agent: a, socket: n.cfg.Agent.DebugSocket}
}

// available returns the image_url of /available on addr (nil, false when it does not answer).
func available(t *testing.T, addr string) ([]string, bool) {
	var v struct {
		Images []statusImage `json:"images"`
	}
	if _, ok := getStatus(t, addr, "/cachemachine/jupyter/available", &v); !ok {
		return nil, false
	}
	var out []string
	for _, i := range v.Images {
		out = append(out, i.ImageURL)
	}
	return out, true
}

// onEveryNode reports whether every node's containerd holds ref with digest.
func onEveryNode(t *testing.T, nodes []*clusterNode, ref, digest string) bool {
	for _, n := range nodes {
		if tagDigest(t, n.n.cri, ref) != digest {
			return false
		}
	}
	return true
}

// waitFresh times how long after start ref (with digest) takes to be on every node and in
// /available at addr, failing after within.
func waitFresh(t *testing.T, nodes []*clusterNode, addr, ref, digest string, start time.Time, within time.Duration) (everyNode, inAvailable time.Duration) {
	t.Helper()
	deadline := start.Add(within)
	for everyNode == 0 || inAvailable == 0 {
		if everyNode == 0 && onEveryNode(t, nodes, ref, digest) {
			everyNode = time.Since(start)
		}
		if inAvailable == 0 {
			if imgs, ok := available(t, addr); ok && slices.Contains(imgs, ref) {
				inAvailable = time.Since(start)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not cached on every node and in /available within %s (every node: %s, available: %s)", ref, within, everyNode, inAvailable)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return everyNode, inAvailable
}

// metric returns the value of the first sample of /metrics at addr whose line starts with
// prefix, or "" when there is none.
func metric(t *testing.T, addr, prefix string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	require.NoError(t, err, "the agent at %s must answer /metrics", addr)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// TestPubSubPushIsOnEveryNodeInSeconds: three real containerd nodes with the built agent,
// a RubinRepoGar source on the fake Artifact Registry (backed by the lab registry, which
// containerd reaches through a hosts.toml redirect) with pubsub_subscription on the real
// Pub/Sub emulator and refresh_interval 1h. A new weekly is pushed and its Artifact Registry
// messages published: it is on every node and in /available within seconds. Then the leader
// is killed: the new leader takes the subscription over and the next push arrives the same
// way.
func TestPubSubPushIsOnEveryNodeInSeconds(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	lab.RequirePubSub(t) // CI=true: fails when the emulator cannot be found
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const regRepo = "rubin-lab/sciplat/sciplat-lab"
	const parent = "projects/rubin-lab/locations/us-central1/repositories/sciplat"
	w10, err := lab.PushRandomImage(t.Context(), reg.Addr, regRepo, []string{"w_2024_10", "recommended"}, 4*mb, 2, nil)
	require.NoError(t, err)
	fake := gartest.Start(t)
	require.NoError(t, fake.AddFromRegistry(t.Context(), reg.Addr, regRepo, parent, "sciplat-lab"))
	started := time.Now()
	ps := lab.NewPubSub(t, "rubin-lab")
	t.Logf("Pub/Sub emulator (real, %s) ready in %s", ps.Addr, time.Since(started).Round(time.Millisecond))
	sub, err := ps.CreateSubscription(t.Context(), "gcr", "cachemachine")
	require.NoError(t, err)

	c := &freshCluster{
		base: func(cfg *config.Config) {
			cfg.RefreshInterval = config.Duration{Duration: time.Hour}
			src := config.DefaultRepoman(config.TypeRubinRepoGar)
			src.ProjectID, src.Location, src.GARRepository, src.GARImage = "rubin-lab", "us-central1", "sciplat", "sciplat-lab"
			src.NumWeeklies = 2
			src.Endpoint, src.InsecureEndpoint = fake.Addr(), true
			src.PubSubSubscription = sub
			cfg.Repomen = []config.Repoman{src}
		},
		env:     []string{ps.Env()},
		mirrors: map[string]string{garHost: reg.Addr},
	}
	for i := range 3 {
		c.addNode(t, fmt.Sprintf("n%d", i+1))
	}
	for _, n := range c.nodes {
		c.start(t, n)
	}
	base := garHost + "/rubin-lab/sciplat/sciplat-lab"
	follower := c.nodes[2].httpAddr()
	eventually(t, 90*time.Second, "the first weekly on every node and available", func() bool {
		imgs, ok := available(t, follower)
		return ok && slices.Contains(imgs, base+":w_2024_10") && onEveryNode(t, c.nodes, base+":w_2024_10", w10)
	})

	push := func(tag string, nodes []*clusterNode, via string) {
		t.Helper()
		digest, err := lab.PushRandomImage(t.Context(), reg.Addr, regRepo, []string{tag}, 4*mb, 2, nil)
		require.NoError(t, err)
		fake.Add(parent, "sciplat-lab", digest, []string{tag}, 4*mb)
		start := time.Now()
		require.NoError(t, ps.PublishARPush(t.Context(), "us-central1-docker.pkg.dev/rubin-lab/sciplat/sciplat-lab", digest, tag))
		// Another repository of the project: acknowledged and ignored.
		require.NoError(t, ps.Publish(t.Context(), "gcr", []byte(`{"action":"INSERT","tag":"us-central1-docker.pkg.dev/rubin-lab/other/tool:1"}`)))
		every, avail := waitFresh(t, nodes, via, base+":"+tag, digest, start, 30*time.Second)
		t.Logf("%s: message published -> on every node %.2fs, in /available %.2fs (refresh_interval 1h)", tag, every.Seconds(), avail.Seconds())
	}
	push("w_2024_11", c.nodes, follower)
	leaderAddr := c.nodes[0].httpAddr()
	require.Equal(t, "1", metric(t, leaderAddr, `cachemachine_pubsub_messages_total{result="ignored",subscription="`+sub+`"}`), "the other repository's message is ignored")
	require.NotEmpty(t, metric(t, leaderAddr, `cachemachine_pubsub_messages_total{result="matched",subscription="`+sub+`"}`))
	require.Contains(t, c.nodes[0].p.Log(), `"msg":"push event"`)
	require.Empty(t, metric(t, c.nodes[1].httpAddr(), `cachemachine_pubsub_messages_total{result="matched"`), "followers do not receive")

	// The leader dies: n2 leads and receives from the subscription.
	c.nodes[0].p.Kill()
	eventually(t, 30*time.Second, "n2 to lead", func() bool {
		var d dump
		leader, ok := getStatus(t, follower, "/cachemachine/jupyter", &d)
		return ok && leader == "n2"
	})
	push("w_2024_12", c.nodes[1:], follower)
	require.Contains(t, c.nodes[1].p.Log(), `"msg":"push event"`, "the new leader took the subscription over")
}

// TestRegistryNotificationIsOnEveryNodeInSeconds: three nodes with a RubinRepoMan source on the
// real docker-registry, which notifies a follower's status API (forwarded to the leader) of
// every push with a bearer token; refresh_interval 1h.
func TestRegistryNotificationIsOnEveryNodeInSeconds(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	const token = "n0tify-t0ken-e2e"
	const repo = "lsst/sciplat-lab"
	c := &freshCluster{}
	for i := range 3 {
		c.addNode(t, fmt.Sprintf("n%d", i+1))
	}
	tokenFile := filepath.Join(c.nodes[0].n.dir, "notify.token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
	// The registry notifies n3, a follower: it checks the token and forwards to the leader.
	reg := lab.NewRegistry(t, lab.RegistryOptions{Notify: &lab.RegistryNotify{
		URL: "http://" + c.nodes[2].httpAddr() + "/cachemachine/jupyter/notifications", Token: token,
	}})
	w10, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_10"}, 4*mb, 2, nil)
	require.NoError(t, err)
	c.base = func(cfg *config.Config) {
		cfg.RefreshInterval = config.Duration{Duration: time.Hour}
		cfg.Repomen = []config.Repoman{rubinRepoMan(reg.Addr, repo)}
		cfg.HTTP.NotificationsTokenFile = tokenFile
	}
	for _, n := range c.nodes {
		c.start(t, n)
	}
	base := reg.Addr + "/" + repo
	follower := c.nodes[2].httpAddr()
	eventually(t, 90*time.Second, "the first weekly on every node and available", func() bool {
		imgs, ok := available(t, follower)
		return ok && slices.Contains(imgs, base+":w_2024_10") && onEveryNode(t, c.nodes, base+":w_2024_10", w10)
	})

	for _, tag := range []string{"w_2024_11", "w_2024_12"} {
		digest, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{tag}, 4*mb, 2, nil)
		require.NoError(t, err)
		start := time.Now() // the manifest PUT, which the registry notifies, has just returned
		every, avail := waitFresh(t, c.nodes, follower, base+":"+tag, digest, start, 30*time.Second)
		t.Logf("%s: pushed -> on every node %.2fs, in /available %.2fs (refresh_interval 1h)", tag, every.Seconds(), avail.Seconds())
	}
	require.NotEmpty(t, metric(t, c.nodes[0].httpAddr(), `cachemachine_registry_notification_events_total{result="matched"}`))
	require.Contains(t, c.nodes[0].p.Log(), `"msg":"push event"`)

	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+follower+"/cachemachine/jupyter/notifications", strings.NewReader(`{"events":[]}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	for _, n := range c.nodes {
		require.NotContains(t, n.p.Log(), token, "the token never appears in a log")
	}
}

// TestJoiningNodeNeverShrinksTheMenu: a fourth node joins a converged three-node cluster with
// an empty containerd. While it pulls, available_images (polled throughout) never loses an
// image, /nodes shows it warming with what it misses, and once it holds everything it
// counts.
func TestJoiningNodeNeverShrinksTheMenu(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const repo = "lsst/sciplat-lab"
	for i, tag := range []string{"w_2024_08", "w_2024_09", "w_2024_10"} {
		// Big enough that the new node spends a few seconds pulling.
		_, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{tag}, int64(24+8*i)*mb, 3, nil)
		require.NoError(t, err)
	}
	c := &freshCluster{base: func(cfg *config.Config) {
		cfg.RefreshInterval = config.Duration{Duration: time.Minute}
		src := rubinRepoMan(reg.Addr, repo)
		src.NumWeeklies = 3
		cfg.Repomen = []config.Repoman{src}
	}}
	for i := range 3 {
		c.addNode(t, fmt.Sprintf("n%d", i+1))
	}
	for _, n := range c.nodes {
		c.start(t, n)
	}
	leader := c.nodes[0].httpAddr()
	var want []string
	eventually(t, 120*time.Second, "three weeklies available on three nodes", func() bool {
		imgs, ok := available(t, leader)
		want = imgs
		return ok && len(imgs) == 3
	})

	n4 := c.addNode(t, "n4")
	c.start(t, n4)
	type nodeView struct {
		Name           string   `json:"name"`
		Alive          bool     `json:"alive"`
		Warming        bool     `json:"warming"`
		WarmingMissing []string `json:"warming_missing"`
	}
	var nv struct {
		Nodes []nodeView `json:"nodes"`
	}
	sawWarming, polls := false, 0
	deadline := time.Now().Add(120 * time.Second)
	for {
		imgs, ok := available(t, leader)
		require.True(t, ok, "the leader answers")
		polls++
		for _, w := range want {
			require.Contains(t, imgs, w, "poll %d: available_images lost an image while n4 warms", polls)
		}
		_, ok = getStatus(t, leader, "/cachemachine/jupyter/nodes", &nv)
		require.True(t, ok)
		done := false
		for _, n := range nv.Nodes {
			if n.Name != "n4" {
				continue
			}
			if n.Warming {
				require.NotEmpty(t, n.WarmingMissing)
				if !sawWarming {
					out, err := c.nodes[0].p.debug(t, "cluster")
					require.NoError(t, err, out)
					require.Regexp(t, `n4 .*yes: \d missing`, out, "debug cluster shows n4 warming")
				}
				sawWarming = true
			}
			done = n.Alive && !n.Warming && sawWarming
		}
		if done {
			break
		}
		require.False(t, time.Now().After(deadline), "n4 did not finish warming within 120s (saw warming: %v)", sawWarming)
		time.Sleep(50 * time.Millisecond)
	}
	// n4 counts now: every image is on all four nodes.
	imgs, ok := available(t, leader)
	require.True(t, ok)
	require.ElementsMatch(t, want, imgs)
	for _, ref := range want {
		require.NotEmpty(t, tagDigest(t, n4.n.cri, ref), "n4 holds %s once it counts", ref)
	}
	t.Logf("n4 warmed over %d polls of /available, none of which lost an image", polls)
}
