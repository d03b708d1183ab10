package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// clusterNode is one simulated node of a cluster: a containerd and an agent process.
type clusterNode struct {
	name string
	n    node
	cfg  config.Config
	p    *agentProc
}

func (cn *clusterNode) httpAddr() string { return cn.cfg.HTTP.Listen }

type dump struct {
	CommonCache []struct {
		ImageURL  string   `json:"image_url"`
		ImageHash string   `json:"image_hash"`
		Tags      []string `json:"tags"`
	} `json:"common_cache"`
	DesiredImages   []statusImage `json:"desired_images"`
	AvailableImages []statusImage `json:"available_images"`
	ImagesToCache   []statusImage `json:"images_to_cache"`
	AllImages       []statusImage `json:"all_images"`
}

type statusImage struct {
	ImageURL  string `json:"image_url"`
	ImageHash string `json:"image_hash"`
	Name      string `json:"name"`
}

// getStatus fetches path from the node's status API; ok=false when it does not answer 200.
func getStatus(t *testing.T, addr, path string, v any) (leader string, ok bool) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.Header.Get("X-Cachemachine-Leader"), false
	}
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	return resp.Header.Get("X-Cachemachine-Leader"), true
}

// clusterConfig is the configuration of an agent on n gossiping over loopback with the key
// in keyFile, on fresh ports, with a RubinRepoMan source on the registry.
func clusterConfig(t *testing.T, n node, regAddr, repo, keyFile string) config.Config {
	c := gossipConfig(t, n, keyFile)
	c.RefreshInterval = config.Duration{Duration: time.Minute}
	c.Repomen = []config.Repoman{rubinRepoMan(regAddr, repo)}
	return c
}

// gossipConfig is clusterConfig without the source and refresh interval.
func gossipConfig(t *testing.T, n node, keyFile string) config.Config {
	c := lab.AgentConfig(n.dir, n.cd.Endpoint())
	fastRetries(&c)
	c.Agent.ResyncInterval = config.Duration{Duration: time.Second}
	lab.LoopbackCluster(&c, lab.Port(t), lab.Port(t), keyFile, nil)
	return c
}

// startCluster starts n agents gossiping over loopback, each on its own containerd, with a
// RubinRepoMan source on the registry.
func startCluster(t *testing.T, n int, regAddr, repo string) []*clusterNode {
	t.Helper()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i*7 + 3)
	}
	var nodes []*clusterNode
	for i := range n {
		cn := &clusterNode{name: fmt.Sprintf("n%d", i+1), n: newNode(t)}
		keyFile := filepath.Join(cn.n.dir, "gossip.key")
		require.NoError(t, lab.WriteGossipKey(keyFile, key))
		cn.cfg = clusterConfig(t, cn.n, regAddr, repo, keyFile)
		nodes = append(nodes, cn)
	}
	for i, cn := range nodes {
		var join []string
		for j, o := range nodes {
			if j != i {
				join = append(join, "--join", joinAddrOf(o))
			}
		}
		cn.p = startAgentNamed(t, cn.name, cn.n.dir, cn.cfg, join...)
	}
	return nodes
}

