package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// agentReadyTimeout bounds the wait for every agent's /readyz (CRI answered and cluster
// joined).
const agentReadyTimeout = 60 * time.Second

// nodePlan is everything one agent's config needs; plans are made for all nodes before any
// agent starts, since each one joins the others.
type nodePlan struct {
	name       string
	dir        string // the node's own directory in the demo's temp dir
	criSocket  string // "unix://…"
	gossipPort int    // on 127.0.0.1
	httpPort   int    // on 127.0.0.1
}

func (p nodePlan) httpAddr() string   { return fmt.Sprintf("127.0.0.1:%d", p.httpPort) }
func (p nodePlan) gossipAddr() string { return fmt.Sprintf("127.0.0.1:%d", p.gossipPort) }

// agentConfig is one node's configuration: the RubinRepoGar source on the fake Artifact
// Registry with its Pub/Sub subscription sub, fast timings, and the other nodes as join
// addresses.
func agentConfig(p nodePlan, all []nodePlan, garAddr, sub, keyFile string) config.Config {
	var join []string
	for _, o := range all {
		if o.name != p.name {
			join = append(join, o.gossipAddr())
		}
	}
	c := lab.AgentConfig(p.dir, p.criSocket)
	c.RefreshInterval = config.Duration{Duration: time.Minute}
	src := config.DefaultRepoman(config.TypeRubinRepoGar)
	src.ProjectID, src.Location, src.GARRepository, src.GARImage = "rubin", "us-central1", "sciplat", "sciplat-lab"
	src.NumReleases, src.NumWeeklies, src.NumDailies = 1, 2, 2
	src.Endpoint, src.InsecureEndpoint = garAddr, true
	src.PubSubSubscription = sub
	c.Repomen = []config.Repoman{src}
	c.Agent.PullTimeout = config.Duration{Duration: 2 * time.Minute}
	c.Agent.BackoffInitial = config.Duration{Duration: time.Second}
	c.Agent.BackoffMax = config.Duration{Duration: 5 * time.Second}
	c.Agent.ResyncInterval = config.Duration{Duration: 2 * time.Second}
	c.Agent.MinFreeDiskPercent = 5
	lab.LoopbackCluster(&c, p.gossipPort, p.httpPort, keyFile, join)
	return c
}

// warnings returns the last n warning or error lines of an agent's JSON log.
func warnings(log string, n int) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) {
			out = append(out, "  "+l)
		}
	}
	return strings.Join(out[max(0, len(out)-n):], "\n")
}
