// Package coordinator is the cluster side of cachemachine: memberlist wiring, the gossip wire
// format, the store of every node's state, the leader rule and the dissemination of the
// leader's desired list.
//
// Every agent is the only writer of its node state (versioned by agent.State.Version) and
// sends it to the leader with a reliable (TCP) memberlist send on every change, when the
// leader changes, and periodically; push/pull exchanges carry it too. The leader is the lowest
// alive node name. It publishes a versioned desired list to every member, and again to any
// node whose state shows an older desired version.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
)

// LocalAgent is what the coordinator needs from this node's agent; *agent.Agent implements it.
// All methods must be safe for concurrent use and must not block for long.
type LocalAgent interface {
	// State returns a copy of the node's current state.
	State() agent.State
	// Changes receives a value (coalesced) whenever State().Version grew.
	Changes() <-chan struct{}
	// Desired returns the desired list in force.
	Desired() agent.Desired
	// SetDesired installs d unless it is older than the list in force; it reports whether it did.
	SetDesired(agent.Desired) bool
}

// Config configures a Cluster.
type Config struct {
	// Name is the cache name. It is the memberlist label, so two pools never mix.
	Name string
	// NodeName is this node's name in the cluster (unique; the leader is the lowest).
	NodeName string
	// BindAddr and BindPort are where memberlist listens (UDP and TCP); BindPort 0 picks a
	// free port (tests).
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are what peers are told to use; "" and 0 mean
	// memberlist's defaults (the bind address, or a private IP when bound to 0.0.0.0, and the
	// bound port).
	AdvertiseAddr string
	AdvertisePort int
	// Join lists peers: DNS names (every address they resolve to is tried) and/or host:port;
	// the port defaults to BindPort, or 7946 when BindPort is 0.
	Join []string
	// Key is the AES key (16, 24 or 32 bytes) that encrypts and authenticates all gossip. It
	// is nil only when Insecure is set.
	Key []byte
	// Insecure runs gossip unencrypted (local demos and tests); New logs a warning.
	Insecure bool
	// HTTPAddr is this node's status API address ("ip:port"), carried in node metadata so
	// other nodes can reach the leader.
	HTTPAddr string
}

// inboxSize is how many received messages wait for the run loop before more are dropped.
const inboxSize = 1024

// Cluster is this node's membership in the gossip cluster. Create it with New, then call Run;
// its query methods are safe for concurrent use from any goroutine and never block on the
// network.
type Cluster struct {
	cfg      Config
	t        timings
	local    LocalAgent
	log      *slog.Logger
	mlLog    *slog.Logger // memberlist's own log lines
	metrics  *metrics
	drops    *dropLog // rejected gossip input: counted, logged rate-limited
	boot     uint64   // New's time in ns, in metadata: tells a restarted node from its predecessor
	ml       *memberlist.Memberlist
	advert   string // our gossip "ip:port", excluded from join targets
	joinPort int    // default port of join entries

	inbox    chan []byte   // messages from the delegate to the run loop
	memberCh chan struct{} // membership changed or ready (coalesced)
	leaderCh chan struct{} // LeaderChanges (coalesced)
	newerCh  chan struct{} // Superseded (coalesced)
	metaCh   chan struct{} // metadata needs an update (coalesced)
	sendq    chan sendJob  // to the sender goroutines

	running atomic.Bool   // Run was called
	ready   atomic.Bool   // first join attempt done
	metaVer atomic.Uint64 // state version announced in metadata
	metaBig atomic.Bool   // the metadata-too-large warning was logged
	leaving atomic.Bool   // announced in metadata just before a graceful leave

	downMu sync.Mutex // serializes leaving and shutting down memberlist; guards down
	down   bool       // memberlist was shut down

	mu      sync.Mutex // guards the fields below
	members map[string]member
	// alive counts the alive members (this node included); leader is the lowest alive name.
	// memberEvent keeps both current, so neither costs a pass over the members.
	alive  int
	leader string
	states nodeStore
	// localWire is this node's encoded state, returned by LocalState, in format version
	// localVersion (see stateVersion).
	localWire    []byte
	localVersion byte
	// localStateVersion is the version of the state in localWire, published at localUpdated.
	localStateVersion uint64
	localUpdated      time.Time
	// leaderID is the leader as the run loop last saw it: name + "/" + boot, "" before ready.
	leaderID string
	// highestDesired is the highest desired version seen anywhere (own list, received lists,
	// other nodes' states): a new list is published above it.
	highestDesired uint64
	// supersededAt is when the leader last signalled Superseded.
	supersededAt time.Time
	// desiredWire caches the encoded desired list of version desiredWireVer.
	desiredWire    []byte
	desiredWireVer uint64
	// desiredSent is the last desired version sent to each node, for catch-up throttling.
	desiredSent map[string]sentMark
}

