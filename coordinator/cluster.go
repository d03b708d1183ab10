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
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// ErrNotLeader is returned by PublishDesired on a node that is not the leader.
var ErrNotLeader = errors.New("coordinator: not the leader")

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
	// Fast selects test timings (gossip ~10 ms, probe ~50 ms, push/pull ~100 ms).
	Fast bool
	// Tune, when set, adjusts memberlist's configuration after cachemachine's own settings.
	// It exists for simulations that run hundreds of nodes in one process (bench-cluster);
	// production leaves it nil.
	Tune func(*memberlist.Config)

	// limits overrides the defaults of the inbound stream guard (tests shrink them).
	limits inboundLimits
}

// Member is one node of the cluster as this node sees it.
type Member struct {
	Name string `json:"name"`
	// Addr is the node's gossip address, "ip:port".
	Addr string `json:"addr"`
	// State is "alive", "left" or "failed".
	State  string `json:"state"`
	Alive  bool   `json:"alive"`
	Leader bool   `json:"leader"`
	// HTTPAddr is the node's status API address, from its metadata.
	HTTPAddr string `json:"http_addr,omitempty"`
	// StateVersion is the node's state version as its metadata announces it (refreshed by
	// the 30 s backstop, not on every change; StoredVersion is the fresh one on the leader).
	StateVersion uint64 `json:"state_version"`
	// StoredVersion is the version of the node's state this node holds (0: none).
	StoredVersion uint64 `json:"stored_version"`
}

// NodeState is the newest known state of one node, in its wire projection (image IDs and the
// disk path are not carried; see the package's wire format).
type NodeState struct {
	agent.State
	// Alive is whether the node is an alive member now.
	Alive bool `json:"alive"`
}

// ClusterStatus is a JSON-able summary for `cachemachine debug cluster`.
type ClusterStatus struct {
	Node           string   `json:"node"`
	Ready          bool     `json:"ready"`
	Leader         string   `json:"leader"`
	LeaderHTTPAddr string   `json:"leader_http_addr,omitempty"`
	IsLeader       bool     `json:"is_leader"`
	DesiredVersion uint64   `json:"desired_version"`
	Members        []Member `json:"members"`
}

// timings are the coordinator's own intervals; memberlist's are in memberlistConfig.
type timings struct {
	backstop      time.Duration // resend own state to the leader; leader re-checks desired versions
	desiredResend time.Duration // least gap between sends of one desired version to one node
	joinMin       time.Duration // join retry backoff while alone
	joinMax       time.Duration
	joinedPoll    time.Duration // how often the joiner checks whether the node is alone
	reapAfter     time.Duration // forget departed nodes (tombstones) after this
	metaMin       time.Duration // least gap between metadata updates (alive broadcasts)
	metaTimeout   time.Duration // UpdateNode's wait for the broadcast
	leave         time.Duration // Leave's wait for the leave broadcast
	leaveSpread   time.Duration // pause between announcing the leave in metadata and leaving
	resolve       time.Duration // DNS lookups of join names
}

func timingsFor(fast bool) timings {
	if fast {
		return timings{
			backstop:      300 * time.Millisecond,
			desiredResend: 100 * time.Millisecond,
			joinMin:       50 * time.Millisecond,
			joinMax:       500 * time.Millisecond,
			joinedPoll:    50 * time.Millisecond,
			reapAfter:     5 * time.Second,
			metaMin:       20 * time.Millisecond,
			metaTimeout:   200 * time.Millisecond,
			leave:         500 * time.Millisecond,
			leaveSpread:   50 * time.Millisecond,
			resolve:       time.Second,
		}
	}
	return timings{
		backstop:      30 * time.Second,
		desiredResend: 5 * time.Second,
		joinMin:       time.Second,
		joinMax:       30 * time.Second,
		joinedPoll:    time.Second,
		reapAfter:     5 * time.Minute,
		metaMin:       time.Second,
		metaTimeout:   time.Second,
		leave:         5 * time.Second,
		leaveSpread:   500 * time.Millisecond,
		resolve:       5 * time.Second,
	}
}

