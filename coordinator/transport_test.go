package coordinator

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// TestTransportCopiesPackets checks that a received packet reaches memberlist in a buffer of
// its own size (not NetTransport's 64 KiB read buffer, which queued gossip would pin) and is
// counted.
func TestTransportCopiesPackets(t *testing.T) {
	t.Parallel()
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{"127.0.0.1"}})
	require.NoError(t, err)
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sent"}, []string{"transport"})
	recv := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "recv"}, []string{"transport"})
	tr := newCountingTransport(nt, sent, recv, newInboundGuard(guardConfig{}, nil, nil)) // no label: lets "hello" through
	defer func() { require.NoError(t, tr.Shutdown()) }()

	conn, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(nt.GetAutoBindPort())))
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("hello"))
	require.NoError(t, err)
	select {
	case p := <-tr.PacketCh():
		require.Equal(t, "hello", string(p.Buf))
		require.Equal(t, len(p.Buf), cap(p.Buf), "the packet keeps only its own bytes")
	case <-time.After(5 * time.Second):
		t.Fatal("no packet")
	}
	require.Equal(t, 5.0, testutil.ToFloat64(recv.WithLabelValues("packet")))
}
