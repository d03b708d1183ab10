// Package cri is a client for the CRI v1 ImageService (and RuntimeService.Version) over a
// unix socket. It returns its own value types; no runtimeapi or protobuf type leaves it.
package cri

import "errors"

// Image is one image in the runtime's store, as ListImages or ImageStatus report it.
type Image struct {
	// ID is the runtime's image ID (for containerd the config digest).
	ID string
	// Tags are the repo:tag references of this image (repo_tags).
	Tags []string
	// Digests are the repo@sha256:… references (repo_digests); the part after @ is the
	// manifest digest, which is what cachemachine matches on.
	Digests []string
	// Size is the image size in bytes as reported by the runtime.
	Size uint64
	// Pinned images are never garbage collected by the kubelet.
	Pinned bool
}

// FsUsage is one image filesystem as ImageFsInfo reports it.
type FsUsage struct {
	Mountpoint string
	UsedBytes  uint64
	InodesUsed uint64
}

// Auth are registry credentials passed with a pull. Never log them.
type Auth struct {
	Username string
	Password string
}

// Version is what RuntimeService.Version reports.
type Version struct {
	RuntimeName       string
	RuntimeVersion    string
	RuntimeAPIVersion string
}

// Sentinel errors; every error returned by Client wraps one of these (or a context error).
var (
	// ErrUnavailable: the socket cannot be reached or the runtime is restarting.
	ErrUnavailable = errors.New("container runtime unavailable")
	// ErrNotFound: the image reference could not be resolved by the registry.
	ErrNotFound = errors.New("image not found")
	// ErrUnauthorized: the registry refused the credentials (containerd reports 401 as Unknown).
	ErrUnauthorized = errors.New("registry refused credentials")
	// ErrDeadline: the call's deadline passed (for pulls: pull_timeout).
	ErrDeadline = errors.New("deadline exceeded")
	// ErrNotCRI: the endpoint answered but does not speak CRI v1.
	ErrNotCRI = errors.New("endpoint does not speak CRI v1")
	// ErrRuntime: any other error from the runtime.
	ErrRuntime = errors.New("container runtime error")
)