// memberlistConfig returns memberlist's configuration: LAN defaults tuned so that a failed
// leader is declared dead within ~2–3 s at small N (the failover target is ≤ 5 s end to end).
func memberlistConfig(cfg Config) *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = cfg.NodeName
	c.Label = cfg.Name
	c.BindAddr = cfg.BindAddr
	c.BindPort = cfg.BindPort
	c.AdvertiseAddr = cfg.AdvertiseAddr
	c.AdvertisePort = cfg.AdvertisePort
	// No LZW on every packet: our own messages are deflated already, and memberlist's
	// per-packet compressor allocates and clears a fresh table for each ping and ack. Raw
	// membership traffic stays well inside the per-node budget (see bench-cluster).
	c.EnableCompression = false
	if !cfg.Insecure {
		c.SecretKey = cfg.Key
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	if cfg.Fast {
		// Loopback tests: everything 10–20× faster, suspicion still long enough for a busy
		// -race test process to refute a false suspicion.
		c.TCPTimeout = time.Second
		c.ProbeInterval = 50 * time.Millisecond
		c.ProbeTimeout = 40 * time.Millisecond
		c.SuspicionMult = 4
		c.SuspicionMaxTimeoutMult = 3
		c.GossipInterval = 10 * time.Millisecond
		c.GossipToTheDeadTime = 500 * time.Millisecond
		// Without a short push/pull a node can stay unaware of a late joiner for seconds.
		c.PushPullInterval = 100 * time.Millisecond
		c.DeadNodeReclaimTime = 100 * time.Millisecond
		return c
	}
	// Probe one member every 500 ms (default 1 s) and give it 250 ms to answer (default
	// 500 ms; an in-cluster RTT is well under 10 ms): a dead leader is probed, and its probe
	// fails, within ~1 s.
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	// Suspicion lasts SuspicionMult × max(1, log10 N) × ProbeInterval = 1.5 s up to N = 10
	// (3 s at 100), shortened towards that minimum by other members' confirmations; the
	// maximum without confirmations is 3× that. Default mult 4/6 would mean 2 s/12 s.
	c.SuspicionMult = 3
	c.SuspicionMaxTimeoutMult = 3
	// Gossip (suspect/dead/alive news) every 100 ms (default 200 ms) to 3 members.
	c.GossipInterval = 100 * time.Millisecond
	c.GossipToTheDeadTime = 15 * time.Second
	// Push/pull is only the backstop (states go to the leader by direct sends); memberlist
	// scales it up above 32 members, keeping its traffic bounded (default 30 s).
	c.PushPullInterval = 15 * time.Second
	// Dial, read and write timeout of every TCP exchange (default 10 s): also bounds how long
	// a send to a dead leader, or a join attempt, holds a goroutine.
	c.TCPTimeout = 3 * time.Second
	// A restarted pod comes back under the same node name with a new IP.
	c.DeadNodeReclaimTime = 5 * time.Second
	return c
}

// member is one node as membership events last described it.
type member struct {
	name  string
	addr  string // "ip:port"
	ip    net.IP
	port  uint16
	alive bool
	state string // alive, left, failed
	since time.Time
	meta  nodeMeta
}

// sentMark records the last desired version sent to a node.
type sentMark struct {
	version uint64
	at      time.Time
}

type sendJob struct {
	to   memberlist.Node
	typ  msgType
	data []byte
}

const (
	inboxSize = 1024
	sendQueue = 1024
	senders   = 4
)

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
	// localWire is this node's encoded state, returned by LocalState.
	localWire []byte
	// leaderID is the leader as the run loop last saw it: name + "/" + boot, "" before ready.
	leaderID string
	// highestDesired is the highest desired version seen anywhere (own list, received lists,
	// other nodes' states): a new list is published above it.
	highestDesired uint64
	// desiredWire caches the encoded desired list of version desiredWireVer.
	desiredWire    []byte
	desiredWireVer uint64
	// desiredSent is the last desired version sent to each node, for catch-up throttling.
	desiredSent map[string]sentMark
}

