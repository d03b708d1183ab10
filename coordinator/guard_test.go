package coordinator

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"log/slog"
	"math"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// Copies of memberlist's unexported wire structs (net.go), encoded the way it encodes them,
// so the bounds and the header parser are checked against the real encoding.
type mlPushNodeState struct {
	Name        string
	Addr        []byte
	Port        uint16
	Meta        []byte
	Incarnation uint32
	State       memberlist.NodeStateType
	Vsn         []uint8
}

type mlPushPullHeader struct {
	Nodes        int
	UserStateLen int
	Join         bool
}

type mlUserMsgHeader struct {
	UserMsgLen int
}

type mlCompressed struct {
	Algo uint8
	Buf  []byte
}

// mlEncode is memberlist's encode (util.go): type byte, then msgpack.
func mlEncode(t *testing.T, typ byte, v any) []byte {
	t.Helper()
	buf := bytes.NewBuffer([]byte{typ})
	hd := codec.MsgpackHandle{}
	hd.TimeNotBuiltin = true
	require.NoError(t, codec.NewEncoder(buf, &hd).Encode(v))
	return buf.Bytes()
}

// TestPushPullBounds checks the computation of maxStreamBytes (see guard.go) against
// memberlist's encoding of the largest entries.
func TestPushPullBounds(t *testing.T) {
	t.Parallel()
	node := mlPushNodeState{
		Name:        strings.Repeat("n", maxNodeName),
		Addr:        make([]byte, 16),
		Port:        math.MaxUint16,
		Meta:        make([]byte, memberlist.MetaMaxSize),
		Incarnation: math.MaxUint32,
		State:       memberlist.StateLeft,
		Vsn:         []uint8{255, 255, 255, 255, 255, 255},
	}
	nodeBytes := len(mlEncode(t, 0, node)) - 1
	t.Logf("largest push/pull entry: %d bytes", nodeBytes)
	require.LessOrEqual(t, nodeBytes, maxPushNodeBytes)

	header := mlEncode(t, mlPushPull, mlPushPullHeader{Nodes: math.MaxInt, UserStateLen: math.MaxInt, Join: true})
	require.LessOrEqual(t, len(header), pushPullHeaderBytes)

	// A reliable send of the largest message fits too.
	user := len(mlEncode(t, mlUser, mlUserMsgHeader{UserMsgLen: maxMessageBytes})) + maxMessageBytes + encryptOverheadBytes
	require.LessOrEqual(t, user, maxStreamBytes)

	require.Equal(t, 1_835_117, maxStreamBytes, "the value README.md and guard.go quote")
	require.Less(t, maxStreamBytes, 20<<20, "well below memberlist's own 20 MiB")
}

func TestInspect(t *testing.T) {
	t.Parallel()
	label := labelHeader("jupyter")
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	u32 := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	tests := []struct {
		name        string
		insecure    bool
		compression bool
		in          []byte
		declared    int64
		reason      string
	}{
		{name: "encrypted", in: cat(label, []byte{mlEncrypt}, u32(5000)), declared: 5000},
		{name: "encrypted at the bound", in: cat(label, []byte{mlEncrypt}, u32(maxStreamBytes)), declared: maxStreamBytes},
		{name: "encrypted over the bound", in: cat(label, []byte{mlEncrypt}, u32(maxStreamBytes+1)), reason: reasonOversizedStream},
		{name: "20 MiB", in: cat(label, []byte{mlEncrypt}, u32(20<<20-1)), reason: reasonOversizedStream},
		{name: "truncated length", in: cat(label, []byte{mlEncrypt}, []byte{0, 1}), reason: reasonMalformed},
		{name: "empty", in: nil, reason: reasonMalformed},
		{name: "no label", in: cat([]byte{mlEncrypt}, u32(10)), reason: reasonBadLabel},
		{name: "other label", in: cat(labelHeader("other"), []byte{mlEncrypt}, u32(10)), reason: reasonBadLabel},
		{name: "empty label header", in: []byte{mlLabel, 0, mlEncrypt}, reason: reasonMalformed},
		{name: "truncated label", in: []byte{mlLabel, 200, 'j'}, reason: reasonMalformed},
		{name: "plaintext to a keyed node: memberlist refuses it itself", in: cat(label, []byte{mlPushPull}), declared: 0},
		{
			name: "insecure push/pull", insecure: true,
			in:       cat(label, mlEncode(t, mlPushPull, mlPushPullHeader{Nodes: 3, UserStateLen: 1000})),
			declared: 3*maxPushNodeBytes + 1000,
		},
		{
			name: "insecure push/pull, too many members", insecure: true,
			in:     cat(label, mlEncode(t, mlPushPull, mlPushPullHeader{Nodes: 1 << 20})),
			reason: reasonOversizedStream,
		},
		{
			name: "insecure push/pull, huge state", insecure: true,
			in:     cat(label, mlEncode(t, mlPushPull, mlPushPullHeader{Nodes: 1, UserStateLen: 20 << 20})),
			reason: reasonOversizedStream,
		},
		{
			name: "insecure push/pull, negative", insecure: true,
			in:     cat(label, mlEncode(t, mlPushPull, mlPushPullHeader{Nodes: -1})),
			reason: reasonMalformed,
		},
		{
			name: "insecure user message", insecure: true,
			in:       cat(label, mlEncode(t, mlUser, mlUserMsgHeader{UserMsgLen: 70000})),
			declared: 70000,
		},
		{
			name: "insecure user message, huge", insecure: true,
			in:     cat(label, mlEncode(t, mlUser, mlUserMsgHeader{UserMsgLen: 20 << 20})),
			reason: reasonOversizedStream,
		},
		{
			name: "insecure, compressed while compression is off", insecure: true,
			in:     cat(label, mlEncode(t, mlCompress, mlCompressed{Buf: make([]byte, 100)})),
			reason: reasonMalformed,
		},
		{
			name: "insecure, compressed", insecure: true, compression: true,
			in:       cat(label, mlEncode(t, mlCompress, mlCompressed{Buf: make([]byte, 100)})),
			declared: 100,
		},
		{name: "insecure, not a map", insecure: true, in: cat(label, []byte{mlUser, 0x93, 1, 2, 3}), reason: reasonMalformed},
		{name: "insecure, a ping", insecure: true, in: cat(label, []byte{0, 0x80}), declared: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newInboundGuard(guardConfig{label: "jupyter", encrypted: !tt.insecure, compression: tt.compression}, nil, nil)
			declared, reason, detail := g.inspect(bufio.NewReaderSize(bytes.NewReader(tt.in), peekSize))
			require.Equal(t, tt.reason, reason, detail)
			require.Equal(t, tt.declared, declared)
		})
	}
}

