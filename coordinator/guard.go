package coordinator

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The inbound stream guard bounds what a peer without the gossip key can make this node hold
// through its gossip TCP port. memberlist reads a stream's declared length and buffers that
// many bytes (up to its own 20 MiB limit) before it decrypts anything, and handles every
// accepted stream in a goroutine of its own, so eight streams of random bytes once pushed an
// agent far past its 128 MiB pod limit. The guard reads the stream's header first (label,
// message type, declared length) and closes, before memberlist sees them, streams with the
// wrong label or a declared size above maxStreamBytes; it admits at most limits.streams
// streams and defaultStreamBudget declared bytes at a time, and no stream lives longer than
// limits.deadline, whatever deadlines memberlist sets.
//
// The largest legitimate stream is a push/pull exchange of the largest cluster we support:
//
//	encryption      45 B: memberlist's encryption header and tag (version 0 adds padding: 45 B at most)
//	header          64 B: message type + msgpack push/pull header (44 B at most)
//	members    1024 × 768 B: one entry per member (name ≤ maxNodeName = 128 B, address 16 B,
//	                metadata ≤ memberlist.MetaMaxSize = 512 B, port, incarnation, state,
//	                versions, field names: 722 B at most, TestPushPullBounds encodes it)
//	user state  1 MiB: this node's own state, at most maxMessageBytes (encodeMessage refuses
//	                more: 4,096 images × 256 tags do not fit, the encoder caps what fits)
//	total      1,835,117 B ≈ 1.75 MiB (memberlist's own limit: 20 MiB)
//
// A reliable send (our state or desired list as a memberlist user message) is smaller: the
// same user-message bound plus a few bytes of header. maxClusterMembers is twice the largest
// cluster the design targets (500 agents), as members that failed or left stay in
// memberlist's push/pull for a while; with typical names and metadata (~150 B per member)
// the bound holds for about 5,000 members.
const (
	maxClusterMembers    = 1024
	maxPushNodeBytes     = 768
	pushPullHeaderBytes  = 64
	encryptOverheadBytes = 45
	maxStreamBytes       = encryptOverheadBytes + pushPullHeaderBytes + maxClusterMembers*maxPushNodeBytes + maxMessageBytes
)

// The guard's default stream count and its byte budget (see inboundLimits). A stream that is
// still being admitted holds a goroutine and a small buffer; an admitted one holds what
// memberlist buffers for it, up to about three times its declared size until it is decrypted
// (ciphertext buffer growth plus plaintext), so the budget, not the count, keeps hostile
// streams under ~25 MiB of heap while leaving room for several legitimate exchanges of the
// largest size at once. Legitimate streams are short-lived (a state send or a push/pull:
// milliseconds on a LAN); 128 is memberlist's own cap on concurrent push/pulls, and
// bench-cluster's 500 in-process agents on 2 cores, whose streams last far longer than on real
// nodes, reached 64 at the leader a couple of times.
const (
	defaultInboundStreams = 128
	defaultStreamBudget   = 8 << 20
)

// Drop reasons of the guard and of memberlist's rejections (see dropLog and logWriter).
const (
	reasonBadLabel        = "bad_label"        // no label header, or another cache's label
	reasonDecrypt         = "decrypt"          // not encrypted with our key
	reasonUnencrypted     = "unencrypted"      // plaintext where encryption is required (or the reverse)
	reasonMalformed       = "malformed"        // truncated or undecodable framing
	reasonOversizedStream = "oversized_stream" // declares (or sends) more than maxStreamBytes
	reasonTooManyStreams  = "too_many_streams" // over limits.streams (or memberlist's push/pull cap)
	reasonStreamBudget    = "stream_budget"    // admitting it would exceed defaultStreamBudget
	reasonStreamTimeout   = "stream_timeout"   // not done within limits.deadline
)

var guardReasons = []string{reasonBadLabel, reasonDecrypt, reasonUnencrypted, reasonMalformed,
	reasonOversizedStream, reasonTooManyStreams, reasonStreamBudget, reasonStreamTimeout}

// memberlist's framing (net.go, label.go in memberlist v0.7.0). Streams and packets start
// with an optional label header (labelMsg, length byte, label), then a message type byte.
// An encrypted stream continues with a big-endian uint32 length and that many bytes of
// ciphertext; a plaintext one with a msgpack header that declares the lengths that follow.
const (
	mlPushPull = 6
	mlUser     = 8
	mlCompress = 9
	mlEncrypt  = 10
	mlLabel    = 244
)

