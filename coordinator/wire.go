package coordinator

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// Wire format of the coordinator's own messages (user messages and push/pull state carried
// by memberlist, which encrypts and labels them):
//
//	byte 0: message type (msgState, msgDesired)
//	byte 1: format version (wireVersion)
//	rest:   DEFLATE-compressed body; strings are uvarint length + UTF-8 bytes, numbers are
//	        uvarints (times: zig-zag varint ns since the epoch, 0 = zero time), lists are a
//	        uvarint count + items, digests are one algorithm byte (0 none, 1 sha256) + 32 bytes.
//
// A receiver of an unknown format version drops the message: a new version is a new type or
// a new version byte, never a silent reinterpretation.
const (
	wireVersion = 1

	maxMessageBytes = 1 << 20 // compressed, as received
	maxBodyBytes    = 1 << 20 // decompressed
	maxNodeName     = 128
	maxRefLen       = 512
	maxNameLen      = 256  // display names
	maxTextLen      = 1024 // errors, reasons, runtime
	maxItems        = 4096 // entries of any list
	maxTagsPerImage = 256
)

type msgType uint8

const (
	msgState   msgType = 1 // a node's state, sent to the leader and carried by push/pull
	msgDesired msgType = 2 // the leader's desired list, sent to every member
)

func (t msgType) String() string {
	switch t {
	case msgState:
		return "state"
	case msgDesired:
		return "desired"
	}
	return "unknown"
}

// Drop reasons, the values of cachemachine_gossip_dropped_total{reason}.
const (
	reasonShort       = "short"
	reasonUnknownType = "unknown_type"
	reasonBadVersion  = "bad_version"
	reasonTooLarge    = "too_large"
	reasonDecode      = "decode"
	reasonInvalid     = "invalid"
	reasonOverflow    = "overflow"      // inbox full: the run loop is behind
	reasonSendFailed  = "send_failed"   // an outgoing reliable send failed
	reasonSendQueue   = "send_overflow" // the outgoing queue was full
)

// wireError is a decoding failure with the reason it is counted under.
type wireError struct {
	reason string
	msg    string
}

func (e *wireError) Error() string { return "gossip message: " + e.reason + ": " + e.msg }

func wireErr(reason, format string, args ...any) error {
	return &wireError{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// dropReason returns the metric reason of a decode error.
func dropReason(err error) string {
	var we *wireError
	if errors.As(err, &we) {
		return we.reason
	}
	return reasonDecode
}

// message is the decoded form of every message kind; Type says which fields are set.
type message struct {
	Type msgType
	// State is set for msgState: a node's state in the wire projection (see project).
	State agent.State
	// From and Desired are set for msgDesired: the publishing node and its list.
	From    string
	Desired agent.Desired
}

// encodeMessage encodes m. It fails only when m would not pass decodeMessage's validation;
// callers pass states through project and desired lists through cleanDesired first.
func encodeMessage(m message) ([]byte, error) {
	var w wbuf
	switch m.Type {
	case msgState:
		encodeState(&w, m.State)
	case msgDesired:
		encodeDesired(&w, m.From, m.Desired)
	default:
		return nil, fmt.Errorf("encode: unknown message type %d", m.Type)
	}
	if len(w.b) > maxBodyBytes {
		return nil, fmt.Errorf("encode %s: body of %d bytes exceeds %d", m.Type, len(w.b), maxBodyBytes)
	}
	out := bytes.NewBuffer(make([]byte, 0, 2+len(w.b)/2))
	out.WriteByte(byte(m.Type))
	out.WriteByte(wireVersion)
	fw := flateWriters.Get().(*flate.Writer)
	fw.Reset(out)
	_, err := fw.Write(w.b)
	if err == nil {
		err = fw.Close()
	}
	flateWriters.Put(fw)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.Type, err)
	}
	if out.Len() > maxMessageBytes {
		return nil, fmt.Errorf("encode %s: message of %d bytes exceeds %d", m.Type, out.Len(), maxMessageBytes)
	}
	// Validate what we send with the receiver's rules, so a bug here shows up at the sender.
	if _, err := decodeMessage(out.Bytes()); err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.Type, err)
	}
	return out.Bytes(), nil
}

