package coordinator

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// bigState is a node with n images the way containerd lists them on a GKE node: one tag and
// one repo digest each, a few pulls in flight, held and failed.
func bigState(n int) agent.State {
	s := agent.State{
		Node:           "gke-rsp-pool-1-abcdef12-x9z8",
		Version:        uint64(time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC).UnixNano()) + 42,
		DesiredVersion: 1735787045000000123,
		Runtime:        "containerd 1.7.22",
		Ready:          true,
		Cached:         map[string]string{},
		Disk:           agent.Disk{UsedBytes: 80 << 30, CapacityBytes: 200 << 30, FreeBytes: 120 << 30, Path: "/var/lib/containerd"},
	}
	const repo = "us-central1-docker.pkg.dev/rubin-shared-services-71ec/sciplat/sciplat-lab"
	for i := range n {
		tag := fmt.Sprintf("%s:w_2024_%02d", repo, i)
		d := digest(tag)
		s.Images = append(s.Images, agent.CachedImage{
			ID:      digest("config" + tag),
			Tags:    []string{tag},
			Digests: []string{repo + "@" + d},
			Size:    4<<30 + uint64(i),
		})
		if i < 10 {
			s.Cached[tag] = d
		}
	}
	s.Missing = []string{repo + ":w_2025_01", repo + ":w_2025_02", repo + ":recommended"}
	s.Queued = []string{repo + ":recommended"}
	s.Pulling = []agent.Pulling{{Ref: repo + ":w_2025_01", Started: time.Now()}}
	s.Held = []agent.Held{{Ref: repo + ":w_2025_02", Reason: "pull would leave 9% free on the image filesystem, below 15%"}}
	s.Failed = []agent.Failed{{Ref: repo + ":w_2025_03", Error: "pull: rpc error: code = DeadlineExceeded", Attempts: 3, NextRetry: time.Now().Add(time.Minute)}}
	return s
}

func TestStateRoundTrip(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 50} {
		t.Run(fmt.Sprintf("%d images", n), func(t *testing.T) {
			t.Parallel()
			s := bigState(n)
			p := project(s.Node, s)
			b, err := encodeMessage(message{Type: msgState, State: stateToWire(s.Node, s)})
			require.NoError(t, err)
			require.Equal(t, byte(msgState), b[0])
			require.Equal(t, byte(stateVersionPins), b[1])
			m, err := decodeMessage(b)
			require.NoError(t, err)
			require.Equal(t, msgState, m.Type)
			got := stateFromWire(m.State)
			require.Equal(t, p, got)
			// The projection keeps what the leader needs.
			require.Len(t, got.Images, n)
			require.Equal(t, s.Cached, got.Cached)
			require.Equal(t, s.Missing, got.Missing)
			require.Equal(t, s.Held, got.Held)
			require.True(t, s.Pulling[0].Started.Equal(got.Pulling[0].Started))
			if n > 0 {
				require.Equal(t, s.Images[0].Tags, got.Images[0].Tags)
				require.Equal(t, s.Images[0].Digests, got.Images[0].Digests)
				require.Empty(t, got.Images[0].ID, "image IDs stay on the node")
			}
		})
	}
}

// TestStateVersions: a version 1 state (what a node sends while an older agent is a member,
// and what older agents send) decodes with no pins and no progress; version 2 carries them.
func TestStateVersions(t *testing.T) {
	t.Parallel()
	s := bigState(3)
	s.Images[1].Pinned = true
	s.Pinned = []string{s.Images[1].Tags[0]}
	s.Pinning = agent.Pinning{Status: agent.PinHonoured, Detail: "containerd 2.1", BudgetBytes: 10, PinnedBytes: 5, OverBudget: []string{"docker.io/cm/over:t"}}
	s.Pulling[0].Progress = agent.Progress{Phase: agent.PhaseDownloading, BytesDone: 1, BytesTotal: 2, BytesPerSecond: 3, At: time.Unix(5, 0).UTC()}
	v1, err := encodeMessage(message{Type: msgState, Version: wireVersion, State: stateToWire(s.Node, s)})
	require.NoError(t, err)
	require.Equal(t, byte(wireVersion), v1[1])
	m, err := decodeMessage(v1)
	require.NoError(t, err)
	old := stateFromWire(m.State)
	require.Empty(t, old.Pinned)
	require.Equal(t, agent.Pinning{}, old.Pinning, "a version 1 state says nothing about pins")
	require.False(t, old.Images[1].Pinned)
	require.Equal(t, agent.Progress{}, old.Pulling[0].Progress)
	require.Equal(t, s.Cached, old.Cached, "everything else arrives")

	v2, err := encodeMessage(message{Type: msgState, State: stateToWire(s.Node, s)})
	require.NoError(t, err)
	m, err = decodeMessage(v2)
	require.NoError(t, err)
	got := stateFromWire(m.State)
	require.Equal(t, s.Pinning, got.Pinning)
	require.Equal(t, s.Pinned, got.Pinned)
	require.True(t, got.Images[1].Pinned)
	require.False(t, got.Images[0].Pinned)
	require.Equal(t, s.Pulling[0].Progress, got.Pulling[0].Progress)

	_, err = decodeMessage(raw(byte(msgDesired), stateVersionPins, nil))
	require.Equal(t, reasonBadVersion, dropReason(err), "desired lists have one version")
	_, err = decodeMessage(raw(byte(msgState), 3, nil))
	require.Equal(t, reasonBadVersion, dropReason(err))
}

