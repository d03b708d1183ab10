package coordinator

import (
	"strings"

	"github.com/cachemachine/cachemachine/image"
)

// The coordinator's gossip messages, kept as serf keeps its messages.go: each message is a
// plain struct that is its wire format, field for field in wire order, with one encode and
// one decode function. The framing (type and version bytes, compression, size limits) and
// the body primitives are in wire.go; the conversions between these structs and the agent's
// and image package's in-memory types are in convert.go, and nowhere else.
//
// Changing what a message carries means changing its struct, its encode and decode function
// and its conversions; TestWireCarriesEveryField fails until a new field of agent.State or
// image.Image is carried (or listed as node-local there).

type msgType uint8

const (
	msgState   msgType = 1 // a node's state (wireState), sent to the leader and carried by push/pull
	msgDesired msgType = 2 // the leader's desired list (wireDesired), sent to every member
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

// message is one decoded message; Type says which body is set.
type message struct {
	Type msgType
	// Version is the format version: decoded, or to encode (0: the newest).
	Version byte
	State   wireState   // msgState
	Desired wireDesired // msgDesired
}

// wireState is the body of msgState: a node's state as it travels (see stateToWire for what
// stays on the node).
type wireState struct {
	Node           string // the sender: a node only speaks for itself
	Version        uint64
	DesiredVersion uint64
	Ready          bool // bit 0 of a uvarint of flags; any other bit is invalid
	Runtime        string
	LastError      string
	Images         []wireCachedImage
	Cached         []wireCached // no reference twice
	Missing        []string
	Queued         []string
	Pulling        []wirePulling
	Held           []wireHeld
	Failed         []wireFailed
	Disk           wireDisk
	// Version 2 (stateVersionPins) only; zero in a version 1 state.
	Pinned  []string // desired references the runtime reports pinned
	Pinning wirePinning
}

// wirePinning is how a node pins its images (version 2).
type wirePinning struct {
	Status      uint64 // pinStatusCodes index; 0 = not reported
	Detail      string
	BudgetBytes uint64
	PinnedBytes uint64
	OverBudget  []string
}

// wireProgress is a pull's download progress (version 2).
type wireProgress struct {
	Phase          uint64 // phaseCodes index; 0 = none
	BytesDone      uint64
	BytesTotal     uint64
	BytesPerSecond uint64
	At             int64 // ns since the epoch, 0 = none
}

// wireCachedImage is one image of a node's inventory, by its tags and repo digests (at least
// one of either).
type wireCachedImage struct {
	Tags    []string
	Digests []wireRepoDigest
	Size    uint64
	Pinned  bool // version 2: carried as the list of pinned images' indices
}

// wireRepoDigest is a "repo@sha256:…" the runtime records, with the repository and the
// digest apart.
type wireRepoDigest struct {
	Repo   string // no "@"
	Digest string // "sha256:<64 hex>", required
}

// wireCached is a desired reference the node holds, with the digest observed ("" allowed).
type wireCached struct {
	Ref    string
	Digest string
}

// wirePulling is a pull in flight.
type wirePulling struct {
	Ref      string
	Started  int64        // ns since the epoch, 0 = unknown
	Progress wireProgress // version 2, after the version 1 body, in the order of Pulling
}

// wireHeld is a pull the node declines to start.
type wireHeld struct {
	Ref    string
	Reason string
}

// wireFailed is an image whose last pull failed.
type wireFailed struct {
	Ref       string
	Error     string
	Attempts  uint64 // at most 1<<31-1
	NextRetry int64  // ns since the epoch, 0 = none
}

// wireDisk is the image filesystem's usage.
type wireDisk struct {
	UsedBytes     uint64
	CapacityBytes uint64
	FreeBytes     uint64
}

// wireDesired is the body of msgDesired: the leader's desired list.
type wireDesired struct {
	From    string // the publishing node
	Version uint64
	Images  []wireImage // in priority order: an image's priority is its place in the list
}

// wireImage is one desired image.
type wireImage struct {
	Ref    string // a reference image.ParseRef accepts, as it travels
	Digest string // "sha256:<64 hex>" or ""
	Name   string
	Size   uint64

	ref image.Ref // Ref parsed; not on the wire (set by decodeDesired and desiredToWire)
}

func encodeState(w *wbuf, s wireState, version byte) {
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
			w.str(rd.Repo)
			w.digest(rd.Digest)
		}
		w.uvarint(img.Size)
	}
	w.uvarint(uint64(len(s.Cached)))
	for _, c := range s.Cached {
		w.str(c.Ref)
		w.digest(c.Digest)
	}
	w.strs(s.Missing)
	w.strs(s.Queued)
	w.uvarint(uint64(len(s.Pulling)))
	for _, p := range s.Pulling {
		w.str(p.Ref)
		w.varint(p.Started)
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
		w.uvarint(f.Attempts)
		w.varint(f.NextRetry)
	}
	w.uvarint(s.Disk.UsedBytes)
	w.uvarint(s.Disk.CapacityBytes)
	w.uvarint(s.Disk.FreeBytes)
	if version < stateVersionPins {
		return
	}
	var pinned []uint64
	for i, img := range s.Images {
		if img.Pinned {
			pinned = append(pinned, uint64(i))
		}
	}
	w.uvarint(uint64(len(pinned)))
	for _, i := range pinned {
		w.uvarint(i)
	}
	w.strs(s.Pinned)
	w.uvarint(s.Pinning.Status)
	w.str(s.Pinning.Detail)
	w.uvarint(s.Pinning.BudgetBytes)
	w.uvarint(s.Pinning.PinnedBytes)
	w.strs(s.Pinning.OverBudget)
	w.uvarint(uint64(len(s.Pulling)))
	for _, p := range s.Pulling {
		w.uvarint(p.Progress.Phase)
		w.uvarint(p.Progress.BytesDone)
		w.uvarint(p.Progress.BytesTotal)
		w.uvarint(p.Progress.BytesPerSecond)
		w.varint(p.Progress.At)
	}
}

