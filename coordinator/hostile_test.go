package coordinator_test

import (
	"bufio"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// Hostile-input tests: a peer without the gossip key talks to a node's gossip port. They do
// not run in parallel: the heap measurements need the process to themselves.

// heapSampler records the peak HeapInuse while it runs.
type heapSampler struct {
	base uint64
	peak uint64
	stop chan struct{}
	done chan struct{}
}

func startHeapSampler() *heapSampler {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := &heapSampler{base: ms.HeapInuse, peak: ms.HeapInuse, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			s.peak = max(s.peak, ms.HeapInuse)
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// growth stops the sampler and returns the peak growth over the baseline, in MiB.
func (s *heapSampler) growth() float64 {
	close(s.stop)
	<-s.done
	return float64(s.peak-s.base) / (1 << 20)
}

// rssMiB is this process's resident set size (Linux; 0 elsewhere), for the log only.
func rssMiB() float64 {
	kib, _ := lab.ProcStatusKiB(os.Getpid(), "VmRSS")
	return float64(kib) / 1024
}

// closedByPeer waits up to timeout for conn to be closed by the other side: a read that
// fails with anything but a timeout (EOF, reset). Bytes the node sends first are skipped.
func closedByPeer(conn net.Conn, timeout time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true
}

// TestHostileOversizedStreams: streams that carry the right label and an "encrypted" type but
// declare nearly 20 MiB and send random bytes must be closed before the node buffers them.
// Before the guard, memberlist buffered each one in full (8 streams: ~290 MiB of heap).
func TestHostileOversizedStreams(t *testing.T) {
	n1 := coordinatortest.StartNode(t, "ho-a", nil)
	coordinatortest.WaitFor(t, 5*time.Second, "ho-a ready", n1.Cluster.Ready)

	const streams = 8
	const declared = 20<<20 - 1
	chunk := make([]byte, 64<<10)
	_, _ = rand.Read(chunk)

	heap := startHeapSampler()
	rss0 := rssMiB()
	conns := make([]net.Conn, streams)
	written := make([]int, streams)
	var wg sync.WaitGroup
	for i := range streams {
		conn, err := net.Dial("tcp", n1.Addr())
		require.NoError(t, err)
		defer conn.Close()
		conns[i] = conn
		wg.Go(func() {
			_ = conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := conn.Write(coordinator.EncryptedHeader("jupyter", declared)); err != nil {
				return
			}
			for written[i] < declared {
				n, err := conn.Write(chunk[:min(len(chunk), declared-written[i])])
				written[i] += n
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	for i, conn := range conns {
		require.True(t, closedByPeer(conn, 10*time.Second), "stream %d is closed by the node", i)
	}
	grew := heap.growth()
	t.Logf("heap in use grew by %.1f MiB at the peak; RSS %.0f -> %.0f MiB; bytes written per stream %v", grew, rss0, rssMiB(), written)
	for i, w := range written {
		require.Less(t, w, declared, "stream %d: closed before the declared bytes were read", i)
	}
	require.Less(t, grew, 8.0, "heap growth (MiB) under 8 hostile streams")
	coordinatortest.WaitFor(t, 5*time.Second, "oversized streams counted", func() bool {
		return counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonOversizedStream) == streams
	})

	// The cluster still works: a legitimate node joins and states travel.
	n2 := coordinatortest.StartNode(t, "ho-b", []string{n1.Addr()})
	coordinatortest.WaitLeader(t, 10*time.Second, "ho-a", n1, n2)
	coordinatortest.WaitFor(t, 5*time.Second, "ho-b's state at the leader", func() bool {
		_, ok := n1.StateOf("ho-b")
		return ok
	})
}

// TestHostileStreamsWithinBound: streams that declare the largest size the guard lets
// through, with random bytes, are admitted only up to the byte budget, fail to decrypt, and
// are counted once each; what they make the node hold stays bounded by the budget.
func TestHostileStreamsWithinBound(t *testing.T) {
	n1 := coordinatortest.StartNode(t, "hb-a", nil)
	coordinatortest.WaitFor(t, 5*time.Second, "hb-a ready", n1.Cluster.Ready)

	const streams = 16
	declared := coordinator.MaxStreamBytes
	chunk := make([]byte, 64<<10)
	_, _ = rand.Read(chunk)
	heap := startHeapSampler()
	var wg sync.WaitGroup
	conns := make([]net.Conn, streams)
	for i := range streams {
		conn, err := net.Dial("tcp", n1.Addr())
		require.NoError(t, err)
		defer conn.Close()
		conns[i] = conn
		wg.Go(func() {
			_ = conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
			w := bufio.NewWriter(conn)
			_, _ = w.Write(coordinator.EncryptedHeader("jupyter", uint32(declared)))
			for sent := 0; sent < declared; {
				n, err := w.Write(chunk[:min(len(chunk), declared-sent)])
				sent += n
				if err != nil {
					return
				}
			}
			_ = w.Flush()
		})
	}
	wg.Wait()
	for i, conn := range conns {
		require.True(t, closedByPeer(conn, 10*time.Second), "stream %d is closed by the node", i)
	}
	grew := heap.growth()
	t.Logf("heap in use grew by %.1f MiB at the peak (budget %d MiB)", grew, coordinator.DefaultStreamBudget>>20)
	require.Less(t, grew, float64(4*coordinator.DefaultStreamBudget)/(1<<20), "heap growth (MiB) stays within a few times the budget")
	// Each stream is counted once: decrypt, stream_budget, or (when the client is slow on a
	// busy machine) stream_timeout.
	counted := func() float64 {
		var sum float64
		for _, r := range coordinator.GuardReasons {
			sum += counter(n1.Cluster.Metrics().Dropped, r)
		}
		return sum
	}
	coordinatortest.WaitFor(t, 5*time.Second, "every stream counted", func() bool { return counted() == streams })
	time.Sleep(100 * time.Millisecond)
	require.Equal(t, float64(streams), counted(), "no stream counted twice")
}

// TestHostileTrickle: a peer that sends a byte now and then is cut off at the stream deadline,
// whether it trickles the header (before memberlist sees the stream) or the body (when
// memberlist reads it and has set a deadline of its own: TCPTimeout, 1 s at test timings).
func TestHostileTrickle(t *testing.T) {
	const deadline = 300 * time.Millisecond
	n1 := coordinatortest.NewNode(t, coordinatortest.Options{Name: "tr-a", Options: []coordinator.Option{coordinator.WithInboundLimits(0, deadline)}})
	coordinatortest.WaitFor(t, 5*time.Second, "tr-a ready", n1.Cluster.Ready)
	tests := []struct {
		name  string
		first []byte // sent at once
	}{
		{name: "header", first: []byte{coordinator.MLLabelByte, 255}}, // a 255-byte label, one byte per 50 ms
		{name: "body", first: coordinator.EncryptedHeader("jupyter", 1000)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", n1.Addr())
			require.NoError(t, err)
			defer conn.Close()
			start := time.Now()
			_, err = conn.Write(tt.first)
			require.NoError(t, err)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if _, err := conn.Write([]byte{7}); err != nil {
						return
					}
				}
			})
			closed := closedByPeer(conn, 5*time.Second)
			took := time.Since(start)
			close(stop)
			wg.Wait()
			require.True(t, closed, "the trickling stream is closed")
			t.Logf("closed after %v", took)
			require.GreaterOrEqual(t, took, deadline-50*time.Millisecond)
			require.Less(t, took, 900*time.Millisecond, "closed at our deadline, before memberlist's own 1 s")
			coordinatortest.WaitFor(t, 2*time.Second, "the timeout counted", func() bool {
				return counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonStreamTimeout) == float64(i+1)
			})
		})
	}
}

// TestHostileStreamLimit: streams beyond the cap are closed at once and counted; once the
// held ones end, legitimate traffic passes again.
func TestHostileStreamLimit(t *testing.T) {
	const limit = 4
	n1 := coordinatortest.NewNode(t, coordinatortest.Options{Name: "sl-a", Options: []coordinator.Option{coordinator.WithInboundLimits(limit, 10*time.Second)}})
	coordinatortest.WaitFor(t, 5*time.Second, "sl-a ready", n1.Cluster.Ready)

	// Hold every slot: a label byte, then nothing.
	var held []net.Conn
	for range limit {
		conn, err := net.Dial("tcp", n1.Addr())
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.Write([]byte{coordinator.MLLabelByte})
		require.NoError(t, err)
		held = append(held, conn)
	}
	coordinatortest.WaitFor(t, 5*time.Second, "slots taken", func() bool { return testutil.ToFloat64(n1.Cluster.Metrics().InboundStreams) == limit })

	const extra = 6
	for i := range extra {
		conn, err := net.Dial("tcp", n1.Addr())
		require.NoError(t, err)
		defer conn.Close()
		start := time.Now()
		require.True(t, closedByPeer(conn, 2*time.Second), "extra stream %d is closed", i)
		require.Less(t, time.Since(start), time.Second, "extra stream %d is closed at once", i)
	}
	require.Equal(t, float64(extra), counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonTooManyStreams))
	for _, conn := range held {
		require.NoError(t, conn.Close())
	}
	coordinatortest.WaitFor(t, 5*time.Second, "slots free", func() bool { return testutil.ToFloat64(n1.Cluster.Metrics().InboundStreams) == 0 })

	n2 := coordinatortest.StartNode(t, "sl-b", []string{n1.Addr()})
	coordinatortest.WaitLeader(t, 10*time.Second, "sl-a", n1, n2)
	coordinatortest.WaitFor(t, 5*time.Second, "sl-b's state at the leader", func() bool {
		_, ok := n1.StateOf("sl-b")
		return ok
	})
}

