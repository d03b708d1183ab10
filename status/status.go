// Package status turns the cluster state the leader holds into the status documents of the
// Python cachemachine (the dump, available, desired) plus a per-node view, and serves them
// over HTTP (see NewHandler).
//
// Compute and NodesView are pure functions of their Input: no clock, no I/O, deterministic
// output, and every list in their output is non-nil so it encodes as [] rather than null.
package status

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/image"
)

// Image is one entry of all_images, desired_images, available_images and images_to_cache:
// the Python cachemachine's document shape of an image.Image.
type Image struct {
	// ImageURL is the reference with a tag ("host/repo:tag").
	ImageURL string `json:"image_url"`
	// ImageHash is the manifest digest ("sha256:…"), "" when the source could not tell.
	ImageHash string `json:"image_hash"`
	// Name is the raw tag in all_images and the display name in the desired lists.
	Name string `json:"name"`
}

// CommonImage is one entry of common_cache: a repo:tag present with the same manifest digest
// on every alive node.
type CommonImage struct {
	ImageURL  string `json:"image_url"`
	ImageHash string `json:"image_hash"`
	// Tags are the other tags (names only) of the same repository and digest that are also
	// common, sorted.
	Tags []string `json:"tags"`
}

// Held is a pull a node declines to start, with the reason (e.g. the disk guard).
type Held struct {
	ImageURL string `json:"image_url"`
	Reason   string `json:"reason"`
}

// Failed is an image whose last pull on a node failed.
type Failed struct {
	ImageURL string `json:"image_url"`
	Error    string `json:"error"`
	Attempts int    `json:"attempts"`
	// NextRetry is when the node tries again; the zero time encodes as null.
	NextRetry time.Time `json:"next_retry"`
}

// MarshalJSON encodes a zero NextRetry as null instead of year 1.
func (f Failed) MarshalJSON() ([]byte, error) {
	var next *time.Time
	if !f.NextRetry.IsZero() {
		t := f.NextRetry.UTC()
		next = &t
	}
	return json.Marshal(struct {
		ImageURL  string     `json:"image_url"`
		Error     string     `json:"error"`
		Attempts  int        `json:"attempts"`
		NextRetry *time.Time `json:"next_retry"`
	}{f.ImageURL, f.Error, f.Attempts, next})
}

// Disk is a node's image filesystem usage.
type Disk struct {
	UsedBytes     uint64 `json:"used_bytes"`
	CapacityBytes uint64 `json:"capacity_bytes"`
}

// Pinning says how a node keeps its desired images from the kubelet's image GC.
type Pinning struct {
	// Status is off, pending, honoured, unsupported or error; "" when the node did not say
	// (an older agent, or a cluster mid-upgrade).
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
	// BudgetBytes is agent.max_pinned_percent of the image filesystem; PinnedBytes what the
	// node's pins hold.
	BudgetBytes uint64 `json:"budget_bytes"`
	PinnedBytes uint64 `json:"pinned_bytes"`
	// OverBudget are desired images on the node left unpinned by the budget.
	OverBudget []string `json:"over_budget"`
}

// Progress is the download progress of one pull in flight, as the node last reported it
// (in tenths of its bytes and at phase changes, to keep gossip small).
type Progress struct {
	ImageURL string `json:"image_url"`
	// Phase is resolving, downloading or unpacking; "" when the node measures none.
	Phase          string `json:"phase"`
	BytesDone      uint64 `json:"bytes_done"`
	BytesTotal     uint64 `json:"bytes_total"`
	BytesPerSecond uint64 `json:"bytes_per_second"`
	// ETASeconds is the download time left as estimated at MeasuredAt; null when unknown.
	ETASeconds *float64 `json:"eta_seconds"`
	// MeasuredAt is when the node measured it; null when it did not.
	MeasuredAt *time.Time `json:"measured_at"`
}

// Node is the last known state of one member of the cache's node pool.
type Node struct {
	Name string
	// Alive is false for a member the cluster considers failed or gone; such nodes are
	// shown but do not count for common_cache.
	Alive   bool
	Version uint64
	// RuntimeError is set while the node's container runtime does not answer.
	RuntimeError string
	// Inventory maps "repo:tag" to the manifest digest, for every tagged image on the node.
	// Keys that carry a digest ("repo@sha256:…") and entries with an empty digest are
	// ignored.
	Inventory map[string]string
	// Cached, Missing and Pulling are desired image references.
	Cached  []string
	Missing []string
	Pulling []string
	Held    []Held
	Failed  []Failed
	Disk    Disk
	// Pinned are the desired references whose image the node's runtime reports pinned.
	Pinned  []string
	Pinning Pinning
	// Progress has one entry per pull in Pulling.
	Progress []Progress
	// Updated is when the leader learnt the node's current state (zero: unknown).
	Updated time.Time
	// Warming marks a node whose agent started recently and that is still filling its
	// cache: it does not count for common_cache (unless every alive node is warming) until it
	// holds every desired image or WarmingUntil passes. The leader decides it; Compute only
	// reads it. WarmingMissing are the desired images it still misses.
	Warming        bool
	WarmingUntil   time.Time
	WarmingMissing []string
}

