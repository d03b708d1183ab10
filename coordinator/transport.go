package coordinator

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// countingTransport is memberlist's NetTransport with every byte counted, so the gossip
// traffic benchmark sees all of memberlist's traffic (probes, alive/suspect gossip, push/pull,
// our messages) as it leaves and enters the sockets (after encryption and labelling).
//
// It is also where hostile input is stopped (see inboundGuard): packets without our label are
// dropped, and every inbound stream is inspected, bounded and admitted before memberlist
// reads it.
//
// Incoming packets and streams pass through one forwarding goroutine, started by
// newCountingTransport and stopped and waited for by Shutdown, which memberlist calls from
// its own Shutdown. Each inbound stream is inspected by a goroutine of its own (at most
// guard.limits.streams at a time), also waited for by Shutdown.
type countingTransport struct {
	*memberlist.NetTransport
	packets chan *memberlist.Packet
	streams chan net.Conn
	sent    *prometheus.CounterVec // by transport: packet, stream
	recv    *prometheus.CounterVec
	guard   *inboundGuard

	// ctx ends on Shutdown: it cuts short the inspection of streams still being admitted.
	ctx    context.Context
	cancel context.CancelFunc

	// closing is closed first on Shutdown: from then on the forwarder drops what the sockets
	// still deliver (memberlist may have stopped reading), so the NetTransport's listeners
	// never block on a send and its Shutdown returns. done then stops the forwarder.
	closing  chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// newCountingTransport starts forwarding nt's packets and streams, which guard admits.
func newCountingTransport(nt *memberlist.NetTransport, sent, recv *prometheus.CounterVec, guard *inboundGuard) *countingTransport {
	t := &countingTransport{
		NetTransport: nt,
		packets:      make(chan *memberlist.Packet),
		streams:      make(chan net.Conn),
		sent:         sent,
		recv:         recv,
		guard:        guard,
		closing:      make(chan struct{}),
		done:         make(chan struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.wg.Go(t.forward)
	return t
}

func (t *countingTransport) forward() {
	inPackets, inStreams := t.NetTransport.PacketCh(), t.NetTransport.StreamCh()
	for {
		select {
		case p := <-inPackets:
			t.recv.WithLabelValues("packet").Add(float64(len(p.Buf)))
			if !t.guard.packetOK(p.Buf, p.From) {
				continue
			}
			// NetTransport reads each packet into a fresh 64 KiB buffer, and memberlist's
			// handler queue keeps sub-slices of it: a burst of queued gossip would pin
			// 64 KiB per message. Pass on an exact-size copy instead.
			buf := make([]byte, len(p.Buf))
			copy(buf, p.Buf)
			p.Buf = buf
			select {
			case t.packets <- p:
			case <-t.closing:
			}
		case c := <-inStreams:
			c = t.wrap(c)
			if !t.guard.acquire(c) {
				_ = c.Close()
				continue
			}
			// This goroutine is counted in t.wg, so the counter is above zero here.
			t.wg.Go(func() {
				if c := t.guard.admit(t.ctx, c); c != nil {
					t.handOn(c)
				}
			})
		case <-t.done:
			return
		}
	}
}

// handOn passes an inbound stream to memberlist, or closes it when shutting down.
func (t *countingTransport) handOn(c net.Conn) {
	select {
	case t.streams <- c:
	case <-t.closing:
		_ = c.Close()
	}
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }
func (t *countingTransport) StreamCh() <-chan net.Conn           { return t.streams }

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	ts, err := t.NetTransport.WriteTo(b, addr)
	if err == nil {
		t.sent.WithLabelValues("packet").Add(float64(len(b)))
	}
	return ts, err
}

func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	ts, err := t.NetTransport.WriteToAddress(b, a)
	if err == nil {
		t.sent.WithLabelValues("packet").Add(float64(len(b)))
	}
	return ts, err
}

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := t.NetTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return t.wrap(c), nil
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	c, err := t.NetTransport.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	return t.wrap(c), nil
}

// Shutdown closes the sockets, then stops and waits for the forwarding goroutine. It is
// idempotent: New calls it when memberlist.Create fails, memberlist calls it on Shutdown.
func (t *countingTransport) Shutdown() error {
	var err error
	t.stopOnce.Do(func() {
		close(t.closing)
		t.cancel()
		err = t.NetTransport.Shutdown()
		close(t.done)
		t.wg.Wait()
	})
	return err
}

func (t *countingTransport) wrap(c net.Conn) net.Conn {
	return &countingConn{Conn: c, sent: t.sent.WithLabelValues("stream"), recv: t.recv.WithLabelValues("stream")}
}

type countingConn struct {
	net.Conn
	sent, recv prometheus.Counter
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.recv.Add(float64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent.Add(float64(n))
	return n, err
}