// peekSize bounds the bytes the guard reads before deciding: label header (≤ 257 B), type,
// length or msgpack header.
const peekSize = 512

// errStreamTooLong is what memberlist reads when a stream goes on past its bound.
var errStreamTooLong = errors.New("gossip stream exceeds its size bound")

// inboundLimits bounds inbound gossip streams. Admitted streams may declare up to
// defaultStreamBudget bytes in flight.
type inboundLimits struct {
	streams  int           // concurrent inbound streams; zero: defaultInboundStreams
	deadline time.Duration // how long an inbound stream may live; zero: memberlist's TCPTimeout (set by newTransport)
}

// guardConfig is what the guard needs to know of memberlist's configuration.
type guardConfig struct {
	label       string // memberlist's Label: streams and packets without it are dropped
	encrypted   bool   // encryption is required of inbound traffic (a key and GossipVerifyIncoming)
	compression bool   // memberlist's EnableCompression: without it no peer of ours compresses
	limits      inboundLimits
}

// inboundGuard admits inbound streams and packets for a countingTransport. Its methods are
// safe for concurrent use.
type inboundGuard struct {
	cfg    guardConfig
	drops  *dropLog
	open   prometheus.Gauge // streams holding a slot
	slots  chan struct{}    // one per stream from acceptance to Close
	budget atomic.Int64     // declared bytes of admitted streams not yet closed
}

func newInboundGuard(cfg guardConfig, drops *dropLog, open prometheus.Gauge) *inboundGuard {
	if cfg.limits.streams <= 0 {
		cfg.limits.streams = defaultInboundStreams
	}
	return &inboundGuard{cfg: cfg, drops: drops, open: open, slots: make(chan struct{}, cfg.limits.streams)}
}

// acquire takes a stream slot without blocking; false: all are taken, and the caller closes
// the stream (counted here).
func (g *inboundGuard) acquire(c net.Conn) bool {
	select {
	case g.slots <- struct{}{}:
		g.open.Inc()
		return true
	default:
		g.drops.reject(reasonTooManyStreams, fmt.Sprintf("more than %d inbound streams", g.cfg.limits.streams), peerOf(c))
		return false
	}
}

func (g *inboundGuard) release(reserved int64) {
	g.budget.Add(-reserved)
	<-g.slots
	g.open.Dec()
}