// SourceStatus is the state of one image source (a repoman) as the leader last listed it.
type SourceStatus struct {
	Name string
	// ListedAt is the time of the last successful listing, zero if none yet.
	ListedAt time.Time
	// Error is the last listing error, "" when the last listing succeeded; a failing source
	// keeps its last good listing in force.
	Error string
	// Images is how many images the source's last good listing gave.
	Images int
	// Triggers names what tells the leader of the source's pushes (a Pub/Sub subscription,
	// registry notifications), "" when only the periodic listing refreshes it; TriggerError
	// is their last error, "" while they work. EventAt is when an event last asked for a
	// listing (zero: never).
	Triggers     string
	TriggerError string
	EventAt      time.Time
}

// Input is everything the status documents are computed from.
type Input struct {
	// Name is the cache name ("jupyter"), the {name} of the status paths.
	Name   string
	Labels map[string]string
	// Leader is the name of the node that computed this input.
	Leader string
	// All is every image the sources list; Desired is the desired list in force, in priority
	// order. References are normalised (image.ParseRef), as node inventories are.
	All     []image.Image
	Desired []image.Image
	Nodes   []Node
	Sources []SourceStatus
	// DesiredVersion is the version of the published desired list.
	DesiredVersion uint64
}

// Dump is the document of GET /cachemachine/{name}, field for field the Python
// cachemachine's.
type Dump struct {
	Name            string            `json:"name"`
	Labels          map[string]string `json:"labels"`
	CommonCache     []CommonImage     `json:"common_cache"`
	AllImages       []Image           `json:"all_images"`
	DesiredImages   []Image           `json:"desired_images"`
	AvailableImages []Image           `json:"available_images"`
	ImagesToCache   []Image           `json:"images_to_cache"`
}

// ImageList is the document of /available and /desired: the selected images and every
// listed image.
type ImageList struct {
	Images []Image `json:"images"`
	All    []Image `json:"all"`
}

// NodeView is one node of the /nodes document.
type NodeView struct {
	Name  string `json:"name"`
	Alive bool   `json:"alive"`
	// RuntimeError is the node's "container runtime unavailable: …", "" while it answers.
	RuntimeError string   `json:"runtime_error,omitempty"`
	Cached       []string `json:"cached"`
	Missing      []string `json:"missing"`
	Pulling      []string `json:"pulling"`
	Held         []Held   `json:"held"`
	Failed       []Failed `json:"failed"`
	Disk         Disk     `json:"disk"`
	Version      uint64   `json:"version"`
	// Pinned are the desired images the node's runtime reports pinned (skipped by the
	// kubelet's image GC); Pinning says how the node pins.
	Pinned  []string `json:"pinned"`
	Pinning Pinning  `json:"pinning"`
	// Progress is the download progress of each pull in Pulling.
	Progress []Progress `json:"progress"`
	// Updated is when the leader learnt this state (null: unknown).
	Updated *time.Time `json:"updated"`
	// Warming is true while the node fills its cache after it started and does not count
	// for common_cache; WarmingUntil and WarmingMissing say until when at most, and what it
	// still misses.
	Warming        bool       `json:"warming"`
	WarmingUntil   *time.Time `json:"warming_until,omitempty"`
	WarmingMissing []string   `json:"warming_missing,omitempty"`
}

// Nodes is the document of GET /cachemachine/{name}/nodes.
type Nodes struct {
	Leader string     `json:"leader"`
	Nodes  []NodeView `json:"nodes"`
}

