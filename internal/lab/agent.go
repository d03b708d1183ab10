package lab

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachemachine/cachemachine/config"
)

const (
	// AgentStopGrace is how long an agent may take to leave the cluster after SIGTERM before
	// Stop kills it.
	AgentStopGrace = 15 * time.Second
	// agentPollInterval is the period of WaitReady's /readyz polls.
	agentPollInterval = 100 * time.Millisecond
	// exitTailLines is how much of the log ExitErr quotes.
	exitTailLines = 15
)

// AgentConfig returns config.Default() for an agent of the lab: the runtime at criEndpoint,
// the state dir and debug socket under dir, standalone (cluster disabled), and the status API
// on loopback port 0, which StartAgent replaces with a free port (so that HTTPAddr, readiness
// and Metrics reach it). Callers set the sources and whatever else they vary; LoopbackCluster
// turns gossip on.
func AgentConfig(dir, criEndpoint string) config.Config {
	c := config.Default()
	c.Agent.CRISocket = criEndpoint
	c.Agent.StateDir = filepath.Join(dir, "state")
	c.Agent.DebugSocket = filepath.Join(dir, "agent.sock")
	c.Cluster.Enabled = false
	c.HTTP.Listen = "127.0.0.1:0"
	return c
}

// LoopbackCluster turns gossip on in c: memberlist on 127.0.0.1:gossipPort, keyed with the key
// in keyFile (see WriteGossipKey), joining join; the status API on 127.0.0.1:httpPort.
func LoopbackCluster(c *config.Config, gossipPort, httpPort int, keyFile string, join []string) {
	c.Cluster.Enabled = true
	c.Cluster.BindAddr = "127.0.0.1"
	c.Cluster.BindPort = gossipPort
	c.Cluster.GossipKeyFile = keyFile
	c.Cluster.Join = append([]string{}, join...)
	c.HTTP.Listen = "127.0.0.1:" + strconv.Itoa(httpPort)
}

// WriteGossipKey writes key, base64-encoded as the agent reads it, to path (mode 0600).
func WriteGossipKey(path string, key []byte) error {
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write gossip key: %w", err)
	}
	return nil
}

// AgentOptions configure StartAgent.
type AgentOptions struct {
	// Binary is the built cachemachine binary.
	Binary string
	// Node is the node name, passed as --node-name.
	Node string
	// Dir is the agent's own directory, created if missing: Config is written to
	// Dir/config.yaml and the agent's output is appended to Dir/agent.log.
	Dir string
	// Config is the agent's configuration (see AgentConfig).
	Config config.Config
	// Args are more flags, after --config and --node-name; flags win over the file.
	Args []string
	// Env is added to the agent's environment ("KEY=value"), e.g. PUBSUB_EMULATOR_HOST.
	Env []string
}

// Agent is the cachemachine binary running as `cachemachine agent`, a child process of the
// caller, with its configuration and log in its own directory. It is the one agent-process
// harness of the end-to-end tests, the demo and the benchmarks. Its methods are meant to be
// called from one goroutine.
type Agent struct {
	opts     AgentOptions
	proc     *Process // the current or last run; nil before the first start
	logStart int64    // size of agent.log when the current run started
	client   *http.Client
}

// StartAgent writes opts.Config to Dir/config.yaml and starts the agent. It does not wait for
// it: see WaitReady.
func StartAgent(opts AgentOptions) (*Agent, error) {
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start agent %s: %w", opts.Node, err)
	}
	a := &Agent{opts: opts, client: &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}}
	if host, port, err := net.SplitHostPort(opts.Config.HTTP.Listen); err == nil && port == "0" {
		free, err := FreePort()
		if err != nil {
			return nil, fmt.Errorf("start agent %s: %w", opts.Node, err)
		}
		a.opts.Config.HTTP.Listen = net.JoinHostPort(host, strconv.Itoa(free))
	}
	if err := a.opts.Config.WriteFile(a.ConfigPath()); err != nil {
		return nil, fmt.Errorf("start agent %s: %w", opts.Node, err)
	}
	if err := a.Start(); err != nil {
		return nil, err
	}
	return a, nil
}

// NewAgent is StartAgent for tests: it fails t on error, stops the agent when the test ends
// (failing t if it needs SIGKILL) and logs the agent's output when t failed.
func NewAgent(t testing.TB, opts AgentOptions) *Agent {
	t.Helper()
	a, err := StartAgent(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Stop(); err != nil {
			t.Errorf("%v", err)
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", a.Node(), a.Log())
		}
	})
	return a
}