// TestHostileGarbagePackets: garbage UDP packets (without a label, and with the right label
// but not encrypted with the key) are each counted, and logged a handful of times at most.
func TestHostileGarbagePackets(t *testing.T) {
	n1 := coordinatortest.StartNode(t, "gp-a", nil)
	coordinatortest.WaitFor(t, 5*time.Second, "gp-a ready", n1.Cluster.Ready)
	recv0 := counter(n1.Cluster.Metrics().BytesRecv, "packet")
	logLines0 := strings.Count(n1.Logs.String(), "\n")

	conn, err := net.Dial("udp", n1.Addr())
	require.NoError(t, err)
	defer conn.Close()
	const packets, size = 1000, 100
	for i := range packets {
		p := make([]byte, size)
		_, _ = rand.Read(p)
		if i%2 == 0 {
			p[0] = 1 // no label header
		} else {
			copy(p, coordinator.LabelHeader("jupyter")) // right label, garbage "ciphertext"
			p[len(coordinator.LabelHeader("jupyter"))] = 1
		}
		_, err := conn.Write(p)
		require.NoError(t, err)
		if i%50 == 49 {
			time.Sleep(2 * time.Millisecond) // do not overrun the socket buffer
		}
	}
	reached := func() float64 { return (counter(n1.Cluster.Metrics().BytesRecv, "packet") - recv0) / size }
	coordinatortest.WaitFor(t, 5*time.Second, "packets received", func() bool { return reached() >= packets*0.9 })
	dropped := func() float64 {
		var sum float64
		for _, r := range []string{coordinator.ReasonBadLabel, coordinator.ReasonDecrypt, coordinator.ReasonMalformed} {
			sum += counter(n1.Cluster.Metrics().Dropped, r)
		}
		return sum
	}
	coordinatortest.WaitFor(t, 5*time.Second, "every packet that arrived counted", func() bool { return dropped() >= reached() })
	t.Logf("%.0f packets reached the node; dropped: bad_label %.0f, decrypt %.0f, malformed %.0f", reached(),
		counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonBadLabel), counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonDecrypt), counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonMalformed))
	require.Positive(t, counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonBadLabel))
	require.Positive(t, counter(n1.Cluster.Metrics().Dropped, coordinator.ReasonDecrypt))

	lines := strings.Split(n1.Logs.String(), "\n")[logLines0:]
	var loud []string
	for _, l := range lines {
		if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
			loud = append(loud, l)
		}
	}
	t.Logf("%d warning/error lines, e.g. %q", len(loud), first(loud))
	require.LessOrEqual(t, len(loud), 4, "at most one line per reason")
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
