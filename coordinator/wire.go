package coordinator

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// Wire format of the coordinator's own messages (user messages and push/pull state carried
// by memberlist, which encrypts and labels them); the messages themselves are in messages.go:
//
//	byte 0: message type (msgState, msgDesired)
//	byte 1: format version (wireVersion)
//	rest:   DEFLATE-compressed body; strings are uvarint length + UTF-8 bytes, numbers are
//	        uvarints (times: zig-zag varint ns since the epoch, 0 = zero time), lists are a
//	        uvarint count + items, digests are one algorithm byte (0 none, 1 sha256) + 32 bytes.
//
// A receiver of an unknown format version drops the message: a new version is a new type or
// a new version byte, never a silent reinterpretation. States have two versions: 1, and 2 =
// version 1's body followed by the pins and the pull progress (messages.go). A node sends 2
// only while every alive member understands it (Cluster.stateVersion), so a rolling upgrade
// never has a node drop another's state.
const (
	wireVersion = 1
	// stateVersionPins is the state format with pins and pull progress.
	stateVersionPins = 2

	maxMessageBytes = 1 << 20 // compressed, as received
	maxBodyBytes    = 1 << 20 // decompressed
	maxNodeName     = 128
	maxRefLen       = 512
	maxNameLen      = 256  // display names
	maxTextLen      = 1024 // errors, reasons, runtime
	maxItems        = 4096 // entries of any list
	maxTagsPerImage = 256
)

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

// encodeMessage encodes m. It fails only when m would not pass decodeMessage's validation;
// callers build states with stateToWire and desired lists with desiredToWire from images
// passed through cleanDesired.
func encodeMessage(m message) ([]byte, error) {
	var w wbuf
	version := byte(wireVersion)
	switch m.Type {
	case msgState:
		version = stateVersionPins
		if m.Version != 0 {
			version = m.Version
		}
		if version != wireVersion && version != stateVersionPins {
			return nil, fmt.Errorf("encode: state version %d", version)
		}
		encodeState(&w, m.State, version)
	case msgDesired:
		encodeDesired(&w, m.Desired)
	default:
		return nil, fmt.Errorf("encode: unknown message type %d", m.Type)
	}
	if len(w.b) > maxBodyBytes {
		return nil, fmt.Errorf("encode %s: body of %d bytes exceeds %d", m.Type, len(w.b), maxBodyBytes)
	}
	out := bytes.NewBuffer(make([]byte, 0, 2+len(w.b)/2))
	out.WriteByte(byte(m.Type))
	out.WriteByte(version)
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
	if b[1] != wireVersion && (typ != msgState || b[1] != stateVersionPins) {
		return message{}, wireErr(reasonBadVersion, "%s version %d", typ, b[1])
	}
	body, err := inflate(b[2:])
	if err != nil {
		return message{}, err
	}
	return decodeBody(typ, b[1], body)
}

// decodeBody decodes and validates the decompressed body of a message of type typ and
// format version.
func decodeBody(typ msgType, version byte, body []byte) (message, error) {
	r := &rbuf{b: body}
	m := message{Type: typ, Version: version}
	switch typ {
	case msgState:
		m.State = decodeState(r, version)
	case msgDesired:
		m.Desired = decodeDesired(r)
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

func (w *wbuf) varint(v int64) { w.b = binary.AppendVarint(w.b, v) }

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

func (r *rbuf) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(reasonDecode, "bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
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