// Start runs the agent again, with the same configuration and flags, after Stop or Kill.
func (a *Agent) Start() error {
	if a.proc != nil && !a.proc.Exited() {
		return fmt.Errorf("start agent %s: already running", a.opts.Node)
	}
	log, err := os.OpenFile(a.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start agent %s: %w", a.opts.Node, err)
	}
	// The child writes to its own copy of the descriptor; ours is not needed past Start.
	defer log.Close()
	fi, err := log.Stat()
	if err != nil {
		return fmt.Errorf("start agent %s: %w", a.opts.Node, err)
	}
	args := append([]string{"agent", "--config", a.ConfigPath(), "--node-name", a.opts.Node}, a.opts.Args...)
	proc, err := StartProcessEnv(a.opts.Binary, args, a.opts.Env, log)
	if err != nil {
		return fmt.Errorf("start agent %s: %w", a.opts.Node, err)
	}
	a.proc, a.logStart = proc, fi.Size()
	return nil
}

// Node is the agent's node name.
func (a *Agent) Node() string { return a.opts.Node }

// Dir is the agent's directory.
func (a *Agent) Dir() string { return a.opts.Dir }

// Config is the configuration the agent was started with.
func (a *Agent) Config() config.Config { return a.opts.Config }

// ConfigPath is the agent's config.yaml.
func (a *Agent) ConfigPath() string { return filepath.Join(a.opts.Dir, "config.yaml") }

// LogPath is the file the agent's output is appended to, over all its runs.
func (a *Agent) LogPath() string { return filepath.Join(a.opts.Dir, "agent.log") }

// HTTPAddr is the status API address of the configuration (http.listen).
func (a *Agent) HTTPAddr() string { return a.opts.Config.HTTP.Listen }

// GossipAddr is the memberlist address of the configuration, for other agents to join.
func (a *Agent) GossipAddr() string {
	return net.JoinHostPort(a.opts.Config.Cluster.BindAddr, strconv.Itoa(a.opts.Config.Cluster.BindPort))
}

// Pid is the process ID of the current or last run.
func (a *Agent) Pid() int { return a.proc.Pid() }

// Done is closed once the current run has exited.
func (a *Agent) Done() <-chan struct{} { return a.proc.Done() }

// Exited reports whether the current run has exited.
func (a *Agent) Exited() bool { return a.proc.Exited() }

// ExitErr returns nil while the agent runs, else why it exited, with the end of its log.
func (a *Agent) ExitErr() error {
	if !a.proc.Exited() {
		return nil
	}
	err := a.proc.Err()
	if err == nil {
		err = errors.New("exited")
	}
	return fmt.Errorf("agent %s: %w\n--- end of %s ---\n%s", a.opts.Node, err, a.LogPath(), a.Tail(exitTailLines))
}

// Stop sends SIGTERM and waits AgentStopGrace for the agent to leave the cluster and exit,
// then kills it. It returns an error only when the agent ignored SIGTERM; stopping an agent
// that is not running does nothing (ExitErr says why it exited).
func (a *Agent) Stop() error {
	if a.proc == nil || a.proc.Exited() {
		return nil
	}
	if err := a.proc.Stop(AgentStopGrace); err != nil {
		return fmt.Errorf("agent %s: %w", a.opts.Node, err)
	}
	return nil
}

// Kill sends SIGKILL (a crashed node) and waits for the process.
func (a *Agent) Kill() {
	if a.proc != nil {
		a.proc.Kill()
	}
}

// WaitReady polls GET /readyz on the status API until it answers 200 (the first CRI inventory
// succeeded and the agent joined the cluster), the agent exits, ctx ends or timeout passes.
func (a *Agent) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(agentPollInterval)
	defer tick.Stop()
	last := "no answer"
	for {
		if answer, ok := a.ready(ctx); ok {
			return nil
		} else if answer != "" {
			last = answer
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent %s not ready after %s (last /readyz: %s); see %s", a.opts.Node, timeout, last, a.LogPath())
		case <-a.proc.Done():
			return a.ExitErr()
		case <-tick.C:
		}
	}
}

// ready makes one /readyz request; answer describes a non-200 answer ("" when none came).
func (a *Agent) ready(ctx context.Context) (answer string, ok bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.HTTPAddr()+"/readyz", nil)
	if err != nil {
		return err.Error(), false
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode == http.StatusOK {
		return "", true
	}
	return fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body)), false
}

// Log returns the output of the current or last run.
func (a *Agent) Log() string {
	f, err := os.Open(a.LogPath())
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, a.logStart, 1<<40))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Tail returns the last n lines of Log.
func (a *Agent) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(a.Log(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Memory reads the current run's resident memory (ProcMemory).
func (a *Agent) Memory() (Memory, error) { return ProcMemory(a.Pid()) }

// metricsTimeout bounds one GET /metrics: longer than readiness polls, since a loaded agent
// may take a moment to render its metrics.
const metricsTimeout = 5 * time.Second

// Metrics fetches GET /metrics from the status API and returns every sample by its series as
// the text exposition prints it: `name`, or `name{label="value",…}` with the labels sorted.
func (a *Agent) Metrics(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, metricsTimeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	body, err := GetBody(ctx, client, "http://"+a.HTTPAddr()+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("agent %s metrics: %w", a.opts.Node, err)
	}
	out := map[string]float64{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		i := strings.LastIndexByte(line, ' ')
		if line == "" || line[0] == '#' || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}