// decodeMessage decodes and validates b. It never panics; every error is a *wireError whose
// reason is a cachemachine_gossip_dropped_total label.
func decodeMessage(b []byte) (message, error) {
	if len(b) < 2 {
		return message{}, wireErr(reasonShort, "%d bytes", len(b))
	}
	if len(b) > maxMessageBytes {
		return message{}, wireErr(reasonTooLarge, "%d bytes", len(b))
	}
	typ := msgType(b[0])
	if typ != msgState && typ != msgDesired {
		return message{}, wireErr(reasonUnknownType, "type %d", b[0])
	}
	if b[1] != wireVersion {
		return message{}, wireErr(reasonBadVersion, "%s version %d", typ, b[1])
	}
	body, err := inflate(b[2:])
	if err != nil {
		return message{}, err
	}
	return decodeBody(typ, body)
}

// decodeBody decodes and validates the decompressed body of a message of type typ.
func decodeBody(typ msgType, body []byte) (message, error) {
	r := &rbuf{b: body}
	m := message{Type: typ}
	switch typ {
	case msgState:
		m.State = decodeState(r)
	case msgDesired:
		m.From, m.Desired = decodeDesired(r)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(reasonInvalid, "%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return message{}, r.err
	}
	return m, nil
}

var flateWriters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.DefaultCompression) // only fails for a bad level
	return w
}}

func inflate(b []byte) ([]byte, error) {
	fr := flate.NewReader(bytes.NewReader(b))
	defer fr.Close()
	body, err := io.ReadAll(io.LimitReader(fr, maxBodyBytes+1))
	if err != nil {
		return nil, wireErr(reasonDecode, "inflate: %v", err)
	}
	if len(body) > maxBodyBytes {
		return nil, wireErr(reasonTooLarge, "body exceeds %d bytes", maxBodyBytes)
	}
	return body, nil
}

func encodeState(w *wbuf, s agent.State) {
	w.str(s.Node)
	w.uvarint(s.Version)
	w.uvarint(s.DesiredVersion)
	var flags uint64
	if s.Ready {
		flags |= 1
	}
	w.uvarint(flags)
	w.str(s.Runtime)
	w.str(s.LastError)
	w.uvarint(uint64(len(s.Images)))
	for _, img := range s.Images {
		w.strs(img.Tags)
		w.uvarint(uint64(len(img.Digests)))
		for _, rd := range img.Digests {
			repo, digest, _ := strings.Cut(rd, "@")
			w.str(repo)
			w.digest(digest)
		}
		w.uvarint(img.Size)
	}
	refs := slices.Sorted(maps.Keys(s.Cached))
	w.uvarint(uint64(len(refs)))
	for _, ref := range refs {
		w.str(ref)
		w.digest(s.Cached[ref])
	}
	w.strs(s.Missing)
	w.strs(s.Queued)
	w.uvarint(uint64(len(s.Pulling)))
	for _, p := range s.Pulling {
		w.str(p.Ref)
		w.time(p.Started)
	}
	w.uvarint(uint64(len(s.Held)))
	for _, h := range s.Held {
		w.str(h.Ref)
		w.str(h.Reason)
	}
	w.uvarint(uint64(len(s.Failed)))
	for _, f := range s.Failed {
		w.str(f.Ref)
		w.str(f.Error)
		w.uvarint(uint64(f.Attempts))
		w.time(f.NextRetry)
	}
	w.uvarint(s.Disk.UsedBytes)
	w.uvarint(s.Disk.CapacityBytes)
	w.uvarint(s.Disk.FreeBytes)
}