func TestClusterConvergesFailsOverAndTracksNodes(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	const repo = "lsst/sciplat-lab"
	w10, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_10", "recommended"}, 2*mb, 1, nil)
	require.NoError(t, err)
	w09, err := lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_09"}, 2*mb, 1, nil)
	require.NoError(t, err)
	_, err = lab.PushRandomImage(t.Context(), reg.Addr, repo, []string{"w_2024_08"}, 2*mb, 1, nil)
	require.NoError(t, err)
	base := reg.Addr + "/" + repo
	wantCommon := map[string]string{base + ":recommended": w10, base + ":w_2024_10": w10, base + ":w_2024_09": w09}

	nodes := startCluster(t, 3, reg.Addr, repo)
	converged := func(addr string) (dump, string, bool) {
		var d dump
		leader, ok := getStatus(t, addr, "/cachemachine/jupyter", &d)
		if !ok || len(d.DesiredImages) != 3 || len(d.ImagesToCache) != 0 || len(d.AvailableImages) != 3 {
			return d, leader, false
		}
		got := map[string]string{}
		for _, c := range d.CommonCache {
			got[c.ImageURL] = c.ImageHash
		}
		for ref, digest := range wantCommon {
			if got[ref] != digest {
				return d, leader, false
			}
		}
		return d, leader, true
	}

	// Every agent answers, the non-leaders through the leader.
	var d dump
	eventually(t, 90*time.Second, "common_cache to hold the desired images on every node", func() bool {
		var ok bool
		var leader string
		d, leader, ok = converged(nodes[2].httpAddr())
		if !ok || leader != "n1" {
			return false
		}
		// A node still warming (started recently, still pulling) does not count for
		// common_cache yet: wait until none is, so that every node's CRI must agree.
		var nv struct {
			Nodes []struct {
				Warming bool `json:"warming"`
			} `json:"nodes"`
		}
		if _, ok := getStatus(t, nodes[2].httpAddr(), "/cachemachine/jupyter/nodes", &nv); !ok || len(nv.Nodes) != len(nodes) {
			return false
		}
		for _, n := range nv.Nodes {
			if n.Warming {
				return false
			}
		}
		return true
	})
	require.Equal(t, "Recommended (Weekly 2024_10)", d.DesiredImages[0].Name)
	require.Len(t, d.AllImages, 4)
	// The aggregation matches what every node's containerd says.
	for _, cn := range nodes {
		for ref, digest := range wantCommon {
			require.Equal(t, digest, tagDigest(t, cn.n.cri, ref), "node %s, %s", cn.name, ref)
		}
		require.Equal(t, "", tagDigest(t, cn.n.cri, base+":w_2024_08"), "num_weeklies: 2 leaves the oldest out")
	}
	for _, c := range d.CommonCache {
		if c.ImageURL == base+":w_2024_10" {
			require.Equal(t, []string{"recommended"}, c.Tags)
		}
	}
	out, err := nodes[1].p.debug(t, "cluster")
	require.NoError(t, err, out)
	require.Contains(t, out, "n1")
	require.Contains(t, out, "n3")

	// The leader dies: n2 takes over and serves the same common_cache.
	killed := time.Now()
	nodes[0].p.Kill()
	eventually(t, 30*time.Second, "n2 to lead and serve the same common_cache", func() bool {
		_, leader, ok := converged(nodes[2].httpAddr())
		return ok && leader == "n2"
	})
	t.Logf("failover: correct status from the new leader %.1fs after the kill", time.Since(killed).Seconds())

	var nv struct {
		Leader string `json:"leader"`
		Nodes  []struct {
			Name  string `json:"name"`
			Alive bool   `json:"alive"`
		} `json:"nodes"`
	}
	eventually(t, 30*time.Second, "n1 to drop out of the aggregation", func() bool {
		_, ok := getStatus(t, nodes[1].httpAddr(), "/cachemachine/jupyter/nodes", &nv)
		if !ok {
			return false
		}
		for _, n := range nv.Nodes {
			if n.Name == "n1" && n.Alive {
				return false
			}
		}
		return nv.Leader == "n2"
	})

	// n1 comes back on the same containerd and state dir: it leads again, with its images.
	nodes[0].p = startAgentNamed(t, "n1", nodes[0].n.dir, nodes[0].cfg, "--join", joinAddrOf(nodes[1]))
	eventually(t, 60*time.Second, "n1 to rejoin and lead", func() bool {
		_, leader, ok := converged(nodes[2].httpAddr())
		if !ok || leader != "n1" {
			return false
		}
		_, ok = getStatus(t, nodes[2].httpAddr(), "/cachemachine/jupyter/nodes", &nv)
		alive := 0
		for _, n := range nv.Nodes {
			if n.Alive {
				alive++
			}
		}
		return ok && alive == 3
	})
}

// joinAddrOf is a node's gossip address.
func joinAddrOf(cn *clusterNode) string {
	return fmt.Sprintf("127.0.0.1:%d", cn.cfg.Cluster.BindPort)
}

func TestWrongGossipKeyDoesNotJoin(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	nodes := startCluster(t, 1, reg.Addr, "lsst/none")
	eventually(t, 30*time.Second, "the first node to serve", func() bool {
		var v []string
		_, ok := getStatus(t, nodes[0].httpAddr(), "/cachemachine/", &v)
		return ok && slices.Equal(v, []string{"jupyter"})
	})

	// A second node with another key tries to join the first.
	other := &clusterNode{name: "n0", n: newNode(t)}
	badKey := filepath.Join(other.n.dir, "bad.key")
	require.NoError(t, lab.WriteGossipKey(badKey, []byte("0123456789abcdef0123456789abcdef")))
	other.cfg = clusterConfig(t, other.n, reg.Addr, "lsst/none", badKey)
	p := startAgentNamed(t, "n0", other.n.dir, other.cfg, "--join", joinAddrOf(nodes[0]))
	eventually(t, 30*time.Second, "a log line that says the key is wrong", func() bool {
		return strings.Contains(p.Log(), "gossip key")
	})
	var nv struct {
		Nodes []struct {
			Name string `json:"name"`
		} `json:"nodes"`
	}
	_, ok := getStatus(t, nodes[0].httpAddr(), "/cachemachine/jupyter/nodes", &nv)
	require.True(t, ok)
	for _, n := range nv.Nodes {
		require.NotEqual(t, "n0", n.Name, "a node with the wrong key joined")
	}
	require.NotContains(t, p.Log(), "0123456789abcdef", "the key never appears in logs")
}
