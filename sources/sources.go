// Package sources holds the repomen: the Rubin policy over a registry's or Artifact
// Registry's listing (Rubin) and the fixed list (Simple). Each yields a Listing; the leader
// package runs them.
package sources

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/rubintag"
)

// Listing is what one source yields: All, every image it lists (all_images, each named by
// its tag), and Desired, what its policy selected in priority order.
type Listing struct {
	All     []image.Image
	Desired []image.Image
	// Partial marks a listing made despite an error (a fixed list whose digest lookups
	// failed): it is used, and the error shown.
	Partial bool
}

// Lister lists the images (tags) of one repository, named by their tag; digests may be ""
// when the listing does not carry them (OCI registries), in which case the Lister should also
// be a DigestResolver.
type Lister interface {
	Repository() string
	ListImages(ctx context.Context) ([]image.Image, error)
}

// DigestResolver resolves tags to manifest digests; tags that do not exist are left out.
type DigestResolver interface {
	ResolveDigests(ctx context.Context, tags []string) (map[string]string, error)
}

// Sizer reads the size of an image by its manifest digest, for listings that do not carry
// sizes (OCI registries). It should remember sizes: it is asked on every listing.
type Sizer interface {
	Size(ctx context.Context, digest string) (uint64, error)
}

// Rubin is a source that applies the Rubin tag policy to a Lister's tags.
type Rubin struct {
	name   string
	lister Lister
	policy rubintag.Policy
}

// NewRubin builds a Rubin policy source.
func NewRubin(name string, l Lister, p rubintag.Policy) *Rubin {
	return &Rubin{name: name, lister: l, policy: p}
}

// Name implements Source.
func (r *Rubin) Name() string { return r.name }

// Repository is the repository the source lists, normalised ("host/path"): a push to it is a
// reason to list the source again.
func (r *Rubin) Repository() string { return r.lister.Repository() }

// List implements Source. When the listing lacks digests it resolves only the tags the
// policy needs (aliases, pins and a first selection), then selects again with them, so alias
// names and the cycle filter see the digests that matter; when it lacks sizes, it reads the
// selected images' sizes, each read within LookupTimeout (a read that fails or stalls leaves
// that size out). All is every listed tag, newest name first (tag names in reverse
// order, as the Python cachemachine listed them).
func (r *Rubin) List(ctx context.Context) (Listing, error) {
	imgs, err := r.lister.ListImages(ctx)
	if err != nil {
		return Listing{}, err
	}
	if res, ok := r.lister.(DigestResolver); ok && slices.ContainsFunc(imgs, func(i image.Image) bool { return i.Digest == "" }) {
		need := map[string]bool{}
		for _, sel := range r.policy.Select(imgs) {
			need[sel.Tag()] = true
		}
		for _, t := range append(append([]string{r.policy.RecommendedTag}, r.policy.AliasTags...), r.policy.Pin...) {
			if t != "" {
				need[t] = true
			}
		}
		digests, err := res.ResolveDigests(ctx, slices.Sorted(maps.Keys(need)))
		if err != nil {
			return Listing{}, err
		}
		for i := range imgs {
			if d, ok := digests[imgs[i].Tag()]; ok {
				imgs[i].Digest = d
			}
		}
	}
	l := Listing{All: slices.Clone(imgs), Desired: r.policy.Select(imgs)}
	if sz, ok := r.lister.(Sizer); ok {
		for i, img := range l.Desired {
			if img.Size != 0 || img.Digest == "" {
				continue
			}
			lctx, cancel := context.WithTimeout(ctx, LookupTimeout)
			n, err := sz.Size(lctx, img.Digest)
			cancel()
			if err == nil {
				l.Desired[i].Size = n
			} else if ctx.Err() != nil {
				return Listing{}, err
			}
			// Without a size the disk guard falls back to its own estimate.
		}
	}
	slices.SortStableFunc(l.All, func(a, b image.Image) int { return strings.Compare(b.Tag(), a.Tag()) })
	return l, nil
}

// Resolver looks up the manifest digest and size of one image (a HEAD and, once per digest,
// a manifest read); *registry.Resolver implements it.
type Resolver interface {
	Resolve(ctx context.Context, ref image.Ref) (image.Image, error)
}

// LookupTimeout bounds one SimpleRepoMan digest lookup and one size read of a Rubin source: a
// registry that accepts connections and never answers costs each listing this much, not the
// source's whole deadline.
const LookupTimeout = 15 * time.Second

// lookupParallelism bounds a SimpleRepoMan's lookups in flight.
const lookupParallelism = 4

// Simple is the SimpleRepoMan source: a fixed list. Digests not given in the config are
// resolved when the registry answers, each lookup on its own with its own deadline; when one
// fails, the last digest resolved stays in force and the failure is the source's error. A
// fixed list contributes nothing to all_images, as in the Python cachemachine.
type Simple struct {
	name    string
	images  []image.Image
	resolve Resolver // may be nil

	mu    sync.Mutex                // guards known
	known map[image.Ref]image.Image // last resolution of each reference
}

// NewSimple builds a fixed-list source over normalised images (config order is priority
// order). An image with a digest given in the config keeps it, and resolve (may be nil) is
// asked for it by digest (repo@digest: its size only); resolve looks up the others by tag.
func NewSimple(name string, images []image.Image, resolve Resolver) *Simple {
	return &Simple{name: name, images: slices.Clone(images), resolve: resolve, known: map[image.Ref]image.Image{}}
}

// Name implements Source.
func (s *Simple) Name() string { return s.name }

// Refs are the list's references, in config order.
func (s *Simple) Refs() []image.Ref {
	out := make([]image.Ref, len(s.images))
	for i, img := range s.images {
		out[i] = img.Ref
	}
	return out
}

// List implements Source. It always returns the full list; when a lookup fails the listing
// is Partial (last known digests) and the error names the images.
func (s *Simple) List(ctx context.Context) (Listing, error) {
	out := make([]image.Image, len(s.images))
	errs := make([]error, len(s.images))
	var g errgroup.Group
	g.SetLimit(lookupParallelism)
	for i, img := range s.images {
		if img.Name == "" {
			img.Name = img.Tag()
		}
		img.Priority = i
		out[i] = img
		if s.resolve == nil || img.Digest != "" && img.Size != 0 {
			continue
		}
		ref := img.Ref
		if img.Digest != "" {
			ref = img.Ref.WithDigest(img.Digest) // only the size to read: no HEAD on the tag
		}
		g.Go(func() error {
			lctx, cancel := context.WithTimeout(ctx, LookupTimeout)
			got, err := s.resolve.Resolve(lctx, ref)
			cancel()
			s.mu.Lock()
			if err == nil {
				s.known[img.Ref] = got
			} else {
				errs[i] = err
				got = s.known[img.Ref]
			}
			s.mu.Unlock()
			if out[i].Digest == "" {
				out[i].Digest = got.Digest
			}
			if out[i].Size == 0 && got.Digest == out[i].Digest {
				out[i].Size = got.Size
			}
			return nil
		})
	}
	_ = g.Wait() // lookups record their errors
	l := Listing{All: []image.Image{}, Desired: out}
	if err := errors.Join(errs...); err != nil {
		l.Partial = true
		return l, fmt.Errorf("resolve digests: %w", err)
	}
	return l, nil
}

// Describe names a source for names: "repomen[0] RubinRepoGar us-central1-docker.pkg.dev/…".
func Describe(index int, typ, repository string) string {
	if repository == "" {
		return fmt.Sprintf("repomen[%d] %s", index, typ)
	}
	return fmt.Sprintf("repomen[%d] %s %s", index, typ, repository)
}
