package coordinator

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// Option adjusts a Cluster for tests and simulations; production passes none to New.
type Option func(*options)

// options are the settings that only tests and simulations change; the zero value is
// production.
type options struct {
	fast   bool                     // test timings
	tune   func(*memberlist.Config) // applied to memberlist's configuration last
	limits inboundLimits            // the inbound stream guard's limits; zero fields: defaults
}

// withInboundLimits shrinks the inbound stream guard's limits, for tests.
func withInboundLimits(l inboundLimits) Option { return func(o *options) { o.limits = l } }

// WithTestTimings selects timings for loopback tests: memberlist gossips every ~10 ms,
// probes every ~50 ms and pushes/pulls every ~100 ms, and the coordinator's own intervals
// (backstop, join retries, reaping, leave) shrink alike. For tests only.
func WithTestTimings() Option { return func(o *options) { o.fast = true } }

// WithMemberlistTuning makes New call tune on memberlist's configuration after
// cachemachine's own settings (and WithTestTimings). It exists for simulations that run
// hundreds of nodes in one process (bench-cluster); a nil tune changes nothing.
func WithMemberlistTuning(tune func(*memberlist.Config)) Option {
	return func(o *options) { o.tune = tune }
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
// leader is declared dead within ~2–3 s at small N (the failover target is ≤ 5 s end to end);
// fast selects test timings (WithTestTimings).
func memberlistConfig(cfg Config, fast bool) *memberlist.Config {
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
	c.DelegateProtocolMin, c.DelegateProtocolVersion, c.DelegateProtocolMax = 0, 0, delegatePins
	if !cfg.Insecure {
		c.SecretKey = cfg.Key
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	if fast {
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
