// Package containerd is a small client for the two containerd services the agent needs beyond
// CRI, over the same socket: the images service, to pin images against the kubelet's image
// garbage collection with containerd's CRI label, and the content service, to see the bytes of
// the downloads a CRI pull has in flight. Every call runs in the CRI plugin's namespace
// (k8s.io) with a deadline. It returns its own value types; no containerd API or protobuf type
// leaves it.
package containerd

import (
	"errors"
	"time"
)

const (
	// Namespace is the containerd namespace the CRI plugin keeps its images and content in.
	Namespace = "k8s.io"
	// PinnedLabel is the image label containerd's CRI plugin reports as Image.pinned (from
	// containerd 1.6.25 / 1.7.10 and every 2.x); the kubelet's image GC skips pinned images.
	PinnedLabel = "io.cri-containerd.pinned"
	// PinnedValue is PinnedLabel's value for a pinned image.
	PinnedValue = "pinned"
	// OwnLabel marks the pins cachemachine set, so it only ever removes its own pins and leaves
	// those of others (the sandbox image's, an operator's) alone.
	OwnLabel = "io.cachemachine.pinned"
)

// Record is one image record of containerd's images service. A CRI pull creates three: the
// tag ("repo:tag"), the manifest digest ("repo@sha256:…") and the image ID ("sha256:<config>").
type Record struct {
	Name string
	// Target is the digest the record points at (the manifest or index).
	Target string
	// Pinned is true when the record carries PinnedLabel=PinnedValue, whoever set it.
	Pinned bool
	// Ours is true when the record carries OwnLabel: cachemachine set the pin.
	Ours bool
}

// Download is one ingest in flight in the content store, as a pull shows it.
type Download struct {
	// Ref is containerd's ingest reference, "layer-sha256:…", "config-…", "manifest-…" or
	// "index-…".
	Ref string
	// Digest is the blob being downloaded (Ref without its kind).
	Digest string
	// Offset is how many bytes arrived; Total is the blob's size (0 when not known yet).
	Offset, Total int64
	// Updated is when the ingest last moved.
	Updated time.Time
}

// Blob is one blob of an image: its config or a layer.
type Blob struct {
	Digest string
	Size   int64
}

// Options tune a Client. The zero value is valid.
type Options struct {
	// CallTimeout bounds every call. Default 10 s.
	CallTimeout time.Duration
}

// Sentinel errors; every error a Client returns wraps one of these (or a context error).
var (
	// ErrUnavailable: the socket cannot be reached or containerd is restarting.
	ErrUnavailable = errors.New("containerd unavailable")
	// ErrNotFound: no such image record or blob.
	ErrNotFound = errors.New("not found")
	// ErrUnsupported: the endpoint does not serve containerd's images and content services
	// (another CRI runtime, such as CRI-O).
	ErrUnsupported = errors.New("endpoint does not serve containerd's images and content services")
	// ErrDeadline: the call's deadline passed.
	ErrDeadline = errors.New("deadline exceeded")
	// ErrInvalid: containerd's answer cannot be used (a manifest that does not parse, a blob
	// too large to be one).
	ErrInvalid = errors.New("invalid content")
	// ErrRuntime: any other error from containerd.
	ErrRuntime = errors.New("containerd error")
)
