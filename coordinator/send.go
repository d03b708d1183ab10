package coordinator

import (
	"context"

	"github.com/hashicorp/memberlist"
)

// sendJob is one queued reliable send.
type sendJob struct {
	to   memberlist.Node
	typ  msgType
	data []byte
}

const (
	sendQueue = 1024 // queued reliable sends
	senders   = 4    // goroutines performing them
)

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
