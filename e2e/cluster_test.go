package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/lab"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// clusterNode is one simulated node of a cluster: a containerd and an agent process.
type clusterNode struct {
	name     string
	n        node
	cfgPath  string
	httpAddr string
	p        *agentProc
}

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

// startCluster starts n agents gossiping over loopback, each on its own containerd, with a
// RubinRepoMan source on the registry.
func startCluster(t *testing.T, n int, regAddr, repo string) []*clusterNode {
	t.Helper()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i*7 + 3)
	}
	var nodes []*clusterNode
	var gossip []string
	for i := range n {
		cn := &clusterNode{name: fmt.Sprintf("n%d", i+1), n: newNode(t)}
		port := freePort(t)
		gossip = append(gossip, fmt.Sprintf("127.0.0.1:%d", port))
		cn.httpAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		keyFile := filepath.Join(cn.n.dir, "gossip.key")
		require.NoError(t, os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)), 0o600))
		cn.cfgPath = filepath.Join(cn.n.dir, "config.yaml")
		require.NoError(t, os.WriteFile(cn.cfgPath, fmt.Appendf(nil, `name: jupyter
refresh_interval: 1m
repomen:
  - type: RubinRepoMan
    registry_url: %s
    repo: %s
    num_weeklies: 2
agent:
  cri_socket: %s
  backoff_initial: 500ms
  backoff_max: 2s
  resync_interval: 1s
  min_free_disk_percent: 0
  state_dir: %s
  debug_socket: %s
cluster:
  enabled: true
  bind_addr: 127.0.0.1
  bind_port: %d
  gossip_key_file: %s
http:
  listen: %s
`, regAddr, repo, cn.n.cd.Endpoint(), filepath.Join(cn.n.dir, "state"), filepath.Join(cn.n.dir, "agent.sock"), port, keyFile, cn.httpAddr), 0o600))
		nodes = append(nodes, cn)
	}
	for i, cn := range nodes {
		var join []string
		for j, g := range gossip {
			if j != i {
				join = append(join, "--join", g)
			}
		}
		cn.p = startAgentNamed(t, cn.cfgPath, cn.name, join...)
	}
	return nodes
}

// startAgentNamed is startAgent with a node name of its own.
func startAgentNamed(t *testing.T, cfgPath, name string, args ...string) *agentProc {
	return startAgent(t, cfgPath, append([]string{"--node-name", name}, args...)...)
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
		d, leader, ok = converged(nodes[2].httpAddr)
		return ok && leader == "n1"
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
		_, leader, ok := converged(nodes[2].httpAddr)
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
		_, ok := getStatus(t, nodes[1].httpAddr, "/cachemachine/jupyter/nodes", &nv)
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
	nodes[0].p = startAgentNamed(t, nodes[0].cfgPath, "n1", "--join", joinAddrOf(t, nodes[1]))
	eventually(t, 60*time.Second, "n1 to rejoin and lead", func() bool {
		_, leader, ok := converged(nodes[2].httpAddr)
		if !ok || leader != "n1" {
			return false
		}
		_, ok = getStatus(t, nodes[2].httpAddr, "/cachemachine/jupyter/nodes", &nv)
		alive := 0
		for _, n := range nv.Nodes {
			if n.Alive {
				alive++
			}
		}
		return ok && alive == 3
	})
}

// joinAddrOf reads a node's gossip address from its config.
func joinAddrOf(t *testing.T, cn *clusterNode) string {
	b, err := os.ReadFile(cn.cfgPath)
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "bind_port: "); ok {
			return "127.0.0.1:" + p
		}
	}
	t.Fatal("no bind_port in config")
	return ""
}

func TestWrongGossipKeyDoesNotJoin(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	nodes := startCluster(t, 1, reg.Addr, "lsst/none")
	eventually(t, 30*time.Second, "the first node to serve", func() bool {
		var v []string
		_, ok := getStatus(t, nodes[0].httpAddr, "/cachemachine/", &v)
		return ok && slices.Equal(v, []string{"jupyter"})
	})

	// A second node with another key tries to join the first.
	other := &clusterNode{name: "n0", n: newNode(t)}
	b, err := os.ReadFile(nodes[0].cfgPath)
	require.NoError(t, err)
	other.cfgPath = filepath.Join(other.n.dir, "config.yaml")
	badKey := filepath.Join(other.n.dir, "bad.key")
	require.NoError(t, os.WriteFile(badKey, []byte(base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))), 0o600))
	cfg := string(b)
	cfg = strings.ReplaceAll(cfg, nodes[0].n.dir, other.n.dir)
	cfg = replaceLine(cfg, "gossip_key_file: ", "gossip_key_file: "+badKey)
	cfg = replaceLine(cfg, "bind_port: ", fmt.Sprintf("bind_port: %d", freePort(t)))
	cfg = replaceLine(cfg, "listen: ", fmt.Sprintf("listen: 127.0.0.1:%d", freePort(t)))
	cfg = replaceLine(cfg, "cri_socket: ", "cri_socket: "+other.n.cd.Endpoint())
	require.NoError(t, os.WriteFile(other.cfgPath, []byte(cfg), 0o600))
	p := startAgentNamed(t, other.cfgPath, "n0", "--join", joinAddrOf(t, nodes[0]))
	eventually(t, 30*time.Second, "a log line that says the key is wrong", func() bool {
		return strings.Contains(p.log.String(), "gossip key")
	})
	var nv struct {
		Nodes []struct {
			Name string `json:"name"`
		} `json:"nodes"`
	}
	_, ok := getStatus(t, nodes[0].httpAddr, "/cachemachine/jupyter/nodes", &nv)
	require.True(t, ok)
	for _, n := range nv.Nodes {
		require.NotEqual(t, "n0", n.Name, "a node with the wrong key joined")
	}
	require.NotContains(t, p.log.String(), "0123456789abcdef", "the key never appears in logs")
}

func replaceLine(s, prefix, with string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		trimmed := strings.TrimLeft(l, " ")
		if strings.HasPrefix(trimmed, prefix) {
			lines[i] = l[:len(l)-len(trimmed)] + with
		}
	}
	return strings.Join(lines, "\n")
}