func TestStateSize(t *testing.T) {
	t.Parallel()
	s := bigState(50)
	b, err := encodeMessage(message{Type: msgState, State: stateToWire(s.Node, s)})
	require.NoError(t, err)
	var body wbuf
	encodeState(&body, stateToWire(s.Node, s), stateVersionPins)
	t.Logf("state with 50 images: %d bytes on the wire (%d uncompressed)", len(b), len(body.b))
	require.Less(t, len(b), 4096, "50 images stay well under a few KB")
}

func TestDesiredRoundTrip(t *testing.T) {
	t.Parallel()
	d := agent.Desired{Version: 1735787045000000123, Images: []image.Image{
		{Ref: image.MustParseRef("docker.io/lsstsqre/sciplat-lab:recommended"), Digest: digest("r"), Name: "Recommended (Weekly 2024_10)", Size: 4 << 30},
		{Ref: image.MustParseRef("docker.io/lsstsqre/sciplat-lab:w_2024_10"), Name: "Weekly 2024_10", Priority: 1},
	}}
	b, err := encodeMessage(message{Type: msgDesired, Desired: desiredToWire("n1", d)})
	require.NoError(t, err)
	m, err := decodeMessage(b)
	require.NoError(t, err)
	require.Equal(t, msgDesired, m.Type)
	require.Equal(t, "n1", m.Desired.From)
	require.Equal(t, d, desiredFromWire(m.Desired))

	empty, err := encodeMessage(message{Type: msgDesired, Desired: desiredToWire("n1", agent.Desired{Version: 1, Images: []image.Image{}})})
	require.NoError(t, err)
	m, err = decodeMessage(empty)
	require.NoError(t, err)
	require.Empty(t, m.Desired.Images)
}

func TestProject(t *testing.T) {
	t.Parallel()
	s := agent.State{
		Node:      "spoofed",
		Version:   7,
		LastError: strings.Repeat("é", 1000), // 2000 bytes
		Images: []agent.CachedImage{
			{ID: "sha256:x", Tags: nil, Digests: nil},                                                // nothing to match: left out
			{ID: "sha256:y", Tags: []string{""}, Digests: []string{"repo@sha256:short", "nodigest"}}, // nothing valid
			{Tags: []string{"docker.io/a/b:c"}, Digests: []string{"docker.io/a/b@" + digest("b")}},
		},
		Cached:  map[string]string{"docker.io/a/b:c": digest("b"), "bad": "sha256:nothex", "": digest("x")},
		Missing: []string{"", strings.Repeat("x", maxRefLen+1), "docker.io/a/b:d"},
		Failed:  []agent.Failed{{Ref: "docker.io/a/b:e", Error: "boom", Attempts: -1}},
	}
	p := project("me", s)
	require.Equal(t, "me", p.Node, "a node only speaks for itself")
	require.Len(t, p.Images, 1)
	require.Equal(t, map[string]string{"docker.io/a/b:c": digest("b")}, p.Cached)
	require.Equal(t, []string{"docker.io/a/b:d"}, p.Missing)
	require.LessOrEqual(t, len(p.LastError), maxTextLen)
	require.True(t, strings.HasPrefix(s.LastError, p.LastError), "clipped on a rune boundary")
	require.Zero(t, p.Failed[0].Attempts)
	b, err := encodeMessage(message{Type: msgState, State: stateToWire("me", s)})
	require.NoError(t, err)
	m, err := decodeMessage(b)
	require.NoError(t, err)
	require.Equal(t, p, stateFromWire(m.State))
}

// raw builds a message with an arbitrary header and body, compressed like the real ones.
func raw(typ, version byte, body []byte) []byte {
	var out bytes.Buffer
	out.WriteByte(typ)
	out.WriteByte(version)
	w, _ := flate.NewWriter(&out, flate.BestSpeed)
	_, _ = w.Write(body)
	_ = w.Close()
	return out.Bytes()
}

func str(s string) []byte { return append(binary.AppendUvarint(nil, uint64(len(s))), s...) }