// New validates cfg and creates the memberlist instance, which binds its UDP and TCP listeners
// right away (memberlist has no separate start), but joins nobody until Run. logger may be
// nil; reg may be nil (metrics then are not registered). Production passes no opts; they
// exist for tests and simulations (WithTestTimings, WithMemberlistTuning).
func New(cfg Config, local LocalAgent, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Cluster, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	if local == nil {
		return nil, errors.New("coordinator: local agent is nil")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("coordinator: registering metrics: %w", err)
	}
	c := &Cluster{
		cfg:         cfg,
		t:           timingsFor(o.fast),
		local:       local,
		log:         logger.With("component", "coordinator"),
		mlLog:       logger.With("component", "memberlist"),
		metrics:     m,
		boot:        uint64(time.Now().UnixNano()),
		inbox:       make(chan []byte, inboxSize),
		memberCh:    make(chan struct{}, 1),
		leaderCh:    make(chan struct{}, 1),
		newerCh:     make(chan struct{}, 1),
		metaCh:      make(chan struct{}, 1),
		sendq:       make(chan sendJob, sendQueue),
		members:     map[string]member{},
		states:      newNodeStore(),
		desiredSent: map[string]sentMark{},
	}
	c.drops = newDropLog(c.log, m.dropped)
	c.joinPort = cfg.BindPort
	if c.joinPort == 0 {
		c.joinPort = 7946
	}
	st := local.State()
	if err := c.encodeLocal(st); err != nil {
		return nil, err
	}
	c.highestDesired = max(st.DesiredVersion, local.Desired().Version)

	mlc := memberlistConfig(cfg, o.fast)
	if o.tune != nil {
		o.tune(mlc)
	}
	mlc.Delegate = delegate{c}
	mlc.Events = delegate{c}
	mlc.Logger = memberlistLogger(c.mlLog, c.drops)
	tr, err := c.newTransport(mlc, o.limits)
	if err != nil {
		return nil, err
	}
	mlc.Transport = tr
	ml, err := memberlist.Create(mlc)
	if err != nil {
		_ = tr.Shutdown()
		return nil, fmt.Errorf("coordinator: starting memberlist: %w", err)
	}
	c.ml = ml
	local0 := ml.LocalNode()
	c.advert = net.JoinHostPort(local0.Addr.String(), fmt.Sprint(local0.Port))
	if cfg.Insecure {
		c.log.Warn("gossip is not encrypted (insecure_gossip): use only for local demos and tests")
	}
	c.log.Info("gossip listening", "node", cfg.NodeName, "addr", c.advert, "label", cfg.Name)
	return c, nil
}

func validate(cfg Config) error {
	switch {
	case cfg.Name == "":
		return errors.New("coordinator: cache name is empty")
	case len(cfg.Name) > memberlist.LabelMaxSize:
		return fmt.Errorf("coordinator: cache name is %d bytes, at most %d", len(cfg.Name), memberlist.LabelMaxSize)
	case cfg.NodeName == "":
		return errors.New("coordinator: node name is empty")
	case len(cfg.NodeName) > maxNodeName || !utf8.ValidString(cfg.NodeName):
		return fmt.Errorf("coordinator: node name %q: at most %d bytes of UTF-8", cfg.NodeName, maxNodeName)
	case cfg.BindPort < 0 || cfg.BindPort > 65535:
		return fmt.Errorf("coordinator: bind port %d out of range", cfg.BindPort)
	case cfg.AdvertisePort < 0 || cfg.AdvertisePort > 65535:
		return fmt.Errorf("coordinator: advertise port %d out of range", cfg.AdvertisePort)
	case cfg.Insecure && len(cfg.Key) > 0:
		return errors.New("coordinator: both a gossip key and insecure gossip are set: choose one")
	case !cfg.Insecure && len(cfg.Key) == 0:
		return errors.New("coordinator: a gossip key is required (or insecure gossip for demos and tests)")
	}
	if !cfg.Insecure {
		if err := checkKey(cfg.Key); err != nil {
			return fmt.Errorf("coordinator: gossip key: %w", err)
		}
	}
	return nil
}