func decodeState(r *rbuf) agent.State {
	var s agent.State
	s.Node = r.nodeName()
	s.Version = r.uvarint()
	s.DesiredVersion = r.uvarint()
	flags := r.uvarint()
	if flags&^1 != 0 {
		r.fail(reasonInvalid, "unknown state flags %#x", flags)
	}
	s.Ready = flags&1 != 0
	s.Runtime = r.str(maxTextLen, false)
	s.LastError = r.str(maxTextLen, false)
	n := r.count(maxItems)
	s.Images = make([]agent.CachedImage, 0, n)
	for range n {
		var img agent.CachedImage
		img.Tags = r.refs(maxTagsPerImage)
		nd := r.count(maxTagsPerImage)
		for range nd {
			repo := r.str(maxRefLen, true)
			d := r.digest()
			if d == "" || strings.Contains(repo, "@") {
				r.fail(reasonInvalid, "bad repo digest")
			}
			img.Digests = append(img.Digests, repo+"@"+d)
		}
		img.Size = r.uvarint()
		if r.err != nil {
			break
		}
		if len(img.Tags) == 0 && len(img.Digests) == 0 {
			r.fail(reasonInvalid, "image with neither tag nor digest")
		}
		s.Images = append(s.Images, img)
	}
	n = r.count(maxItems)
	s.Cached = make(map[string]string, n)
	for range n {
		ref := r.str(maxRefLen, true)
		d := r.digest()
		if _, dup := s.Cached[ref]; dup && r.err == nil {
			r.fail(reasonInvalid, "duplicate cached reference")
		}
		s.Cached[ref] = d
	}
	s.Missing = r.refs(maxItems)
	s.Queued = r.refs(maxItems)
	n = r.count(maxItems)
	for range n {
		s.Pulling = append(s.Pulling, agent.Pulling{Ref: r.str(maxRefLen, true), Started: r.time()})
	}
	n = r.count(maxItems)
	for range n {
		s.Held = append(s.Held, agent.Held{Ref: r.str(maxRefLen, true), Reason: r.str(maxTextLen, false)})
	}
	n = r.count(maxItems)
	for range n {
		f := agent.Failed{Ref: r.str(maxRefLen, true), Error: r.str(maxTextLen, false)}
		attempts := r.uvarint()
		if attempts > 1<<31-1 {
			r.fail(reasonInvalid, "attempts %d", attempts)
		}
		f.Attempts = int(attempts)
		f.NextRetry = r.time()
		s.Failed = append(s.Failed, f)
	}
	s.Disk.UsedBytes = r.uvarint()
	s.Disk.CapacityBytes = r.uvarint()
	s.Disk.FreeBytes = r.uvarint()
	return s
}

func encodeDesired(w *wbuf, from string, d agent.Desired) {
	w.str(from)
	w.uvarint(d.Version)
	w.uvarint(uint64(len(d.Images)))
	for _, img := range d.Images {
		w.str(img.Ref.String())
		w.digest(img.Digest)
		w.str(img.Name)
		w.uvarint(img.Size)
	}
}

func decodeDesired(r *rbuf) (string, agent.Desired) {
	from := r.nodeName()
	d := agent.Desired{Version: r.uvarint()}
	n := r.count(maxItems)
	d.Images = make([]image.Image, 0, n)
	for i := range n {
		ref := r.str(maxRefLen, true)
		img := image.Image{Digest: r.digest(), Name: r.str(maxNameLen, false), Size: r.uvarint(), Priority: i}
		if r.err != nil {
			break
		}
		var err error
		if img.Ref, err = image.ParseRef(ref); err != nil {
			r.fail(reasonInvalid, "desired image: %v", err)
			break
		}
		d.Images = append(d.Images, img)
	}
	return from, d
}

// wbuf accumulates a message body.
type wbuf struct{ b []byte }

func (w *wbuf) uvarint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }

func (w *wbuf) str(s string) {
	w.uvarint(uint64(len(s)))
	w.b = append(w.b, s...)
}

func (w *wbuf) strs(ss []string) {
	w.uvarint(uint64(len(ss)))
	for _, s := range ss {
		w.str(s)
	}
}