// Compute aggregates in into the dump.
//
// common_cache holds one entry per repo:tag that every counted node has with the same digest
// (no alive node: empty), sorted by image_url. The counted nodes are the alive nodes that are
// not warming, or every alive node when all of them are warming (a new pool: the Python
// rule). An image is available when its digest is in
// common_cache under any name (docker.io and registry.hub.docker.com references of one
// image match); an image without a digest is available when its image_url is. The other
// desired images, in priority order, are images_to_cache.
func Compute(in Input) Dump {
	common := commonCache(in.Nodes)
	byDigest := make(map[string]bool, len(common))
	byURL := make(map[string]bool, len(common))
	for _, c := range common {
		byDigest[c.ImageHash] = true
		byURL[c.ImageURL] = true
	}
	available, toCache := []Image{}, []Image{}
	for _, img := range in.Desired {
		d := img.WantDigest()
		if d != "" && byDigest[d] || d == "" && byURL[img.Ref.String()] {
			available = append(available, entry(img))
		} else {
			toCache = append(toCache, entry(img))
		}
	}
	labels := make(map[string]string, len(in.Labels))
	for k, v := range in.Labels {
		labels[k] = v
	}
	return Dump{
		Name:            in.Name,
		Labels:          labels,
		CommonCache:     common,
		AllImages:       entries(in.All),
		DesiredImages:   entries(in.Desired),
		AvailableImages: available,
		ImagesToCache:   toCache,
	}
}

// commonCache returns the repo:tag entries that every counted node holds with the same
// digest: the alive nodes that are not warming, or every alive node when all are warming.
func commonCache(nodes []Node) []CommonImage {
	warm := slices.ContainsFunc(nodes, func(n Node) bool { return n.Alive && !n.Warming })
	var common map[string]string // repo:tag -> digest
	for _, n := range nodes {
		if !n.Alive || warm && n.Warming {
			continue
		}
		if common == nil {
			common = make(map[string]string, len(n.Inventory))
			for ref, digest := range n.Inventory {
				if digest != "" && !strings.Contains(ref, "@") {
					common[ref] = digest
				}
			}
			continue
		}
		for ref, digest := range common {
			if n.Inventory[ref] != digest {
				delete(common, ref)
			}
		}
	}

	// Group tags by repository and digest to fill in each entry's other tags.
	type repoDigest struct{ repo, digest string }
	tags := make(map[repoDigest][]string)
	for ref, digest := range common {
		repo, tag := image.SplitTagRef(ref)
		if tag != "" {
			k := repoDigest{repo, digest}
			tags[k] = append(tags[k], tag)
		}
	}
	out := make([]CommonImage, 0, len(common))
	for ref, digest := range common {
		repo, tag := image.SplitTagRef(ref)
		others := []string{}
		for _, t := range tags[repoDigest{repo, digest}] {
			if t != tag {
				others = append(others, t)
			}
		}
		slices.Sort(others)
		out = append(out, CommonImage{ImageURL: ref, ImageHash: digest, Tags: others})
	}
	slices.SortFunc(out, func(a, b CommonImage) int { return cmp.Compare(a.ImageURL, b.ImageURL) })
	return out
}

// entry is img as the status documents show it.
func entry(img image.Image) Image {
	return Image{ImageURL: img.Ref.String(), ImageHash: img.Digest, Name: img.Name}
}

func entries(imgs []image.Image) []Image {
	out := make([]Image, len(imgs))
	for i, img := range imgs {
		out[i] = entry(img)
	}
	return out
}

// NodesView returns the per-node document, nodes sorted by name.
func NodesView(in Input) Nodes {
	out := Nodes{Leader: in.Leader, Nodes: make([]NodeView, 0, len(in.Nodes))}
	for _, n := range in.Nodes {
		var until *time.Time
		var missing []string
		if n.Warming {
			until = timePtr(n.WarmingUntil)
			missing = clone(n.WarmingMissing)
		}
		out.Nodes = append(out.Nodes, NodeView{
			Name:           n.Name,
			Alive:          n.Alive,
			RuntimeError:   n.RuntimeError,
			Cached:         clone(n.Cached),
			Missing:        clone(n.Missing),
			Pulling:        clone(n.Pulling),
			Held:           clone(n.Held),
			Failed:         clone(n.Failed),
			Disk:           n.Disk,
			Version:        n.Version,
			Pinned:         clone(n.Pinned),
			Pinning:        n.Pinning,
			Progress:       clone(n.Progress),
			Updated:        timePtr(n.Updated),
			Warming:        n.Warming,
			WarmingUntil:   until,
			WarmingMissing: missing,
		})
		out.Nodes[len(out.Nodes)-1].Pinning.OverBudget = clone(n.Pinning.OverBudget)
	}
	slices.SortStableFunc(out.Nodes, func(a, b NodeView) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// timePtr is t in UTC, nil for the zero time (null in JSON).
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// clone copies s into a non-nil slice, so that it encodes as [] when empty and the output
// shares no memory with the input.
func clone[T any](s []T) []T {
	return append(make([]T, 0, len(s)), s...)
}
