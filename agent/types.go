package agent

import (
	"maps"
	"slices"
	"time"

	"github.com/cachemachine/cachemachine/image"
)

// Desired is a versioned desired list; images are in priority order (first pulled first).
type Desired struct {
	// Version orders lists from different publishers: a higher version supersedes.
	Version uint64        `json:"version"`
	Images  []image.Image `json:"images"`
}

// CachedImage is one image of the node's inventory.
type CachedImage struct {
	ID      string   `json:"id"`
	Tags    []string `json:"tags"`
	Digests []string `json:"digests"`
	Size    uint64   `json:"size"`
	// Pinned is what the runtime reports to the kubelet: a pinned image is skipped by the
	// kubelet's image garbage collection, whoever pinned it.
	Pinned bool `json:"pinned"`
}

// Disk is the image filesystem's usage.
type Disk struct {
	UsedBytes     uint64 `json:"used_bytes"`
	CapacityBytes uint64 `json:"capacity_bytes"`
	FreeBytes     uint64 `json:"free_bytes"`
	// Path is where the capacity was measured (the image filesystem, or the state dir when
	// the image filesystem is not visible from the agent's mount namespace).
	Path string `json:"path,omitempty"`
}

// Pulling is a pull in flight.
type Pulling struct {
	Ref     string    `json:"image_url"`
	Started time.Time `json:"started"`
	// Progress is the pull's download progress. In State it moves in coarse steps (see
	// progressStep), so that a pull does not cost a gossip message every second; the debug
	// socket shows it as measured.
	Progress Progress `json:"progress"`
}

// Pull phases, as containerd's content store shows them.
const (
	// PhaseResolving: the image's manifest is not in the content store yet.
	PhaseResolving = "resolving"
	// PhaseDownloading: layers are downloading.
	PhaseDownloading = "downloading"
	// PhaseUnpacking: every byte arrived; the runtime unpacks the layers (no byte count is
	// visible for that).
	PhaseUnpacking = "unpacking"
)

// Progress is a pull's download progress, measured from containerd's content store.
type Progress struct {
	// Phase is PhaseResolving, PhaseDownloading or PhaseUnpacking; "" before the first
	// measurement or where the runtime shows none.
	Phase string `json:"phase"`
	// BytesDone of BytesTotal (the config and layers of the image's manifest) are in the
	// content store; BytesTotal is 0 while unknown.
	BytesDone  uint64 `json:"bytes_done"`
	BytesTotal uint64 `json:"bytes_total"`
	// BytesPerSecond is the recent download rate.
	BytesPerSecond uint64 `json:"bytes_per_second"`
	// At is when it was measured.
	At time.Time `json:"at"`
}

// ETA estimates when the download ends, seen at now: ok is false without a rate or a total.
// Unpacking takes extra time that no counter shows.
func (p Progress) ETA(now time.Time) (time.Duration, bool) {
	if p.BytesPerSecond == 0 || p.BytesTotal == 0 || p.At.IsZero() {
		return 0, false
	}
	if p.BytesDone >= p.BytesTotal {
		return 0, true
	}
	left := time.Duration(float64(p.BytesTotal-p.BytesDone) / float64(p.BytesPerSecond) * float64(time.Second))
	return max(0, left-now.Sub(p.At)), true
}

// Pin statuses (Pinning.Status).
const (
	// PinOff: agent.pin_images is false, or the runtime is not containerd.
	PinOff = "off"
	// PinPending: pins are set but the runtime's answer was not seen yet, or nothing is
	// cached to pin.
	PinPending = "pending"
	// PinHonoured: the runtime reports the agent's pins to the kubelet, whose image GC skips
	// them.
	PinHonoured = "honoured"
	// PinUnsupported: the labels are set but the runtime does not report them (containerd
	// before 1.6.25 / 1.7.10): an image the kubelet collects is pulled again, as without pins.
	PinUnsupported = "unsupported"
	// PinError: the last attempt to pin or unpin failed (Detail says why).
	PinError = "error"
)

// Pinning says how the node keeps its desired images from the kubelet's image GC.
type Pinning struct {
	// Status is one of the Pin* constants; "" when the node did not say (an older agent).
	Status string `json:"status"`
	// Detail explains Status to a person.
	Detail string `json:"detail,omitempty"`
	// BudgetBytes is agent.max_pinned_percent of the image filesystem (0: not measured, no
	// limit applied); PinnedBytes what the agent's pins hold.
	BudgetBytes uint64 `json:"budget_bytes"`
	PinnedBytes uint64 `json:"pinned_bytes"`
	// OverBudget are desired references on the node left unpinned: they did not fit the
	// budget after the images before them in priority order.
	OverBudget []string `json:"over_budget"`
}

// Held is a pull that the agent declines to start.
type Held struct {
	Ref    string `json:"image_url"`
	Reason string `json:"reason"`
}

// Failed is an image whose last pull failed; it is retried at NextRetry.
type Failed struct {
	Ref       string    `json:"image_url"`
	Error     string    `json:"error"`
	Attempts  int       `json:"attempts"`
	NextRetry time.Time `json:"next_retry"`
}

// State is the node's cache state as the agent last observed it. Version grows by one with
// every change of anything but timestamps, starting at the agent's start time in ns, so the
// newest state of a node always has the highest version.
type State struct {
	Node           string `json:"node"`
	Version        uint64 `json:"version"`
	DesiredVersion uint64 `json:"desired_version"`
	// Runtime is "containerd 1.6.20" or similar; "" until one CRI call succeeded.
	Runtime string `json:"runtime"`
	// Ready is true while the last CRI inventory succeeded.
	Ready bool `json:"ready"`
	// LastError is the last inventory error ("container runtime unavailable: …"), "" when
	// the last pass succeeded.
	LastError string `json:"last_error,omitempty"`
	// Images is the whole inventory (every image in the runtime's k8s.io namespace).
	Images []CachedImage `json:"images"`
	// Cached are the desired references present with the desired digest, with the digest
	// observed on the node: ref -> digest.
	Cached  map[string]string `json:"cached"`
	Missing []string          `json:"missing"`
	Queued  []string          `json:"queued"`
	Pulling []Pulling         `json:"pulling"`
	Held    []Held            `json:"held"`
	Failed  []Failed          `json:"failed"`
	Disk    Disk              `json:"disk"`
	// Pinned are the desired references on the node whose image the runtime reports pinned.
	Pinned  []string `json:"pinned"`
	Pinning Pinning  `json:"pinning"`
}

// Clone returns a deep copy of s that callers may keep or change.
func (s State) Clone() State {
	c := s
	c.Images = slices.Clone(s.Images)
	for i := range c.Images {
		c.Images[i].Tags = slices.Clone(c.Images[i].Tags)
		c.Images[i].Digests = slices.Clone(c.Images[i].Digests)
	}
	c.Cached = maps.Clone(s.Cached)
	c.Missing = slices.Clone(s.Missing)
	c.Queued = slices.Clone(s.Queued)
	c.Pulling = slices.Clone(s.Pulling)
	c.Held = slices.Clone(s.Held)
	c.Failed = slices.Clone(s.Failed)
	c.Pinned = slices.Clone(s.Pinned)
	c.Pinning.OverBudget = slices.Clone(s.Pinning.OverBudget)
	return c
}