func uv(v uint64) []byte { return binary.AppendUvarint(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// desiredBody is a desired body with one image: ref, digest algorithm + bytes, name, size.
func desiredBody(from string, ref string, digestPart []byte) []byte {
	return cat(str(from), uv(1), uv(1), str(ref), digestPart, str("name"), uv(0))
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	good, err := encodeMessage(message{Type: msgDesired, Desired: desiredToWire("n1", agent.Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef("docker.io/a/b:c")}}})})
	require.NoError(t, err)
	sha := append([]byte{1}, bytes.Repeat([]byte{0xab}, 32)...)
	tests := []struct {
		name   string
		in     []byte
		reason string
	}{
		{name: "empty", in: nil, reason: reasonShort},
		{name: "one byte", in: []byte{1}, reason: reasonShort},
		{name: "unknown type", in: raw(99, wireVersion, nil), reason: reasonUnknownType},
		{name: "type zero", in: raw(0, wireVersion, nil), reason: reasonUnknownType},
		{name: "future version", in: raw(byte(msgState), stateVersionPins+1, nil), reason: reasonBadVersion},
		{name: "desired in the state version", in: raw(byte(msgDesired), stateVersionPins, nil), reason: reasonBadVersion},
		{name: "too large", in: append([]byte{byte(msgState), wireVersion}, make([]byte, maxMessageBytes)...), reason: reasonTooLarge},
		{name: "not deflate", in: []byte{byte(msgState), wireVersion, 0xff, 0xff, 0xff}, reason: reasonDecode},
		{name: "truncated deflate", in: good[:len(good)-4], reason: reasonDecode},
		{name: "deflate bomb", in: raw(byte(msgState), wireVersion, make([]byte, maxBodyBytes+1)), reason: reasonTooLarge},
		{name: "empty body", in: raw(byte(msgState), wireVersion, nil), reason: reasonDecode},
		{name: "empty node name", in: raw(byte(msgDesired), wireVersion, desiredBody("", "docker.io/a/b:c", []byte{0})), reason: reasonInvalid},
		{name: "node name too long", in: raw(byte(msgDesired), wireVersion, desiredBody(strings.Repeat("n", 129), "docker.io/a/b:c", []byte{0})), reason: reasonInvalid},
		{name: "empty ref", in: raw(byte(msgDesired), wireVersion, desiredBody("n1", "", []byte{0})), reason: reasonInvalid},
		{name: "ref too long", in: raw(byte(msgDesired), wireVersion, desiredBody("n1", strings.Repeat("r", 513), []byte{0})), reason: reasonInvalid},
		{name: "ref not UTF-8", in: raw(byte(msgDesired), wireVersion, desiredBody("n1", "docker.io/\xff:c", []byte{0})), reason: reasonInvalid},
		{name: "ref that does not parse", in: raw(byte(msgDesired), wireVersion, desiredBody("n1", "docker.io/A/b:c", []byte{0})), reason: reasonInvalid},
		{name: "digest algorithm", in: raw(byte(msgDesired), wireVersion, desiredBody("n1", "docker.io/a/b:c", []byte{2})), reason: reasonInvalid},
		{name: "digest truncated", in: raw(byte(msgDesired), wireVersion, desiredBody("n1", "docker.io/a/b:c", sha[:10])), reason: reasonDecode},
		{name: "trailing bytes", in: raw(byte(msgDesired), wireVersion, append(desiredBody("n1", "docker.io/a/b:c", sha), 0)), reason: reasonInvalid},
		{name: "count too large", in: raw(byte(msgDesired), wireVersion, cat(str("n1"), uv(1), uv(maxItems+1))), reason: reasonInvalid},
		{name: "count beyond body", in: raw(byte(msgDesired), wireVersion, cat(str("n1"), uv(1), uv(100))), reason: reasonInvalid},
		{name: "string beyond body", in: raw(byte(msgDesired), wireVersion, cat(str("n1"), uv(1), uv(1), uv(50), []byte("abc"))), reason: reasonDecode},
		{name: "varint overflow", in: raw(byte(msgDesired), wireVersion, cat(str("n1"), bytes.Repeat([]byte{0xff}, 11))), reason: reasonDecode},
		{name: "unknown state flag", in: raw(byte(msgState), wireVersion, cat(str("n1"), uv(1), uv(1), uv(2))), reason: reasonInvalid},
		{name: "image with nothing", in: raw(byte(msgState), wireVersion, cat(str("n1"), uv(1), uv(1), uv(1), str(""), str(""), uv(1), uv(0), uv(0), uv(5))), reason: reasonInvalid},
		{name: "duplicate cached", in: raw(byte(msgState), wireVersion, cat(str("n1"), uv(1), uv(1), uv(1), str(""), str(""), uv(0), uv(2), str("r"), []byte{0}, str("r"), []byte{0})), reason: reasonInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := decodeMessage(tt.in)
			require.Error(t, err)
			require.Equal(t, tt.reason, dropReason(err), err.Error())
		})
	}
}

