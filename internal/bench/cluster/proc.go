package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// agentPlan is the directory and free loopback ports of one agent process, chosen before any
// agent starts since each one joins the others.
type agentPlan struct {
	name       string
	dir        string // the node's own directory
	gossipPort int
	httpPort   int
}

// newAgentPlan plans an agent in a new directory under parent, with free loopback ports.
func newAgentPlan(parent, name string) (agentPlan, error) {
	p := agentPlan{name: name, dir: filepath.Join(parent, name[:min(len(name), 8)])}
	var err error
	if p.gossipPort, err = lab.FreePort(); err != nil {
		return p, err
	}
	if p.httpPort, err = lab.FreePort(); err != nil {
		return p, err
	}
	return p, nil
}

func (p agentPlan) gossipAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.gossipPort) }

// agentSource is what an agent process caches: a SimpleRepoMan of images, digests[i] as the
// image_hash of images[i].
type agentSource struct {
	images, digests []string
}

// start runs bin as the planned agent on the runtime at criSocket: production defaults except
// the paths, src as its source, and keyed gossip on loopback joining join.
func (p agentPlan) start(bin, criSocket string, src agentSource, join []string, keyFile string) (*lab.Agent, error) {
	c := lab.AgentConfig(p.dir, criSocket)
	simple := config.DefaultRepoman(config.TypeSimpleRepoMan)
	for i, img := range src.images {
		simple.Images = append(simple.Images, config.Image{ImageURL: img, Name: fmt.Sprintf("image %d", i), ImageHash: src.digests[i]})
	}
	c.Repomen = []config.Repoman{simple}
	lab.LoopbackCluster(&c, p.gossipPort, p.httpPort, keyFile, join)
	return lab.StartAgent(lab.AgentOptions{Binary: bin, Node: p.name, Dir: p.dir, Config: c})
}

// newWorkDir creates a temporary directory for agent processes, with the gossip key file
// they read in it. The caller removes dir.
func newWorkDir(key []byte) (dir, keyFile string, err error) {
	if dir, err = os.MkdirTemp("", "cmb"); err != nil {
		return "", "", err
	}
	keyFile = filepath.Join(dir, "gossip.key")
	if err := lab.WriteGossipKey(keyFile, key); err != nil {
		os.RemoveAll(dir)
		return "", "", err
	}
	return dir, keyFile, nil
}

// httpGet fetches path from addr; it returns the status, the leader header and the body.
func httpGet(addr, path string, timeout time.Duration) (int, string, []byte, error) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Cachemachine-Leader"), body, err
}

// dump is the part of GET /cachemachine/{name} the bench checks.
type dump struct {
	CommonCache []struct {
		ImageURL  string `json:"image_url"`
		ImageHash string `json:"image_hash"`
	} `json:"common_cache"`
	ImagesToCache []struct {
		ImageURL string `json:"image_url"`
	} `json:"images_to_cache"`
}

// common returns common_cache as sorted "url@hash" strings.
func (d dump) common() []string {
	out := make([]string, 0, len(d.CommonCache))
	for _, c := range d.CommonCache {
		out = append(out, c.ImageURL+"@"+c.ImageHash)
	}
	slices.Sort(out)
	return out
}

// getDump fetches the dump; ok is false unless the answer is 200 with valid JSON.
func getDump(addr string, timeout time.Duration) (d dump, leader string, ok bool) {
	code, leader, body, err := httpGet(addr, "/cachemachine/jupyter", timeout)
	if err != nil || code != http.StatusOK {
		return d, leader, false
	}
	if json.Unmarshal(body, &d) != nil {
		return d, leader, false
	}
	return d, leader, true
}

// nodesView is the part of GET /cachemachine/{name}/nodes the bench checks.
type nodesView struct {
	Leader string `json:"leader"`
	Nodes  []struct {
		Name    string   `json:"name"`
		Alive   bool     `json:"alive"`
		Cached  []string `json:"cached"`
		Missing []string `json:"missing"`
	} `json:"nodes"`
}

// settled counts the alive nodes, and among them those with want images cached and none
// missing.
func (v nodesView) settled(want int) (alive, done int) {
	for _, n := range v.Nodes {
		if !n.Alive {
			continue
		}
		alive++
		if len(n.Cached) == want && len(n.Missing) == 0 {
			done++
		}
	}
	return alive, done
}

func getNodes(addr string, timeout time.Duration) (v nodesView, ok bool) {
	code, _, body, err := httpGet(addr, "/cachemachine/jupyter/nodes", timeout)
	if err != nil || code != http.StatusOK {
		return v, false
	}
	return v, json.Unmarshal(body, &v) == nil
}

// childPID finds our child process whose command line contains all of args.
func childPID(args ...string) (int, error) {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	self := strconv.Itoa(os.Getpid())
	for _, d := range dirs {
		st, err := os.ReadFile(filepath.Join(d, "status"))
		if err != nil || !strings.Contains(string(st), "\nPPid:\t"+self+"\n") {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		parts := strings.Split(string(cmdline), "\x00")
		if !containsAll(parts, args) {
			continue
		}
		return strconv.Atoi(filepath.Base(d))
	}
	return 0, fmt.Errorf("no child process with arguments %q", args)
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}