// digest writes "sha256:<64 hex>" as its 32 bytes and "" as none. Callers pass only those
// (validDigest); anything else is written as none, which the encoder's self-check catches
// where none is not allowed.
func (w *wbuf) digest(d string) {
	raw, ok := parseDigest(d)
	if !ok {
		w.b = append(w.b, 0)
		return
	}
	w.b = append(w.b, 1)
	w.b = append(w.b, raw...)
}

func (w *wbuf) time(t time.Time) {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	w.b = binary.AppendVarint(w.b, ns)
}

// rbuf reads a message body. The first error sticks; later reads return zero values, so
// decoders read straight through and check r.err once.
type rbuf struct {
	b   []byte
	err error
}

func (r *rbuf) fail(reason, format string, args ...any) {
	if r.err == nil {
		r.err = wireErr(reason, format, args...)
	}
	r.b = nil
}

func (r *rbuf) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(reasonDecode, "bad uvarint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a list length, bounded by limit and by what the rest of the body could hold
// (every item takes at least one byte), so a forged count cannot make us allocate.
func (r *rbuf) count(limit int) int {
	n := r.uvarint()
	if r.err != nil {
		return 0
	}
	if n > uint64(limit) || n > uint64(len(r.b)) {
		r.fail(reasonInvalid, "count %d exceeds limit", n)
		return 0
	}
	return int(n)
}

func (r *rbuf) str(limit int, required bool) string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(limit) {
		r.fail(reasonInvalid, "string of %d bytes exceeds %d", n, limit)
		return ""
	}
	if n > uint64(len(r.b)) {
		r.fail(reasonDecode, "truncated string")
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	if required && s == "" {
		r.fail(reasonInvalid, "empty string")
	}
	if !utf8.ValidString(s) {
		r.fail(reasonInvalid, "string is not UTF-8")
	}
	return s
}

func (r *rbuf) nodeName() string { return r.str(maxNodeName, true) }

func (r *rbuf) refs(limit int) []string {
	n := r.count(limit)
	if n == 0 {
		return nil
	}
	out := make([]string, 0, n)
	for range n {
		out = append(out, r.str(maxRefLen, true))
	}
	return out
}

func (r *rbuf) digest() string {
	if r.err != nil {
		return ""
	}
	if len(r.b) == 0 {
		r.fail(reasonDecode, "truncated digest")
		return ""
	}
	alg := r.b[0]
	r.b = r.b[1:]
	switch alg {
	case 0:
		return ""
	case 1:
		if len(r.b) < 32 {
			r.fail(reasonDecode, "truncated digest")
			return ""
		}
		d := "sha256:" + hex.EncodeToString(r.b[:32])
		r.b = r.b[32:]
		return d
	}
	r.fail(reasonInvalid, "digest algorithm %d", alg)
	return ""
}

func (r *rbuf) time() time.Time {
	if r.err != nil {
		return time.Time{}
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(reasonDecode, "bad varint")
		return time.Time{}
	}
	r.b = r.b[n:]
	if v == 0 {
		return time.Time{}
	}
	return time.Unix(0, v).UTC()
}

// parseDigest returns the 32 bytes of "sha256:<64 lower-case hex>".
func parseDigest(d string) ([]byte, bool) {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 {
		return nil, false
	}
	raw, err := hex.DecodeString(hexPart)
	if err != nil || hex.EncodeToString(raw) != hexPart {
		return nil, false
	}
	return raw, true
}

func validDigest(d string) bool {
	_, ok := parseDigest(d)
	return ok
}

// validRef reports whether s can travel as a reference.
func validRef(s string) bool { return s != "" && len(s) <= maxRefLen && utf8.ValidString(s) }

// clip shortens free text to limit bytes on a rune boundary.
func clip(s string, limit int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// canonTime drops the monotonic reading and location so a time survives the wire unchanged.
func canonTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.Unix(0, t.UnixNano()).UTC()
}

// project returns the part of s that goes on the wire, in the form decodeMessage returns it:
// image IDs and the disk path are left out (node-local details), images are listed by their
// tags and repo digests only (images with neither are left out), free text is clipped,
// entries that cannot travel (bad references or digests) are left out, lists are capped.
// node overrides s.Node: a node only ever speaks for itself.
func project(node string, s agent.State) agent.State {
	p := agent.State{
		Node:           node,
		Version:        s.Version,
		DesiredVersion: s.DesiredVersion,
		Runtime:        clip(s.Runtime, maxTextLen),
		Ready:          s.Ready,
		LastError:      clip(s.LastError, maxTextLen),
		Images:         make([]agent.CachedImage, 0, min(len(s.Images), maxItems)),
		Cached:         make(map[string]string, len(s.Cached)),
		Disk: agent.Disk{
			UsedBytes:     s.Disk.UsedBytes,
			CapacityBytes: s.Disk.CapacityBytes,
			FreeBytes:     s.Disk.FreeBytes,
		},
	}
	for _, img := range s.Images {
		if len(p.Images) == maxItems {
			break
		}
		var out agent.CachedImage
		for _, t := range img.Tags {
			if validRef(t) && len(out.Tags) < maxTagsPerImage {
				out.Tags = append(out.Tags, t)
			}
		}
		for _, rd := range img.Digests {
			repo, d, ok := strings.Cut(rd, "@")
			if ok && validRef(repo) && validDigest(d) && len(out.Digests) < maxTagsPerImage {
				out.Digests = append(out.Digests, rd)
			}
		}
		if len(out.Tags) == 0 && len(out.Digests) == 0 {
			continue
		}
		out.Size = img.Size
		p.Images = append(p.Images, out)
	}
	for ref, d := range s.Cached {
		if len(p.Cached) == maxItems {
			break
		}
		if validRef(ref) && (d == "" || validDigest(d)) {
			p.Cached[ref] = d
		}
	}
	refs := func(in []string) []string {
		var out []string
		for _, r := range in {
			if validRef(r) && len(out) < maxItems {
				out = append(out, r)
			}
		}
		return out
	}
	p.Missing = refs(s.Missing)
	p.Queued = refs(s.Queued)
	for _, x := range s.Pulling {
		if validRef(x.Ref) && len(p.Pulling) < maxItems {
			p.Pulling = append(p.Pulling, agent.Pulling{Ref: x.Ref, Started: canonTime(x.Started)})
		}
	}
	for _, x := range s.Held {
		if validRef(x.Ref) && len(p.Held) < maxItems {
			p.Held = append(p.Held, agent.Held{Ref: x.Ref, Reason: clip(x.Reason, maxTextLen)})
		}
	}
	for _, x := range s.Failed {
		if validRef(x.Ref) && len(p.Failed) < maxItems {
			p.Failed = append(p.Failed, agent.Failed{
				Ref:       x.Ref,
				Error:     clip(x.Error, maxTextLen),
				Attempts:  max(0, x.Attempts),
				NextRetry: canonTime(x.NextRetry),
			})
		}
	}
	return p
}

// cleanDesired returns the images of d that can travel, and the reasons for those that cannot.
func cleanDesired(images []image.Image) ([]image.Image, []error) {
	out := make([]image.Image, 0, len(images))
	var errs []error
	for _, img := range images {
		switch {
		case len(out) == maxItems:
			errs = append(errs, fmt.Errorf("image %q: more than %d images", img.Ref, maxItems))
			continue
		case img.Ref.IsZero() || !validRef(img.Ref.String()):
			errs = append(errs, fmt.Errorf("image %q: invalid reference", img.Ref))
			continue
		case img.Digest != "" && !validDigest(img.Digest):
			errs = append(errs, fmt.Errorf("image %q: digest %q is not sha256:<64 hex>", img.Ref, img.Digest))
			continue
		}
		img.Name = clip(img.Name, maxNameLen)
		img.Priority = len(out)
		out = append(out, img)
	}
	return out, errs
}