func TestPacketOK(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "d"}, []string{"reason"})
	g := newInboundGuard(guardConfig{label: "jupyter"}, newDropLog(slog.New(slog.DiscardHandler), reg), nil)
	require.True(t, g.packetOK(append(labelHeader("jupyter"), 1, 2, 3), nil))
	require.False(t, g.packetOK([]byte{1, 2, 3}, nil))
	require.False(t, g.packetOK(append(labelHeader("other"), 1), nil))
	require.False(t, g.packetOK([]byte{mlLabel, 9, 'j'}, nil))
	require.Equal(t, 2.0, value(reg.WithLabelValues(reasonBadLabel)))
	require.Equal(t, 1.0, value(reg.WithLabelValues(reasonMalformed)))
}

// TestDropLogRateLimit: one line per reason per 10 s, counting every rejection, with the
// number left out in the next line.
func TestDropLogRateLimit(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var buf lab.LogBuffer
		reg := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "d"}, []string{"reason"})
		d := newDropLog(slog.New(slog.NewTextHandler(&buf, nil)), reg)
		for range 100 {
			d.reject(reasonDecrypt, "no installed keys could decrypt the message", "10.0.0.9:7946")
			d.reject(reasonBadLabel, "packet label \"\"", "10.0.0.9:7946")
			d.note(reasonStreamTimeout, "i/o timeout", "")
		}
		require.Equal(t, 3, strings.Count(buf.String(), "\n"), buf.String())
		require.Equal(t, 100.0, value(reg.WithLabelValues(reasonDecrypt)))
		require.Equal(t, 100.0, value(reg.WithLabelValues(reasonBadLabel)))
		require.Equal(t, 0.0, value(reg.WithLabelValues(reasonStreamTimeout)), "note only logs")

		time.Sleep(dropLogEvery - time.Second)
		d.reject(reasonDecrypt, "x", "")
		require.Equal(t, 3, strings.Count(buf.String(), "\n"), "still within the window")
		time.Sleep(time.Second)
		d.reject(reasonDecrypt, "x", "")
		require.Equal(t, 4, strings.Count(buf.String(), "\n"))
		require.Contains(t, buf.String(), "reason=decrypt err=x suppressed=100")
	})
}

func TestClassifyRejection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		line   string
		reason string
		count  bool
	}{
		{line: "Decrypt packet failed: no installed keys could decrypt the message from=1.2.3.4:5", reason: reasonDecrypt, count: true},
		{line: `discarding packet with unacceptable label "": from=1.2.3.4:5`, reason: reasonBadLabel, count: true},
		{line: "failed to receive: no installed keys could decrypt the message from=1.2.3.4:5", reason: reasonDecrypt, count: true},
		{line: "failed to receive: encryption is configured but remote state is not encrypted from=1.2.3.4:5", reason: reasonUnencrypted, count: true},
		{line: "failed to receive: read tcp 1.2.3.4:5->6.7.8.9:1: i/o timeout from=6.7.8.9:1", reason: reasonStreamTimeout},
		{line: "failed to receive: " + errStreamTooLong.Error() + " from=1.2.3.4:5", reason: reasonOversizedStream},
		{line: "failed to receive: unexpected EOF from=1.2.3.4:5", reason: reasonMalformed, count: true},
		{line: "Failed to read remote state: unexpected EOF from=1.2.3.4:5", reason: reasonMalformed, count: true},
		{line: "Too many pending push/pull requests", reason: reasonTooManyStreams, count: true},
		{line: "msg type (99) not supported from=1.2.3.4:5", reason: reasonMalformed, count: true},
		{line: "Failed to decode alive message: EOF from=1.2.3.4:5", reason: reasonMalformed, count: true},
		{line: "Failed to send error: broken pipe from=1.2.3.4:5", reason: "error_reply"},
	}
	for _, tt := range tests {
		reason, count, ok := classifyRejection(tt.line)
		require.True(t, ok, tt.line)
		require.Equal(t, tt.reason, reason, tt.line)
		require.Equal(t, tt.count, count, tt.line)
	}
	for _, line := range []string{
		"Push/Pull with n2 failed: read tcp: i/o timeout",
		"Refuting a suspect message (from: n2)",
		"Failed to send gossip to 1.2.3.4:5: broken pipe",
	} {
		_, _, ok := classifyRejection(line)
		require.False(t, ok, "not about rejected input: %s", line)
	}
	msg, peer := splitFrom("Decrypt packet failed: x from=1.2.3.4:5")
	require.Equal(t, "Decrypt packet failed: x", msg)
	require.Equal(t, "1.2.3.4:5", peer)
}
