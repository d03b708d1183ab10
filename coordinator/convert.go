package coordinator

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// The one place where the in-memory types (agent.State, agent.Desired, image.Image) become
// wire messages (messages.go) and back. TestWireCarriesEveryField checks that every field of
// the in-memory types survives a trip through here and the wire, or is listed as node-local.

// pinStatusCodes and phaseCodes are the wire codes of agent.Pinning.Status and
// agent.Progress.Phase: an index into the list, 0 for "". New values go at the end.
var (
	pinStatusCodes = []string{"", agent.PinOff, agent.PinPending, agent.PinHonoured, agent.PinUnsupported, agent.PinError}
	phaseCodes     = []string{"", agent.PhaseResolving, agent.PhaseDownloading, agent.PhaseUnpacking}
)

// code returns the index of v in codes; an unknown value travels as 0 ("").
func code(codes []string, v string) uint64 {
	if i := slices.Index(codes, v); i > 0 {
		return uint64(i)
	}
	return 0
}

// stateToWire returns the part of s that goes on the wire: image IDs and the disk path are
// left out (node-local details), images are listed by their tags and repo digests only
// (images with neither are left out), free text is clipped, entries that cannot travel (bad
// references or digests) are left out, lists are capped. node overrides s.Node: a node only
// ever speaks for itself.
func stateToWire(node string, s agent.State) wireState {
	w := wireState{
		Node:           node,
		Version:        s.Version,
		DesiredVersion: s.DesiredVersion,
		Ready:          s.Ready,
		Runtime:        clip(s.Runtime, maxTextLen),
		LastError:      clip(s.LastError, maxTextLen),
		Images:         make([]wireCachedImage, 0, min(len(s.Images), maxItems)),
		Disk: wireDisk{
			UsedBytes:     s.Disk.UsedBytes,
			CapacityBytes: s.Disk.CapacityBytes,
			FreeBytes:     s.Disk.FreeBytes,
		},
	}
	for _, img := range s.Images {
		if len(w.Images) == maxItems {
			break
		}
		var out wireCachedImage
		for _, t := range img.Tags {
			if validRef(t) && len(out.Tags) < maxTagsPerImage {
				out.Tags = append(out.Tags, t)
			}
		}
		for _, rd := range img.Digests {
			repo, d, ok := image.SplitDigestRef(rd)
			if ok && validRef(repo) && validDigest(d) && len(out.Digests) < maxTagsPerImage {
				out.Digests = append(out.Digests, wireRepoDigest{Repo: repo, Digest: d})
			}
		}
		if len(out.Tags) == 0 && len(out.Digests) == 0 {
			continue
		}
		out.Size = img.Size
		out.Pinned = img.Pinned
		w.Images = append(w.Images, out)
	}
	for ref, d := range s.Cached {
		if len(w.Cached) == maxItems {
			break
		}
		if validRef(ref) && (d == "" || validDigest(d)) {
			w.Cached = append(w.Cached, wireCached{Ref: ref, Digest: d})
		}
	}
	// Sorted, so that one state always encodes to the same bytes.
	slices.SortFunc(w.Cached, func(a, b wireCached) int { return strings.Compare(a.Ref, b.Ref) })
	refs := func(in []string) []string {
		var out []string
		for _, r := range in {
			if validRef(r) && len(out) < maxItems {
				out = append(out, r)
			}
		}
		return out
	}
	w.Missing = refs(s.Missing)
	w.Queued = refs(s.Queued)
	for _, x := range s.Pulling {
		if validRef(x.Ref) && len(w.Pulling) < maxItems {
			w.Pulling = append(w.Pulling, wirePulling{Ref: x.Ref, Started: timeToWire(x.Started), Progress: wireProgress{
				Phase:          code(phaseCodes, x.Progress.Phase),
				BytesDone:      x.Progress.BytesDone,
				BytesTotal:     x.Progress.BytesTotal,
				BytesPerSecond: x.Progress.BytesPerSecond,
				At:             timeToWire(x.Progress.At),
			}})
		}
	}
	w.Pinned = refs(s.Pinned)
	w.Pinning = wirePinning{
		Status:      code(pinStatusCodes, s.Pinning.Status),
		Detail:      clip(s.Pinning.Detail, maxTextLen),
		BudgetBytes: s.Pinning.BudgetBytes,
		PinnedBytes: s.Pinning.PinnedBytes,
		OverBudget:  refs(s.Pinning.OverBudget),
	}
	for _, x := range s.Held {
		if validRef(x.Ref) && len(w.Held) < maxItems {
			w.Held = append(w.Held, wireHeld{Ref: x.Ref, Reason: clip(x.Reason, maxTextLen)})
		}
	}
	for _, x := range s.Failed {
		if validRef(x.Ref) && len(w.Failed) < maxItems {
			w.Failed = append(w.Failed, wireFailed{
				Ref:       x.Ref,
				Error:     clip(x.Error, maxTextLen),
				Attempts:  uint64(max(0, x.Attempts)),
				NextRetry: timeToWire(x.NextRetry),
			})
		}
	}
	return w
}