// newTransport binds memberlist's sockets through a byte-counting wrapper whose guard has
// limits (tests shrink them). With BindPort 0 it retries like memberlist does: the kernel's
// free TCP port may be taken for UDP.
func (c *Cluster) newTransport(mlc *memberlist.Config, limits inboundLimits) (*countingTransport, error) {
	bindAddr := mlc.BindAddr
	if bindAddr == "" {
		bindAddr = "0.0.0.0"
	}
	tries := 1
	if mlc.BindPort == 0 {
		tries = 10
	}
	var nt *memberlist.NetTransport
	var err error
	for range tries {
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{bindAddr},
			BindPort:  mlc.BindPort,
			Logger:    mlc.Logger,
		})
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("coordinator: binding gossip port: %w", err)
	}
	if mlc.BindPort == 0 {
		mlc.BindPort = nt.GetAutoBindPort()
	}
	if mlc.AdvertisePort == 0 {
		mlc.AdvertisePort = mlc.BindPort
	}
	if limits.deadline == 0 {
		limits.deadline = mlc.TCPTimeout
	}
	guard := newInboundGuard(guardConfig{
		label:       mlc.Label,
		encrypted:   (len(mlc.SecretKey) > 0 || mlc.Keyring != nil) && mlc.GossipVerifyIncoming,
		compression: mlc.EnableCompression,
		limits:      limits,
	}, c.drops, c.metrics.inboundStreams)
	return newCountingTransport(nt, c.metrics.bytesSent, c.metrics.bytesRecv, guard), nil
}

// Run joins the cluster and serves it until ctx ends, then leaves (bounded) and shuts
// memberlist down. It blocks; call it once. Join failures are logged, never returned: when no
// peer answers the first attempt, the node starts alone (and is ready), and keeps retrying in
// the background for as long as it is alone.
func (c *Cluster) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("coordinator: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() { c.sender(ctx) })
	}
	wg.Go(func() { c.metaUpdater(ctx) })
	wg.Go(func() { c.joiner(ctx) })
	c.loop(ctx)
	cancel()
	wg.Wait()
	return c.shutdown(true)
}

// Close shuts memberlist down if Run has not (without leaving: a node that ran has left in
// Run). It is idempotent.
func (c *Cluster) Close() error { return c.shutdown(false) }

func (c *Cluster) shutdown(leave bool) error {
	c.downMu.Lock()
	defer c.downMu.Unlock()
	if c.down {
		return nil
	}
	c.down = true
	if leave {
		// Say we are leaving (others then record "left", not "failed"), then leave.
		// The dead message of Leave supersedes our queued alive message, so give the flag a
		// few gossip rounds to spread first.
		c.leaving.Store(true)
		if err := c.ml.UpdateNode(c.t.metaTimeout); err != nil {
			c.log.Debug("announcing leave in metadata", "err", err)
		}
		time.Sleep(c.t.leaveSpread)
		if err := c.ml.Leave(c.t.leave); err != nil {
			c.log.Warn("leaving the cluster", "err", err)
		} else {
			c.log.Info("left the cluster")
		}
	}
	if err := c.ml.Shutdown(); err != nil {
		return fmt.Errorf("coordinator: shutting down memberlist: %w", err)
	}
	return nil
}

// loop is the run loop: it owns the handling of local changes, messages, membership changes
// and the periodic backstop.
func (c *Cluster) loop(ctx context.Context) {
	tick := time.NewTicker(c.t.backstop)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.local.Changes():
			c.localChanged()
		case b := <-c.inbox:
			c.handle(b)
		case <-c.memberCh:
			c.membershipChanged()
		case <-tick.C:
			c.backstop()
		}
	}
}

// handle decodes one message from the delegate and acts on it.
func (c *Cluster) handle(b []byte) {
	m, err := decodeMessage(b)
	if err != nil {
		c.drop(dropReason(err), err.Error())
		return
	}
	switch m.Type {
	case msgState:
		c.metrics.received.WithLabelValues(m.Type.String()).Inc()
		c.handleState(stateFromWire(m.State), m.Version)
	case msgDesired:
		c.metrics.received.WithLabelValues(m.Type.String()).Inc()
		c.handleDesired(m.Desired.From, desiredFromWire(m.Desired))
	}
}

// backstop resends this node's state to the leader; on the leader, re-sends the desired list
// to nodes still behind; and reaps departed nodes.
func (c *Cluster) backstop() {
	c.sendStateToLeader()
	signal(c.metaCh) // refresh the state version in metadata, at most once per backstop
	now := time.Now()
	c.mu.Lock()
	c.states.reap(func(n string) bool { return c.members[n].alive }, now, c.t.reapAfter)
	for name, mb := range c.members {
		if !mb.alive && now.Sub(mb.since) > c.t.reapAfter {
			delete(c.members, name)
		}
	}
	for name := range c.desiredSent {
		if !c.members[name].alive {
			delete(c.desiredSent, name)
		}
	}
	c.mu.Unlock()
	c.catchUpAll()
}

func (c *Cluster) drop(reason, detail string) {
	c.metrics.dropped.WithLabelValues(reason).Inc()
	c.log.Debug("gossip message dropped", "reason", reason, "err", detail)
}

// Ready reports whether the node has joined the cluster, or started alone after trying.
func (c *Cluster) Ready() bool { return c.ready.Load() }