func (g *inboundGuard) reserve(n int64) bool {
	for {
		cur := g.budget.Load()
		if cur+n > defaultStreamBudget {
			return false
		}
		if g.budget.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// admit reads the header of c, which holds a slot, under the stream deadline and returns the
// stream for memberlist, or nil after closing c and releasing its slot (a rejection is
// counted; a stream cut short by ctx, the transport shutting down, is not). It blocks for up
// to the deadline.
func (g *inboundGuard) admit(ctx context.Context, c net.Conn) net.Conn {
	hard := time.Now().Add(g.cfg.limits.deadline)
	_ = c.SetDeadline(hard)
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(c, peekSize)
	declared, reason, detail := g.inspect(br)
	if !stop() {
		_ = c.Close()
		g.release(0)
		return nil
	}
	if reason == "" && !g.reserve(declared) {
		reason, detail = reasonStreamBudget, fmt.Sprintf("%d bytes declared, %d of %d in flight", declared, g.budget.Load(), defaultStreamBudget)
	}
	if reason != "" {
		g.drops.reject(reason, detail, peerOf(c))
		_ = c.Close()
		g.release(0)
		return nil
	}
	peeked, _ := br.Peek(br.Buffered()) // what was read ahead, handed on first
	return &guardedConn{
		Conn:     c,
		g:        g,
		peeked:   peeked,
		hard:     hard,
		left:     int64(len(peeked)) + maxStreamBytes,
		reserved: declared,
	}
}

// inspect parses the stream header from br. It returns the bytes the stream declares (what
// memberlist will buffer for it), or the reason to reject it and a detail for the log.
func (g *inboundGuard) inspect(br *bufio.Reader) (declared int64, reason, detail string) {
	p := &peeker{br: br}
	label := ""
	if p.take(1)[0] == mlLabel && p.err == nil {
		n := p.take(1)[0]
		if p.err == nil && n == 0 {
			return 0, reasonMalformed, "empty label header"
		}
		label = string(p.take(int(n)))
	} else {
		p.off = 0 // no label header: that byte is the message type
	}
	if p.err != nil {
		return 0, p.reason(), "stream header: " + p.err.Error()
	}
	if label != g.cfg.label {
		return 0, reasonBadLabel, fmt.Sprintf("stream label %q", label)
	}
	typ := p.take(1)
	if p.err != nil {
		return 0, p.reason(), "stream header: " + p.err.Error()
	}
	switch {
	case typ[0] == mlEncrypt && g.cfg.encrypted:
		n := int64(binary.BigEndian.Uint32(p.take(4)))
		if p.err != nil {
			return 0, p.reason(), "stream header: " + p.err.Error()
		}
		if n > maxStreamBytes {
			return 0, reasonOversizedStream, fmt.Sprintf("declares %d bytes, at most %d", n, maxStreamBytes)
		}
		return n, "", ""
	case g.cfg.encrypted, typ[0] == mlEncrypt:
		// memberlist refuses a plaintext stream when encryption is required, and an encrypted
		// one when it is off, after reading the type byte alone, and tells the peer why (a
		// misconfigured node logs it). The refusal is counted through its log line.
		return 0, "", ""
	}
	// Plaintext gossip (insecure_gossip): the lengths are in a msgpack header.
	var n int64
	switch typ[0] {
	case mlPushPull:
		m := p.msgpackMap("")
		nodes, state := m["Nodes"], m["UserStateLen"]
		if p.err == nil && (nodes < 0 || state < 0) {
			p.err = errors.New("negative length")
		}
		if p.err != nil {
			return 0, p.reason(), "push/pull header: " + p.err.Error()
		}
		if nodes > maxClusterMembers || state > maxMessageBytes || nodes*maxPushNodeBytes+state > maxStreamBytes {
			return 0, reasonOversizedStream, fmt.Sprintf("push/pull declares %d members and %d bytes of state", nodes, state)
		}
		return nodes*maxPushNodeBytes + state, "", ""
	case mlUser:
		n = p.msgpackMap("")["UserMsgLen"]
	case mlCompress:
		if !g.cfg.compression {
			// No peer of ours compresses, and memberlist inflates up to 40 MiB from a few KiB.
			return 0, reasonMalformed, "compressed stream, but compression is off"
		}
		n = p.msgpackMap("Buf")["Buf"]
	default:
		return 0, "", "" // a ping: small, and memberlist reads no more than it holds
	}
	if p.err == nil && n < 0 {
		p.err = errors.New("negative length")
	}
	if p.err != nil {
		return 0, p.reason(), "stream header: " + p.err.Error()
	}
	if n > maxStreamBytes {
		return 0, reasonOversizedStream, fmt.Sprintf("declares %d bytes, at most %d", n, maxStreamBytes)
	}
	return n, "", ""
}

// peeker reads a header from the start of a stream through br, without consuming it.
type peeker struct {
	br  *bufio.Reader
	off int
	err error // sticky
}

// take returns the next n bytes. After an error it returns n zero bytes.
func (p *peeker) take(n int) []byte {
	if p.err == nil {
		b, err := p.br.Peek(p.off + n)
		if err == nil {
			p.off += n
			return b[p.off-n : p.off]
		}
		p.err = err
	}
	return make([]byte, n)
}

func (p *peeker) reason() string {
	var ne net.Error
	if errors.As(p.err, &ne) && ne.Timeout() {
		return reasonStreamTimeout
	}
	return reasonMalformed
}

func (p *peeker) uint(n int) int64 {
	var v uint64
	for _, b := range p.take(n) {
		v = v<<8 | uint64(b)
	}
	if v > 1<<62 {
		return 1 << 62 // larger than any bound, and no overflow
	}
	return int64(v)
}

// msgpackMap reads the flat msgpack map memberlist encodes its headers as (field name →
// integer or bool), as codec.MsgpackHandle writes them. When it meets the key stop, whose
// value is a byte string, it stores the string's length and stops before its bytes.
func (p *peeker) msgpackMap(stop string) map[string]int64 {
	out := map[string]int64{}
	var n int64
	switch b := p.take(1)[0]; {
	case b >= 0x80 && b <= 0x8f:
		n = int64(b & 0x0f)
	case b == 0xde:
		n = p.uint(2)
	default:
		p.err = fmt.Errorf("not a small map (%#x)", b)
	}
	if n > 8 {
		p.err = fmt.Errorf("map of %d entries", n)
	}
	for range n {
		if p.err != nil {
			break
		}
		key := p.str(32)
		if key == stop {
			out[key] = p.rawLen()
			break
		}
		out[key] = p.int()
	}
	if p.err != nil {
		return map[string]int64{}
	}
	return out
}

// str reads a short string (a map key).
func (p *peeker) str(limit int64) string {
	n := p.rawLen()
	if p.err == nil && n > limit {
		p.err = fmt.Errorf("key of %d bytes", n)
	}
	if p.err != nil {
		return ""
	}
	return string(p.take(int(n)))
}

// rawLen reads the header of a string or byte string and returns its length.
func (p *peeker) rawLen() int64 {
	switch b := p.take(1)[0]; {
	case b >= 0xa0 && b <= 0xbf:
		return int64(b & 0x1f)
	case b == 0xd9 || b == 0xc4: // str8, bin8
		return p.uint(1)
	case b == 0xda || b == 0xc5: // str16 (raw16), bin16
		return p.uint(2)
	case b == 0xdb || b == 0xc6: // str32 (raw32), bin32
		return p.uint(4)
	default:
		if p.err == nil {
			p.err = fmt.Errorf("not a string (%#x)", b)
		}
		return 0
	}
}

// int reads an integer, bool or nil (as 0 or 1).
func (p *peeker) int() int64 {
	b := p.take(1)[0]
	switch {
	case b <= 0x7f:
		return int64(b)
	case b >= 0xe0:
		return int64(int8(b))
	case b == 0xc0 || b == 0xc2:
		return 0
	case b == 0xc3:
		return 1
	case b >= 0xcc && b <= 0xcf: // uint8..uint64
		return p.uint(1 << (b - 0xcc))
	case b >= 0xd0 && b <= 0xd3: // int8..int64
		size := 1 << (b - 0xd0)
		raw := p.take(size)
		var v uint64
		for _, x := range raw {
			v = v<<8 | uint64(x)
		}
		shift := 64 - 8*size
		return int64(v<<shift) >> shift // sign-extend
	}
	if p.err == nil {
		p.err = fmt.Errorf("not an integer (%#x)", b)
	}
	return 0
}

// packetOK reports whether memberlist should see p: a packet without our label is counted
// and dropped here (memberlist would drop it too, with an error line per packet).
func (g *inboundGuard) packetOK(buf []byte, from net.Addr) bool {
	label := ""
	if len(buf) > 0 && buf[0] == mlLabel {
		if len(buf) < 2 || buf[1] == 0 || len(buf) < 2+int(buf[1]) {
			g.drops.reject(reasonMalformed, "truncated packet label header", addrString(from))
			return false
		}
		label = string(buf[2 : 2+int(buf[1])])
	}
	if label != g.cfg.label {
		g.drops.reject(reasonBadLabel, fmt.Sprintf("packet label %q", label), addrString(from))
		return false
	}
	return true
}

// guardedConn is an admitted inbound stream as memberlist sees it: the header bytes the
// guard read come first; reads stop at the size bound; no deadline memberlist sets reaches
// past the stream's own; Close releases the stream's slot and budget. memberlist uses a
// stream from one goroutine; Close may come from another.
type guardedConn struct {
	net.Conn
	g        *inboundGuard
	peeked   []byte
	hard     time.Time
	left     int64 // bytes memberlist may still read, peeked ones included
	reserved int64

	timedOut  atomic.Bool // the timeout was counted
	overran   atomic.Bool // the size bound was counted
	closeOnce sync.Once
}

func (c *guardedConn) Read(p []byte) (int, error) {
	if len(c.peeked) > 0 {
		n := copy(p, c.peeked)
		c.peeked = c.peeked[n:]
		c.left -= int64(n)
		return n, nil
	}
	if c.left <= 0 {
		if c.overran.CompareAndSwap(false, true) {
			c.g.drops.reject(reasonOversizedStream, fmt.Sprintf("sent more than %d bytes", maxStreamBytes), peerOf(c.Conn))
		}
		return 0, errStreamTooLong
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= int64(n)
	c.check(err)
	return n, err
}

func (c *guardedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.check(err)
	return n, err
}

// check counts the stream's first timeout.
func (c *guardedConn) check(err error) {
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() && c.timedOut.CompareAndSwap(false, true) {
		c.g.drops.reject(reasonStreamTimeout, fmt.Sprintf("stream not done within %v", c.g.cfg.limits.deadline), peerOf(c.Conn))
	}
}

func (c *guardedConn) clamp(t time.Time) time.Time {
	if t.IsZero() || t.After(c.hard) {
		return c.hard
	}
	return t
}

func (c *guardedConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *guardedConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *guardedConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.clamp(t)) }

func (c *guardedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.g.release(c.reserved) })
	return err
}

var _ io.ReadWriteCloser = (*guardedConn)(nil)

func peerOf(c net.Conn) string { return addrString(c.RemoteAddr()) }

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