// New validates cfg and creates the memberlist instance, which binds its UDP and TCP listeners
// right away (memberlist has no separate start), but joins nobody until Run. logger may be
// nil; reg may be nil (metrics then are not registered).
func New(cfg Config, local LocalAgent, logger *slog.Logger, reg prometheus.Registerer) (*Cluster, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	if local == nil {
		return nil, errors.New("coordinator: local agent is nil")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("coordinator: registering metrics: %w", err)
	}
	c := &Cluster{
		cfg:         cfg,
		t:           timingsFor(cfg.Fast),
		local:       local,
		log:         logger.With("component", "coordinator"),
		mlLog:       logger.With("component", "memberlist"),
		metrics:     m,
		boot:        uint64(time.Now().UnixNano()),
		inbox:       make(chan []byte, inboxSize),
		memberCh:    make(chan struct{}, 1),
		leaderCh:    make(chan struct{}, 1),
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

	mlc := memberlistConfig(cfg)
	if cfg.Tune != nil {
		cfg.Tune(mlc)
	}
	mlc.Delegate = delegate{c}
	mlc.Events = delegate{c}
	mlc.Logger = memberlistLogger(c.mlLog, c.drops)
	tr, err := c.newTransport(mlc)
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

// newTransport binds memberlist's sockets through a byte-counting wrapper. With BindPort 0 it
// retries like memberlist does: the kernel's free TCP port may be taken for UDP.
func (c *Cluster) newTransport(mlc *memberlist.Config) (*countingTransport, error) {
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
	limits := c.cfg.limits
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

// encodeLocal encodes this node's state for sending and for LocalState.
func (c *Cluster) encodeLocal(st agent.State) error {
	b, err := encodeMessage(message{Type: msgState, State: project(c.cfg.NodeName, st)})
	if err != nil {
		return fmt.Errorf("coordinator: encoding own state: %w", err)
	}
	c.mu.Lock()
	c.localWire = b
	c.highestDesired = max(c.highestDesired, st.DesiredVersion)
	c.mu.Unlock()
	c.metaVer.Store(st.Version)
	return nil
}

func (c *Cluster) localChanged() {
	if err := c.encodeLocal(c.local.State()); err != nil {
		c.log.Error("own state not sent", "err", err)
		return
	}
	// No metadata update here: UpdateNode makes memberlist re-broadcast to every member, so
	// announcing each change costs O(members) per change per node. States reach the leader
	// over TCP; the version in metadata is refreshed by the backstop only.
	c.sendStateToLeader()
}

func (c *Cluster) sendStateToLeader() {
	c.mu.Lock()
	leader, ok := c.leaderLocked()
	b := c.localWire
	c.mu.Unlock()
	if ok && leader.name != c.cfg.NodeName {
		c.enqueue(leader, msgState, b)
	}
}

// handle decodes one message from the delegate and acts on it.
func (c *Cluster) handle(b []byte) {
	m, err := decodeMessage(b)
	if err != nil {
		c.drop(dropReason(err), err.Error())
		return
	}
	c.metrics.received.WithLabelValues(m.Type.String()).Inc()
	switch m.Type {
	case msgState:
		c.handleState(m.State)
	case msgDesired:
		c.handleDesired(m.From, m.Desired)
	}
}

func (c *Cluster) handleState(s agent.State) {
	if s.Node == c.cfg.NodeName {
		return // our own state, echoed: only we write it
	}
	c.mu.Lock()
	if c.states.apply(s, time.Now()) {
		c.log.Debug("node state", "node", s.Node, "version", s.Version)
	}
	c.highestDesired = max(c.highestDesired, s.DesiredVersion)
	leader, ok := c.leaderLocked()
	c.mu.Unlock()
	if ok && leader.name == c.cfg.NodeName {
		c.catchUp(s.Node, s.DesiredVersion, c.local.Desired())
	}
}

func (c *Cluster) handleDesired(from string, d agent.Desired) {
	c.mu.Lock()
	c.highestDesired = max(c.highestDesired, d.Version)
	c.mu.Unlock()
	if c.local.SetDesired(d) {
		c.log.Info("desired list applied", "version", d.Version, "images", len(d.Images), "peer", from)
	} else {
		c.log.Debug("desired list ignored: not newer", "version", d.Version, "peer", from)
	}
}

// catchUp sends d to node when node's state shows an older desired version; a node is sent
// one version at most once per desiredResend.
func (c *Cluster) catchUp(node string, nodeVersion uint64, d agent.Desired) {
	if d.Version == 0 || nodeVersion >= d.Version {
		return
	}
	now := time.Now()
	c.mu.Lock()
	mb, ok := c.members[node]
	mark := c.desiredSent[node]
	if !ok || !mb.alive || (mark.version == d.Version && now.Sub(mark.at) < c.t.desiredResend) {
		c.mu.Unlock()
		return
	}
	c.desiredSent[node] = sentMark{version: d.Version, at: now}
	b, err := c.desiredWireLocked(d)
	c.mu.Unlock()
	if err != nil {
		c.log.Error("encoding desired list", "err", err)
		return
	}
	c.log.Debug("sending desired list to catch up", "node", node, "version", d.Version, "node_version", nodeVersion)
	c.enqueue(mb, msgDesired, b)
}

// desiredWireLocked returns d encoded, cached per version. Callers hold c.mu.
func (c *Cluster) desiredWireLocked(d agent.Desired) ([]byte, error) {
	if c.desiredWire != nil && c.desiredWireVer == d.Version {
		return c.desiredWire, nil
	}
	clean, _ := cleanDesired(d.Images)
	b, err := encodeMessage(message{Type: msgDesired, From: c.cfg.NodeName, Desired: agent.Desired{Version: d.Version, Images: clean}})
	if err != nil {
		return nil, err
	}
	c.desiredWire, c.desiredWireVer = b, d.Version
	return b, nil
}

// PublishDesired makes images the cluster's desired list. It fails with ErrNotLeader unless
// this node is the leader. The version is max(now in ns, highest desired version seen + 1), so
// it supersedes every earlier list, including a previous leader's. The list is applied locally
// (LocalAgent.SetDesired) and queued for a reliable send to every alive member; PublishDesired
// does not wait for the sends. Images that cannot travel (bad reference or digest) are left
// out and logged.
func (c *Cluster) PublishDesired(images []image.Image) (uint64, error) {
	if _, _, self := c.Leader(); !self {
		return 0, ErrNotLeader
	}
	clean, errs := cleanDesired(images)
	for _, err := range errs {
		c.log.Warn("desired image left out", "err", err)
	}
	current := c.local.Desired().Version
	c.mu.Lock()
	v := max(uint64(time.Now().UnixNano()), c.highestDesired+1, current+1)
	c.highestDesired = v
	d := agent.Desired{Version: v, Images: clean}
	b, err := c.desiredWireLocked(d)
	var targets []member
	now := time.Now()
	if err == nil {
		for _, mb := range c.members {
			if mb.alive && mb.name != c.cfg.NodeName {
				targets = append(targets, mb)
				c.desiredSent[mb.name] = sentMark{version: v, at: now}
			}
		}
	}
	c.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("coordinator: publish desired: %w", err)
	}
	c.local.SetDesired(d)
	for _, mb := range targets {
		c.enqueue(mb, msgDesired, b)
	}
	c.log.Info("desired list published", "version", v, "images", len(clean), "members", len(targets)+1)
	return v, nil
}

// membershipChanged recomputes the leader after membership events (or readiness).
func (c *Cluster) membershipChanged() {
	c.mu.Lock()
	alive := c.alive
	leader, ok := c.leaderLocked()
	id := ""
	if ok {
		id = fmt.Sprintf("%s/%d", leader.name, leader.meta.Boot)
	}
	prev := c.leaderID
	c.leaderID = id
	c.mu.Unlock()
	c.metrics.members.Set(float64(alive))
	self := ok && leader.name == c.cfg.NodeName
	if self {
		c.metrics.isLeader.Set(1)
	} else {
		c.metrics.isLeader.Set(0)
	}
	// A member that just became alive gets the desired list now, not at its next state.
	c.catchUpAll()
	if id == prev {
		return
	}
	c.log.Info("leader changed", "leader", leader.name, "self", self, "members", alive)
	signal(c.leaderCh)
	if ok && !self {
		// A new leader (or a restarted one) learns every state within one round trip.
		c.sendStateToLeader()
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

// catchUpAll, on the leader, sends the desired list to every alive member whose last known
// state shows an older list, or that has sent no state yet (a member that just joined).
func (c *Cluster) catchUpAll() {
	c.mu.Lock()
	leader, ok := c.leaderLocked()
	if !ok || leader.name != c.cfg.NodeName {
		c.mu.Unlock()
		return
	}
	versions := map[string]uint64{}
	for name, mb := range c.members {
		if !mb.alive || name == c.cfg.NodeName {
			continue
		}
		versions[name] = 0
		if e := c.states.entries[name]; e != nil {
			versions[name] = e.state.DesiredVersion
		}
	}
	c.mu.Unlock()
	d := c.local.Desired()
	for name, v := range versions {
		c.catchUp(name, v, d)
	}
}

// enqueue queues a reliable send without blocking; a full queue drops and counts it (the
// backstop resends).
func (c *Cluster) enqueue(to member, typ msgType, b []byte) {
	job := sendJob{to: memberlist.Node{Name: to.name, Addr: to.ip, Port: to.port}, typ: typ, data: b}
	select {
	case c.sendq <- job:
	default:
		c.drop(reasonSendQueue, "send queue full")
	}
}

// sender performs queued reliable sends; each may block for up to memberlist's TCPTimeout.
func (c *Cluster) sender(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-c.sendq:
			if err := c.ml.SendReliable(&job.to, job.data); err != nil {
				c.metrics.dropped.WithLabelValues(reasonSendFailed).Inc()
				c.log.Debug("gossip send failed", "peer", job.to.Name, "type", job.typ.String(), "err", err)
				continue
			}
			c.metrics.sent.WithLabelValues(job.typ.String()).Inc()
		}
	}
}

// metaUpdater re-announces this node's metadata (its state version) when the backstop asks
// and the version changed, at most once per metaMin: UpdateNode blocks until the alive
// broadcast went out.
func (c *Cluster) metaUpdater(ctx context.Context) {
	last := c.metaVer.Load() // what the join announced
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.metaCh:
		}
		if v := c.metaVer.Load(); v != last {
			last = v
			if err := c.ml.UpdateNode(c.t.metaTimeout); err != nil {
				c.log.Debug("metadata update", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.t.metaMin):
		}
	}
}

func (c *Cluster) drop(reason, detail string) {
	c.metrics.dropped.WithLabelValues(reason).Inc()
	c.log.Debug("gossip message dropped", "reason", reason, "err", detail)
}

// leaderLocked returns the leader: the lowest alive member (the leader rule, leaderOf, kept
// current by memberEvent). ok is false before the first join attempt finished, and when not
// even this node is alive (memberlist is shut down or we left). Callers hold c.mu.
func (c *Cluster) leaderLocked() (member, bool) {
	if !c.ready.Load() || c.leader == "" {
		return member{}, false
	}
	return c.members[c.leader], true
}

// setMemberLocked records mb and keeps the alive count and the leader current: O(1), except
// when the leader itself departs. Callers hold c.mu.
func (c *Cluster) setMemberLocked(mb member) {
	if old, ok := c.members[mb.name]; ok && old.alive {
		c.alive--
	}
	c.members[mb.name] = mb
	switch {
	case mb.alive:
		c.alive++
		if c.leader == "" || mb.name < c.leader {
			c.leader = mb.name
		}
	case mb.name == c.leader:
		var names []string
		for name, m := range c.members {
			if m.alive {
				names = append(names, name)
			}
		}
		c.leader = leaderOf(names)
	}
}

// leaderOf is the leader rule: the lowest name among the alive members, "" when there are none.
// Every node that sees the same membership picks the same leader.
func leaderOf(alive []string) string {
	if len(alive) == 0 {
		return ""
	}
	return slices.Min(alive)
}

// Leader returns the leader's name and status API address, and whether it is this node. name
// is "" until the first join attempt finished (Ready). It does not block.
func (c *Cluster) Leader() (name, httpAddr string, self bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.leaderLocked()
	if !ok {
		return "", "", false
	}
	addr := l.meta.HTTPAddr
	if l.name == c.cfg.NodeName {
		addr = c.cfg.HTTPAddr
	}
	return l.name, addr, l.name == c.cfg.NodeName
}

// LeaderChanges receives a value (coalesced) whenever the leader changed, including the first
// time one is known (when the node becomes Ready). Receivers then call Leader.
func (c *Cluster) LeaderChanges() <-chan struct{} { return c.leaderCh }

// Ready reports whether the node has joined the cluster, or started alone after trying.
func (c *Cluster) Ready() bool { return c.ready.Load() }

// Members returns every member this node knows of (departed ones until they are reaped),
// sorted by name.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.membersLocked()
}