// stateFromWire returns the state a (decoded, hence valid) wire state stands for. Its slices
// may share memory with w's.
func stateFromWire(w wireState) agent.State {
	s := agent.State{
		Node:           w.Node,
		Version:        w.Version,
		DesiredVersion: w.DesiredVersion,
		Runtime:        w.Runtime,
		Ready:          w.Ready,
		LastError:      w.LastError,
		Images:         make([]agent.CachedImage, 0, len(w.Images)),
		Cached:         make(map[string]string, len(w.Cached)),
		Missing:        w.Missing,
		Queued:         w.Queued,
		Disk: agent.Disk{
			UsedBytes:     w.Disk.UsedBytes,
			CapacityBytes: w.Disk.CapacityBytes,
			FreeBytes:     w.Disk.FreeBytes,
		},
	}
	for _, img := range w.Images {
		out := agent.CachedImage{Tags: img.Tags, Size: img.Size, Pinned: img.Pinned}
		for _, rd := range img.Digests {
			out.Digests = append(out.Digests, rd.Repo+"@"+rd.Digest)
		}
		s.Images = append(s.Images, out)
	}
	for _, c := range w.Cached {
		s.Cached[c.Ref] = c.Digest
	}
	for _, x := range w.Pulling {
		s.Pulling = append(s.Pulling, agent.Pulling{Ref: x.Ref, Started: timeFromWire(x.Started), Progress: agent.Progress{
			Phase:          phaseCodes[min(x.Progress.Phase, uint64(len(phaseCodes)-1))],
			BytesDone:      x.Progress.BytesDone,
			BytesTotal:     x.Progress.BytesTotal,
			BytesPerSecond: x.Progress.BytesPerSecond,
			At:             timeFromWire(x.Progress.At),
		}})
	}
	s.Pinned = w.Pinned
	s.Pinning = agent.Pinning{
		Status:      pinStatusCodes[min(w.Pinning.Status, uint64(len(pinStatusCodes)-1))],
		Detail:      w.Pinning.Detail,
		BudgetBytes: w.Pinning.BudgetBytes,
		PinnedBytes: w.Pinning.PinnedBytes,
		OverBudget:  w.Pinning.OverBudget,
	}
	for _, x := range w.Held {
		s.Held = append(s.Held, agent.Held{Ref: x.Ref, Reason: x.Reason})
	}
	for _, x := range w.Failed {
		s.Failed = append(s.Failed, agent.Failed{Ref: x.Ref, Error: x.Error, Attempts: int(x.Attempts), NextRetry: timeFromWire(x.NextRetry)})
	}
	return s
}

// project returns s as the other nodes see it: what they decode from stateToWire(node, s).
// It shares no memory with s.
func project(node string, s agent.State) agent.State { return stateFromWire(stateToWire(node, s)) }

// desiredToWire returns the desired list d of node from as its wire message. Callers pass
// images through cleanDesired first: an image's priority travels as its place in the list.
func desiredToWire(from string, d agent.Desired) wireDesired {
	w := wireDesired{From: from, Version: d.Version, Images: make([]wireImage, 0, len(d.Images))}
	for _, img := range d.Images {
		w.Images = append(w.Images, wireImage{Ref: img.Ref.String(), Digest: img.Digest, Name: img.Name, Size: img.Size, ref: img.Ref})
	}
	return w
}

// desiredFromWire returns the desired list a decoded wire message carries (decodeMessage
// parsed its references, and rejected the message if one did not parse).
func desiredFromWire(w wireDesired) agent.Desired {
	d := agent.Desired{Version: w.Version, Images: make([]image.Image, 0, len(w.Images))}
	for i, img := range w.Images {
		d.Images = append(d.Images, image.Image{Ref: img.ref, Digest: img.Digest, Name: img.Name, Size: img.Size, Priority: i})
	}
	return d
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

// timeToWire is t in ns since the epoch, 0 for the zero time.
func timeToWire(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// timeFromWire is the time of ns since the epoch, in UTC; 0 is the zero time.
func timeFromWire(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}
