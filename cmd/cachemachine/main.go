// Command cachemachine keeps container images cached on every node of a Kubernetes pool.
// main is wiring only: flags and config, constructors, one errgroup, an exit code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/leader"
	"github.com/cachemachine/cachemachine/registry"
	"github.com/cachemachine/cachemachine/status"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: cachemachine COMMAND [flags]
commands:
  agent --config FILE [flags]   run the node agent (the DaemonSet process)
  debug node|pulls|desired|cluster|reconcile|pull IMAGE [--socket PATH] [-o json]
  version                       print the version`

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "agent":
		return agentMain(ctx, args[1:], stderr)
	case "debug":
		return debugMain(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "cachemachine %s\n", version)
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "cachemachine: unknown command %q\n%s\n", args[0], usage)
		return exitUsage
	}
}

func debugMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	d, err := parseDebugArgs(args, stderr)
	if err != nil {
		return exitUsage
	}
	err = agent.RunDebug(ctx, d.socket, d.command, d.json, stdout)
	switch {
	case errors.Is(err, agent.ErrUsage):
		fmt.Fprintln(stderr, err)
		return exitUsage
	case err != nil:
		fmt.Fprintf(stderr, "cachemachine debug: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// debugArgs is a parsed `cachemachine debug` command line.
type debugArgs struct {
	socket  string
	json    bool
	command []string // the command and its arguments
}

// parseDebugArgs takes the flags anywhere on the line, before, between or after the command
// and its arguments, as kubectl and crictl do: parse flags up to the first positional argument,
// take it, parse the rest again. A usage error has been printed to stderr already.
func parseDebugArgs(args []string, stderr io.Writer) (debugArgs, error) {
	fs := flag.NewFlagSet("debug", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", config.Default().Agent.DebugSocket, "path of the agent's debug socket")
	output := fs.String("o", "table", "output format: table or json")
	fs.Usage = func() { fmt.Fprintln(stderr, agent.DebugUsage); fs.PrintDefaults() }
	var command []string
	for {
		if err := fs.Parse(args); err != nil {
			return debugArgs{}, err
		}
		if fs.NArg() == 0 {
			break
		}
		command = append(command, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if *output != "table" && *output != "json" {
		err := fmt.Errorf("-o %q: want table or json", *output)
		fmt.Fprintf(stderr, "cachemachine debug: %v\n", err)
		return debugArgs{}, err
	}
	return debugArgs{socket: *socket, json: *output == "json", command: command}, nil
}

func agentMain(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "/etc/cachemachine/config.yaml", "configuration file")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	overrides := config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cachemachine agent: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	cfg, err := config.Load(*configPath)
	if err == nil {
		overrides.Apply(cfg)
		cfg.ApplyEnv(os.Getenv)
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "cachemachine agent: --log-level %q: want debug, info, warn or error\n", *logLevel)
		return exitUsage
	}
	if cfg.Agent.NodeName == "" {
		cfg.Agent.NodeName, _ = os.Hostname()
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})).With("node", cfg.Agent.NodeName)
	reg := prometheus.NewRegistry()
	files, err := loadFiles(cfg, logger, reg)
	if err != nil {
		fmt.Fprintf(stderr, "cachemachine agent: %v\n", err)
		return exitUsage
	}
	if err := run(ctx, cfg, files, logger, reg); err != nil {
		logger.Error("agent stopped", "err", err)
		return exitFailed
	}
	return exitOK
}

// files holds what the files the config names say. They are read before anything starts, so
// that a missing or malformed one is a configuration error (status 2 and one line naming the
// file), not the failure of a running agent.
type files struct {
	// dockerconfig is the one source of registry credentials, for pulls and for listings;
	// nil unless pull_auth is dockerconfig.
	dockerconfig *registry.DockerConfig
	// gossipKey is nil when the cluster is off or its gossip unencrypted.
	gossipKey []byte
	// notifications is the registry notifications endpoint, nil unless
	// http.notifications_token_file is set.
	notifications *registry.Notifications
}

// loadFiles reads agent.dockerconfig, cluster.gossip_key_file and
// http.notifications_token_file when the config uses them. reg receives the notifications'
// metrics.
func loadFiles(cfg *config.Config, logger *slog.Logger, reg prometheus.Registerer) (files, error) {
	var f files
	if cfg.Agent.PullAuth == config.PullAuthDockerconfig {
		dc, err := registry.LoadDockerConfig(cfg.Agent.Dockerconfig, logger.With("component", "credentials"))
		if err != nil {
			return files{}, fmt.Errorf("agent.dockerconfig: %w", err)
		}
		f.dockerconfig = dc
	}
	if cfg.Cluster.Enabled && !cfg.Cluster.InsecureGossip {
		key, err := coordinator.LoadKey(cfg.Cluster.GossipKeyFile)
		if err != nil {
			return files{}, fmt.Errorf("cluster.gossip_key_file: %w", err)
		}
		f.gossipKey = key
	}
	if cfg.HTTP.NotificationsTokenFile != "" {
		n, err := registry.NewNotifications(cfg.HTTP.NotificationsTokenFile, logger.With("component", "notifications"), reg)
		if err != nil {
			return files{}, fmt.Errorf("http.notifications_token_file: %w", err)
		}
		f.notifications = n
	}
	return f, nil
}

// run builds every component, runs them until ctx ends, and closes them. Metrics go to reg.
func run(ctx context.Context, cfg *config.Config, files files, logger *slog.Logger, reg *prometheus.Registry) error {
	logger.Info("starting", "version", version, "config", cfg.File())
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	rt, err := cri.New(ctx, cfg.Agent.CRISocket, cri.Options{PullTimeout: cfg.Agent.PullTimeout.Duration})
	if err != nil {
		return err
	}
	defer rt.Close()

	creds, err := pullCredentials(ctx, cfg, files)
	if err != nil {
		return err
	}
	var agentOpts []agent.Option
	switch ctd, err := containerd.New(ctx, cfg.Agent.CRISocket, containerd.Options{}); {
	case err == nil:
		defer ctd.Close()
		agentOpts = append(agentOpts, agent.WithPins(ctd), agent.WithDownloads(ctd))
	case errors.Is(err, containerd.ErrUnsupported):
		// Another CRI runtime (CRI-O): the agent pulls as before, without pins or progress.
		logger.Warn("no containerd images and content services on the CRI socket: no pinning, no pull progress", "err", err)
	default:
		// containerd restarting: fail, and let the pod restart, rather than run a life
		// without pins.
		return err
	}
	a, err := agent.New(agent.Config{
		Node:               cfg.Agent.NodeName,
		MaxParallelPulls:   cfg.Agent.MaxParallelPulls,
		PullTimeout:        cfg.Agent.PullTimeout.Duration,
		BackoffInitial:     cfg.Agent.BackoffInitial.Duration,
		BackoffMax:         cfg.Agent.BackoffMax.Duration,
		MinFreeDiskPercent: cfg.Agent.MinFreeDiskPercent,
		ResyncInterval:     cfg.Agent.ResyncInterval.Duration,
		StateDir:           cfg.Agent.StateDir,
		PinImages:          cfg.Agent.PinImages,
		MaxPinnedPercent:   cfg.Agent.MaxPinnedPercent,
	}, rt, creds, logger.With("component", "agent"), append(agentOpts, agent.WithRegisterer(reg))...)
	if err != nil {
		return err
	}
	defer a.Close()

	srcs, err := buildSources(ctx, cfg, files.keychain(), files.notifications, logger, reg)
	if err != nil {
		return err
	}
	defer srcs.close()

	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("http.listen %s: %w", cfg.HTTP.Listen, err)
	}
	defer ln.Close()

	cluster, err := newCluster(cfg, files.gossipKey, advertisedHTTP(cfg, ln.Addr()), a, logger.With("component", "cluster"), reg)
	if err != nil {
		return err
	}
	defer cluster.Close()

	lead, err := leader.New(leader.Config{
		Name: cfg.Name, Labels: cfg.Labels, RefreshInterval: cfg.RefreshInterval.Duration,
		WarmupGrace: cfg.Cluster.WarmupGrace.Duration,
	}, srcs.sources, cluster, a, logger.With("component", "leader"), reg, srcs.triggers...)
	if err != nil {
		return err
	}
	lead.RegisterMetrics(reg)

	debug, err := agent.NewDebugServer(cfg.Agent.DebugSocket, a, agent.DebugOptions{
		Refresh: lead.Refresh,
		Cluster: func() any { return lead.ClusterView(cluster.Status()) },
		Logger:  logger.With("component", "debug"),
	})
	if err != nil {
		return err
	}
	defer debug.Close()

	ready := func() bool { return a.Ready() && cluster.Ready() }
	statusOpts := []status.Option{status.WithLogger(logger.With("component", "http"))}
	if files.notifications != nil {
		statusOpts = append(statusOpts, status.WithNotifications(files.notifications))
	}
	srv := agent.NewHTTPServer(httpMux(a.Healthy, ready, reg, status.NewHandler(lead, statusOpts...)), agent.DefaultHTTPLimits)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.Run(ctx) })
	g.Go(func() error { return cluster.Run(ctx) })
	g.Go(func() error { return lead.Run(ctx) })
	g.Go(func() error { return debug.Run(ctx) })
	g.Go(func() error { return agent.Serve(ctx, srv, ln, agent.DefaultHTTPLimits) })
	logger.Info("running", "http", ln.Addr().String(), "debug_socket", cfg.Agent.DebugSocket, "cri_socket", cfg.Agent.CRISocket)
	err = g.Wait()
	logger.Info("stopped")
	return err
}

// cluster is the membership: memberlist gossip, or a cluster of one.
type cluster interface {
	leader.Cluster
	Run(ctx context.Context) error
	Close() error
	Ready() bool
	Status() coordinator.ClusterStatus
}

var (
	_ cluster = (*coordinator.Cluster)(nil)
	_ cluster = (*coordinator.Standalone)(nil)
)

// newCluster builds the gossip cluster, or the cluster of one when cluster.enabled is false.
// key is the gossip key loadFiles read.
func newCluster(cfg *config.Config, key []byte, httpAddr string, a *agent.Agent, logger *slog.Logger, reg prometheus.Registerer) (cluster, error) {
	if !cfg.Cluster.Enabled {
		return coordinator.NewStandalone(cfg.Agent.NodeName, httpAddr, a), nil
	}
	return coordinator.New(coordinator.Config{
		Name: cfg.Name, NodeName: cfg.Agent.NodeName,
		BindAddr: cfg.Cluster.BindAddr, BindPort: cfg.Cluster.BindPort, AdvertiseAddr: cfg.Cluster.AdvertiseAddr,
		Join: cfg.Cluster.Join, Key: key, Insecure: cfg.Cluster.InsecureGossip,
		HTTPAddr: httpAddr,
	}, a, logger, reg)
}

// The dockerconfig that lists registries also gives the pull credentials.
var _ agent.Credentials = (*registry.DockerConfig)(nil)

// pullCredentials builds the credential provider pull_auth names.
func pullCredentials(ctx context.Context, cfg *config.Config, files files) (agent.Credentials, error) {
	switch cfg.Agent.PullAuth {
	case config.PullAuthDockerconfig:
		return files.dockerconfig, nil
	case config.PullAuthGoogle:
		tc, err := gar.DefaultTokenCredentials(ctx)
		if err != nil {
			return nil, fmt.Errorf("agent.pull_auth google: %w", err)
		}
		return tc, nil
	default:
		return nil, nil
	}
}

// advertisedHTTP is the status API address other nodes use to reach this one.
func advertisedHTTP(cfg *config.Config, addr net.Addr) string {
	_, port, _ := net.SplitHostPort(addr.String())
	host := cfg.Cluster.AdvertiseAddr
	if host == "" && cfg.Cluster.BindAddr != "0.0.0.0" {
		host = cfg.Cluster.BindAddr
	}
	if host == "" {
		if h, _, err := net.SplitHostPort(cfg.HTTP.Listen); err == nil && h != "" && h != "0.0.0.0" {
			host = h
		}
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// httpMux serves liveness, readiness, metrics and the status API.
func httpMux(healthy func() error, ready func() bool, reg *prometheus.Registry, statusAPI http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := healthy(); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready() {
			http.Error(w, "not ready: no recent CRI inventory (container runtime unavailable?) or not joined the cluster", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle(status.Prefix, statusAPI)
	mux.Handle("/cachemachine", statusAPI)
	return mux
}
