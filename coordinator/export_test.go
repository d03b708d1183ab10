package coordinator

// What the external tests (package coordinator_test, which build their clusters with
// coordinatortest) need of the package's internals.

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
)

var (
	Digest          = digest
	DecodeMeta      = decodeMeta
	LabelHeader     = labelHeader
	EncryptedHeader = encryptedHeader
	GuardReasons    = guardReasons
)

const (
	MLLabelByte           = mlLabelByte
	RoleAgent             = roleAgent
	MaxStreamBytes        = maxStreamBytes
	DefaultStreamBudget   = defaultStreamBudget
	ReasonBadLabel        = reasonBadLabel
	ReasonDecrypt         = reasonDecrypt
	ReasonMalformed       = reasonMalformed
	ReasonOversizedStream = reasonOversizedStream
	ReasonStreamTimeout   = reasonStreamTimeout
	ReasonTooManyStreams  = reasonTooManyStreams
)

// WithInboundLimits shrinks the inbound stream guard's limits; zero: the default.
func WithInboundLimits(streams int, deadline time.Duration) Option {
	return withInboundLimits(inboundLimits{streams: streams, deadline: deadline})
}

// Metrics are a Cluster's metrics.
type Metrics struct {
	IsLeader       prometheus.Gauge
	InboundStreams prometheus.Gauge
	Sent           *prometheus.CounterVec
	Received       *prometheus.CounterVec
	Dropped        *prometheus.CounterVec
	BytesSent      *prometheus.CounterVec
	BytesRecv      *prometheus.CounterVec
	Superseded     prometheus.Counter
}

func (c *Cluster) Metrics() Metrics {
	m := c.metrics
	return Metrics{
		IsLeader: m.isLeader, InboundStreams: m.inboundStreams, Sent: m.sent, Received: m.received,
		Dropped: m.dropped, BytesSent: m.bytesSent, BytesRecv: m.bytesRecv, Superseded: m.superseded,
	}
}

// NodeMeta is the metadata c gives memberlist, at most limit bytes.
func (c *Cluster) NodeMeta(limit int) []byte { return delegate{c}.NodeMeta(limit) }

// Handle handles message b as if the delegate had received it.
func (c *Cluster) Handle(b []byte) { c.handle(b) }

// SendDesired sends the encoded desired list b to the member named to, as the run loop's
// sends do; it reports false when c does not know to.
func (c *Cluster) SendDesired(to string, b []byte) bool {
	c.mu.Lock()
	mb, ok := c.members[to]
	c.mu.Unlock()
	if ok {
		c.enqueue(mb, msgDesired, b)
	}
	return ok
}

// EncodeDesired encodes d as a desired-list message from node from.
func EncodeDesired(from string, d agent.Desired) ([]byte, error) {
	return encodeMessage(message{Type: msgDesired, Desired: desiredToWire(from, d)})
}

// EncodeState encodes s as a state message of node.
func EncodeState(node string, s agent.State) ([]byte, error) {
	return encodeMessage(message{Type: msgState, State: stateToWire(node, s)})
}
