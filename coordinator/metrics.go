package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	members  prometheus.Gauge
	isLeader prometheus.Gauge
	// inboundStreams is the number of inbound gossip streams held now (see inboundGuard).
	inboundStreams prometheus.Gauge
	sent           *prometheus.CounterVec // messages by type
	received       *prometheus.CounterVec // messages by type
	dropped        *prometheus.CounterVec // by reason
	bytesSent      *prometheus.CounterVec // all gossip traffic, by transport
	bytesRecv      *prometheus.CounterVec
	superseded     prometheus.Counter // Superseded signals
}

// newMetrics creates the coordinator's metrics and registers them with reg (nil: unregistered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cachemachine_members",
			Help: "Alive members of the gossip cluster, as this node sees them.",
		}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cachemachine_is_leader",
			Help: "1 when this node is the leader, else 0.",
		}),
		inboundStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cachemachine_gossip_inbound_streams",
			Help: "Inbound gossip streams (TCP) open now, from acceptance to close.",
		}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_gossip_messages_sent_total",
			Help: "Coordinator messages sent, by type (state, desired).",
		}, []string{"type"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_gossip_messages_received_total",
			Help: "Valid coordinator messages received, by type (state, desired).",
		}, []string{"type"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_gossip_dropped_total",
			Help: "Gossip input and messages dropped, by reason: bad_label, decrypt, unencrypted, malformed, oversized_stream, too_many_streams, stream_budget, stream_timeout (packets and streams refused at the gossip port); short, unknown_type, bad_version, too_large, decode, invalid (bad coordinator messages); overflow (inbox full); send_failed, send_overflow (outgoing).",
		}, []string{"reason"}),
		bytesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_gossip_bytes_sent_total",
			Help: "Bytes of all gossip traffic sent (memberlist's and ours, as on the wire), by transport (packet = UDP, stream = TCP).",
		}, []string{"transport"}),
		bytesRecv: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_gossip_bytes_received_total",
			Help: "Bytes of all gossip traffic received (as on the wire), by transport (packet = UDP, stream = TCP).",
		}, []string{"transport"}),
		superseded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cachemachine_desired_superseded_total",
			Help: "Times the leader saw a node holding a newer desired list than its own (another node's, after a partition) and listed its sources to publish again; at most once per 30 s.",
		}),
	}
	for _, t := range []msgType{msgState, msgDesired} {
		m.sent.WithLabelValues(t.String())
		m.received.WithLabelValues(t.String())
	}
	for _, r := range append([]string{reasonShort, reasonUnknownType, reasonBadVersion, reasonTooLarge, reasonDecode, reasonInvalid, reasonOverflow, reasonSendFailed, reasonSendQueue}, guardReasons...) {
		m.dropped.WithLabelValues(r)
	}
	for _, t := range []string{"packet", "stream"} {
		m.bytesSent.WithLabelValues(t)
		m.bytesRecv.WithLabelValues(t)
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{m.members, m.isLeader, m.inboundStreams, m.sent, m.received, m.dropped, m.bytesSent, m.bytesRecv, m.superseded} {
			if err := reg.Register(col); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