func TestDecodeCountsDrops(t *testing.T) {
	t.Parallel()
	c := &Cluster{cfg: Config{NodeName: "n1"}}
	var err error
	c.metrics, err = newMetrics(nil)
	require.NoError(t, err)
	c.log = slog.New(slog.DiscardHandler)
	c.inbox = make(chan []byte) // always full
	c.handle([]byte{1})
	c.handle(raw(77, 1, nil))
	for range 2 {
		c.deliver([]byte{1, 2})
	}
	require.Equal(t, 1.0, value(c.metrics.dropped.WithLabelValues(reasonShort)))
	require.Equal(t, 1.0, value(c.metrics.dropped.WithLabelValues(reasonUnknownType)))
	require.Equal(t, 2.0, value(c.metrics.dropped.WithLabelValues(reasonOverflow)))
}

func FuzzDecode(f *testing.F) {
	s := bigState(3)
	st, _ := encodeMessage(message{Type: msgState, State: stateToWire(s.Node, s)})
	de, _ := encodeMessage(message{Type: msgDesired, Desired: desiredToWire("n1", agent.Desired{Version: 5, Images: []image.Image{{Ref: image.MustParseRef("docker.io/a/b:c"), Digest: digest("x"), Name: "x"}}})})
	f.Add(st)
	f.Add(de)
	f.Add([]byte{})
	f.Add([]byte{1, 1})
	f.Add(raw(byte(msgDesired), wireVersion, desiredBody("n1", "r", []byte{0})))
	f.Add(raw(byte(msgState), wireVersion, cat(str("n1"), uv(1), uv(1), uv(1), str(""), str(""), uv(0), uv(0))))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage(b)
		if err != nil {
			require.NotEmpty(t, dropReason(err))
			return
		}
		// Whatever decodes re-encodes to something that decodes to the same message.
		again, err := encodeMessage(m)
		require.NoError(t, err)
		m2, err := decodeMessage(again)
		require.NoError(t, err)
		require.Equal(t, m, m2)
	})
}

// fuzzBodyArgs maps FuzzDecodeBody's typ argument to a message type and format version:
// even typ is a state (typ 0 version 1, typ 2 version 2, and so on alternating), odd typ a
// desired list.
func fuzzBodyArgs(typ byte) (msgType, byte) {
	if typ%2 == 0 {
		return msgState, wireVersion + (typ/2)%2
	}
	return msgDesired, wireVersion
}

type bodySeed struct {
	typ  byte
	body []byte
}

// fuzzBodySeeds are FuzzDecodeBody's seeds: a state in each format version and a desired
// list, each valid so that plain go test reaches the round trip (TestFuzzBodySeedsDecode).
func fuzzBodySeeds() []bodySeed {
	s := bigState(2)
	var seeds []bodySeed
	for _, v := range []byte{wireVersion, stateVersionPins} {
		var w wbuf
		encodeState(&w, stateToWire(s.Node, s), v)
		seeds = append(seeds, bodySeed{typ: 2 * (v - wireVersion), body: w.b})
	}
	return append(seeds, bodySeed{typ: 1, body: desiredBody("n1", "docker.io/a/b:c", append([]byte{1}, make([]byte, 32)...))})
}

func TestFuzzBodySeedsDecode(t *testing.T) {
	t.Parallel()
	want := []struct {
		typ     msgType
		version byte
	}{{msgState, wireVersion}, {msgState, stateVersionPins}, {msgDesired, wireVersion}}
	seeds := fuzzBodySeeds()
	require.Len(t, seeds, len(want))
	for i, sd := range seeds {
		typ, version := fuzzBodyArgs(sd.typ)
		require.Equal(t, want[i].typ, typ, "seed %d", i)
		require.Equal(t, want[i].version, version, "seed %d", i)
		m, err := decodeBody(typ, version, sd.body)
		require.NoError(t, err, "seed %d", i)
		require.Equal(t, typ, m.Type)
	}
}

// FuzzDecodeBody fuzzes the decompressed body, where FuzzDecode's random bytes rarely reach.
func FuzzDecodeBody(f *testing.F) {
	for _, sd := range fuzzBodySeeds() {
		f.Add(sd.typ, sd.body)
	}
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		mt, version := fuzzBodyArgs(typ)
		m, err := decodeBody(mt, version, body)
		if err != nil {
			require.NotEmpty(t, dropReason(err))
			return
		}
		again, err := encodeMessage(m)
		require.NoError(t, err)
		m2, err := decodeMessage(again)
		require.NoError(t, err)
		require.Equal(t, m, m2)
	})
}
