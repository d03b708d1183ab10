// Package image is cachemachine's one model of a container image: a normalised reference
// (Ref) and the image a node should hold (Image). References are parsed and normalised once,
// where they enter (sources, config, the debug socket), with go-containerregistry's name
// package, into the form containerd records ("docker.io/library/ubuntu:latest"), and are
// compared in that form everywhere else.
package image

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// DefaultTag is the tag of a reference that names none.
const DefaultTag = "latest"

// dockerHub is how containerd names Docker Hub; go-containerregistry says index.docker.io.
const dockerHub = "docker.io"

// Ref is a normalised image reference: registry host, repository path, and a tag, a digest
// or both. The zero Ref is invalid; build one with ParseRef or Ref.WithTag. Ref is a
// comparable value.
type Ref struct {
	repo   string // "docker.io/library/ubuntu"
	tag    string // "" for a reference by digest only
	digest string // "sha256:…" or ""
}

// ErrInvalidRef is wrapped by every error ParseRef returns.
var ErrInvalidRef = errors.New("invalid image reference")

// ParseRef parses and normalises s: Docker Hub names gain their registry and "library/"
// namespace ("ubuntu" is "docker.io/library/ubuntu:latest"), index.docker.io becomes
// docker.io, a reference with neither tag nor digest gets the tag "latest", and a
// "repo:tag@digest" keeps both. Other hosts (registry.hub.docker.com among them) are kept as
// written, as containerd keeps them.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, fmt.Errorf("%w: empty", ErrInvalidRef)
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return Ref{}, fmt.Errorf("%w %q: contains white space", ErrInvalidRef, s)
	}
	if strings.Contains(s, "://") {
		return Ref{}, fmt.Errorf("%w %q: a reference has no URL scheme", ErrInvalidRef, s)
	}
	base, digest, hasDigest := strings.Cut(s, "@")
	if hasDigest {
		d, err := name.NewDigest(s)
		if err != nil {
			return Ref{}, fmt.Errorf("%w %q: %w", ErrInvalidRef, s, err)
		}
		digest = d.DigestStr()
	}
	defaultTag := DefaultTag
	if hasDigest {
		defaultTag = ""
	}
	t, err := name.NewTag(base, name.WithDefaultTag(defaultTag))
	if err != nil {
		return Ref{}, fmt.Errorf("%w %q: %w", ErrInvalidRef, s, err)
	}
	path := t.RepositoryStr()
	if slices.Contains(strings.Split(path, "/"), "") {
		return Ref{}, fmt.Errorf("%w %q: empty repository path component", ErrInvalidRef, s)
	}
	host := t.RegistryStr()
	if host == name.DefaultRegistry {
		host = dockerHub
	}
	return Ref{repo: host + "/" + path, tag: t.TagStr(), digest: digest}, nil
}

// MustParseRef is ParseRef for references known to be valid (tests, constants); it panics
// otherwise.
func MustParseRef(s string) Ref {
	r, err := ParseRef(s)
	if err != nil {
		panic(err)
	}
	return r
}

// Repository is "host/path" without tag or digest.
func (r Ref) Repository() string { return r.repo }

// Registry is the registry host (with port, if any): "docker.io", "127.0.0.1:5000".
func (r Ref) Registry() string {
	host, _, _ := strings.Cut(r.repo, "/")
	return host
}

// Path is the repository path inside the registry: "library/ubuntu".
func (r Ref) Path() string {
	_, path, _ := strings.Cut(r.repo, "/")
	return path
}

// Tag is the tag, "" for a reference by digest only.
func (r Ref) Tag() string { return r.tag }

// Digest is the digest the reference itself names ("repo@sha256:…"), usually "".
func (r Ref) Digest() string { return r.digest }

// IsZero reports whether r is the zero (invalid) Ref.
func (r Ref) IsZero() bool { return r.repo == "" }

// WithTag returns the reference to tag ("" is "latest") in r's repository, without a
// digest. The tag is not validated: it comes from a registry's own listing.
func (r Ref) WithTag(tag string) Ref {
	if tag == "" {
		tag = DefaultTag
	}
	return Ref{repo: r.repo, tag: tag}
}

// WithDigest returns the reference to digest in r's repository, without a tag
// ("repo@sha256:…", as containerd records repo_digests).
func (r Ref) WithDigest(digest string) Ref { return Ref{repo: r.repo, digest: digest} }

// String is the normalised form: "host/path:tag", "host/path@digest" or
// "host/path:tag@digest".
func (r Ref) String() string {
	s := r.repo
	if r.tag != "" {
		s += ":" + r.tag
	}
	if r.digest != "" {
		s += "@" + r.digest
	}
	return s
}

// MarshalText encodes r as its String.
func (r Ref) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses and normalises text (ParseRef); empty text is the zero Ref.
func (r *Ref) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*r = Ref{}
		return nil
	}
	p, err := ParseRef(string(text))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

// SplitDigestRef splits a "repo@sha256:…" reference as a container runtime records it
// (repo_digests) into repository and digest without validating either: it is the cheap path
// for inventories that the leader reads for every node on every status request. ok is false
// when ref carries no digest.
func SplitDigestRef(ref string) (repo, digest string, ok bool) {
	repo, digest, ok = strings.Cut(ref, "@")
	return repo, digest, ok && digest != ""
}

// SplitTagRef splits a "repo:tag" reference as a container runtime records it (repo_tags,
// already normalised) into repository and tag without validating either, the cheap path for
// the same hot loops as SplitDigestRef. tag is "" when ref has none.
func SplitTagRef(ref string) (repo, tag string) {
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') && !strings.Contains(ref, "@") {
		return ref[:i], ref[i+1:]
	}
	return ref, ""
}

// Image is one image a node should hold: the unit of the desired list that sources produce,
// the leader publishes, gossip carries, agents pull and the status API shows.
type Image struct {
	// Ref is where to pull it from, by tag (or by digest when the source named only one).
	Ref Ref `json:"image_url"`
	// Digest is the manifest digest Ref should resolve to ("sha256:…"), "" when the source
	// could not tell; then whatever the tag resolves to at pull time is accepted.
	Digest string `json:"image_hash"`
	// Name is the display name (a desired image) or the raw tag (a listed image).
	Name string `json:"name"`
	// Size is the image's size in bytes as the registry reports it (compressed layers plus
	// config), 0 when unknown; the disk guard uses it.
	Size uint64 `json:"size,omitempty"`
	// Priority is the image's place in the desired list, 0 first: pulled first, and the
	// last to give up anything when resources run short.
	Priority int `json:"priority"`
}

// Tag is the tag the image is pulled by (Ref's tag; "" for a reference by digest).
func (i Image) Tag() string { return i.Ref.tag }

// WantDigest is the manifest digest the node must hold for the image: Digest, or the digest
// the reference itself names.
func (i Image) WantDigest() string {
	if i.Digest != "" {
		return i.Digest
	}
	return i.Ref.digest
}

// FormatSize is b bytes in binary units with one decimal ("4.0 GiB", "512 B"), as the agent's
// messages, the debug client and the status page show image and disk sizes.
func FormatSize(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