func decodeState(r *rbuf, version byte) wireState {
	var s wireState
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
	s.Images = make([]wireCachedImage, 0, n)
	for range n {
		var img wireCachedImage
		img.Tags = r.refs(maxTagsPerImage)
		nd := r.count(maxTagsPerImage)
		for range nd {
			rd := wireRepoDigest{Repo: r.str(maxRefLen, true), Digest: r.digest()}
			if rd.Digest == "" || strings.Contains(rd.Repo, "@") {
				r.fail(reasonInvalid, "bad repo digest")
			}
			img.Digests = append(img.Digests, rd)
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
	seen := make(map[string]bool, n)
	for range n {
		c := wireCached{Ref: r.str(maxRefLen, true), Digest: r.digest()}
		if seen[c.Ref] && r.err == nil {
			r.fail(reasonInvalid, "duplicate cached reference")
		}
		seen[c.Ref] = true
		s.Cached = append(s.Cached, c)
	}
	s.Missing = r.refs(maxItems)
	s.Queued = r.refs(maxItems)
	n = r.count(maxItems)
	for range n {
		s.Pulling = append(s.Pulling, wirePulling{Ref: r.str(maxRefLen, true), Started: r.varint()})
	}
	n = r.count(maxItems)
	for range n {
		s.Held = append(s.Held, wireHeld{Ref: r.str(maxRefLen, true), Reason: r.str(maxTextLen, false)})
	}
	n = r.count(maxItems)
	for range n {
		f := wireFailed{Ref: r.str(maxRefLen, true), Error: r.str(maxTextLen, false), Attempts: r.uvarint()}
		if f.Attempts > 1<<31-1 {
			r.fail(reasonInvalid, "attempts %d", f.Attempts)
		}
		f.NextRetry = r.varint()
		s.Failed = append(s.Failed, f)
	}
	s.Disk.UsedBytes = r.uvarint()
	s.Disk.CapacityBytes = r.uvarint()
	s.Disk.FreeBytes = r.uvarint()
	if version < stateVersionPins {
		return s
	}
	n = r.count(maxItems)
	last := -1
	for range n {
		i := r.uvarint()
		if r.err != nil {
			break
		}
		if i >= uint64(len(s.Images)) || int(i) <= last {
			r.fail(reasonInvalid, "pinned image index %d", i)
			break
		}
		last = int(i)
		s.Images[i].Pinned = true
	}
	s.Pinned = r.refs(maxItems)
	s.Pinning.Status = r.uvarint()
	if s.Pinning.Status >= uint64(len(pinStatusCodes)) {
		r.fail(reasonInvalid, "pin status %d", s.Pinning.Status)
	}
	s.Pinning.Detail = r.str(maxTextLen, false)
	s.Pinning.BudgetBytes = r.uvarint()
	s.Pinning.PinnedBytes = r.uvarint()
	s.Pinning.OverBudget = r.refs(maxItems)
	if n := r.count(maxItems); n != len(s.Pulling) && r.err == nil {
		r.fail(reasonInvalid, "%d progress entries for %d pulls", n, len(s.Pulling))
	}
	for i := range s.Pulling {
		p := &s.Pulling[i].Progress
		p.Phase = r.uvarint()
		if p.Phase >= uint64(len(phaseCodes)) {
			r.fail(reasonInvalid, "pull phase %d", p.Phase)
		}
		p.BytesDone, p.BytesTotal, p.BytesPerSecond, p.At = r.uvarint(), r.uvarint(), r.uvarint(), r.varint()
		if r.err != nil {
			break
		}
	}
	return s
}

func encodeDesired(w *wbuf, d wireDesired) {
	w.str(d.From)
	w.uvarint(d.Version)
	w.uvarint(uint64(len(d.Images)))
	for _, img := range d.Images {
		w.str(img.Ref)
		w.digest(img.Digest)
		w.str(img.Name)
		w.uvarint(img.Size)
	}
}

func decodeDesired(r *rbuf) wireDesired {
	d := wireDesired{From: r.nodeName(), Version: r.uvarint()}
	n := r.count(maxItems)
	d.Images = make([]wireImage, 0, n)
	for range n {
		img := wireImage{Ref: r.str(maxRefLen, true), Digest: r.digest(), Name: r.str(maxNameLen, false), Size: r.uvarint()}
		if r.err != nil {
			break
		}
		ref, err := image.ParseRef(img.Ref)
		if err != nil {
			r.fail(reasonInvalid, "desired image: %v", err)
			break
		}
		img.ref = ref
		d.Images = append(d.Images, img)
	}
	return d
}