func (c *Cluster) membersLocked() []Member {
	leader, _ := c.leaderLocked()
	out := make([]Member, 0, len(c.members))
	for _, name := range slices.Sorted(maps.Keys(c.members)) {
		mb := c.members[name]
		m := Member{
			Name:          name,
			Addr:          mb.addr,
			State:         mb.state,
			Alive:         mb.alive,
			Leader:        name == leader.name,
			HTTPAddr:      mb.meta.HTTPAddr,
			StateVersion:  mb.meta.StateVersion,
			StoredVersion: c.states.version(name),
		}
		if name == c.cfg.NodeName {
			m.HTTPAddr = c.cfg.HTTPAddr
			m.StateVersion = c.metaVer.Load()
			m.StoredVersion = m.StateVersion
		}
		out = append(out, m)
	}
	return out
}

// NodeStates returns the newest known state of every node, this node's own included (read
// from the local agent now), sorted by node name. On the leader it covers every node; on
// other nodes, what they happened to receive. The states share memory with the store (a
// stored state is replaced, never changed, so this costs no copy per status request):
// callers must not modify them.
func (c *Cluster) NodeStates() []NodeState {
	self := project(c.cfg.NodeName, c.local.State())
	c.mu.Lock()
	out := make([]NodeState, 0, len(c.states.entries)+1)
	for name, e := range c.states.entries {
		if name == c.cfg.NodeName || e.received.IsZero() {
			continue
		}
		out = append(out, NodeState{State: e.state, Alive: c.members[name].alive})
	}
	c.mu.Unlock()
	out = append(out, NodeState{State: self, Alive: true})
	slices.SortFunc(out, func(a, b NodeState) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// Status returns a summary of this node's view of the cluster.
func (c *Cluster) Status() ClusterStatus {
	name, addr, self := c.Leader()
	desired := c.local.Desired().Version
	c.mu.Lock()
	defer c.mu.Unlock()
	return ClusterStatus{
		Node:           c.cfg.NodeName,
		Ready:          c.ready.Load(),
		Leader:         name,
		LeaderHTTPAddr: addr,
		IsLeader:       self,
		DesiredVersion: desired,
		Members:        c.membersLocked(),
	}
}
