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
	return c
}
