package agent

import (
	"slices"
	"strings"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// inventory indexes one CRI snapshot.
type inventory struct {
	Index
	images  []CachedImage
	largest uint64
}

func newInventory(imgs []cri.Image) inventory {
	inv := inventory{images: make([]CachedImage, 0, len(imgs))}
	for _, img := range imgs {
		inv.images = append(inv.images, CachedImage{
			ID:      img.ID,
			Tags:    slices.Sorted(slices.Values(img.Tags)),
			Digests: slices.Sorted(slices.Values(img.Digests)),
			Size:    img.Size,
			Pinned:  img.Pinned,
		})
		inv.largest = max(inv.largest, img.Size)
	}
	slices.SortFunc(inv.images, func(a, b CachedImage) int { return strings.Compare(a.ID, b.ID) })
	inv.Index = NewIndex(inv.images)
	return inv
}

// Index finds the desired images in a node's inventory. The agent decides with it what is
// cached and the leader what a restarted node still misses: both by the same rule.
type Index struct {
	byTag    map[string]*CachedImage // "repo:tag" -> its image
	byDigest map[string]*CachedImage // "repo@sha256:…" -> its image
}

// NewIndex indexes images; the Index points into the slice.
func NewIndex(images []CachedImage) Index {
	ix := Index{byTag: map[string]*CachedImage{}, byDigest: map[string]*CachedImage{}}
	for i := range images {
		for _, t := range images[i].Tags {
			ix.byTag[t] = &images[i]
		}
		for _, d := range images[i].Digests {
			if ix.byDigest[d] == nil {
				ix.byDigest[d] = &images[i]
			}
		}
	}
	return ix
}

// Has reports whether the node holds d, and the manifest digest it holds it at. A reference
// that names a digest ("repo@sha256:…", also "repo:tag@sha256:…": the runtime pulls the
// digest and records no tag for it) is held by an image of the repository with that digest.
// A reference by tag is held when the tag is present and, when the desired digest is known,
// the tag's image has that manifest digest.
func (ix Index) Has(d image.Image) (string, bool) {
	img := ix.Of(d)
	switch {
	case img == nil:
		return "", false
	case d.WantDigest() != "":
		return d.WantDigest(), true
	default:
		return digestFor(img.Digests, d.Ref.Repository()), true
	}
}

// Of returns the image that holds d on the node (as Has decides), nil if none.
func (ix Index) Of(d image.Image) *CachedImage {
	want := d.WantDigest()
	if d.Ref.Digest() != "" {
		return ix.byDigest[d.Ref.Repository()+"@"+want]
	}
	img := ix.byTag[d.Ref.WithTag(d.Tag()).String()]
	if img == nil || (want != "" && !slices.Contains(digestsOf(img.Digests), want)) {
		return nil
	}
	return img
}

// imageOfRecord returns the image a containerd image record names: by its ID ("sha256:…")
// or one of its repo digests ("repo@sha256:…"); nil if none.
func (inv inventory) imageOfRecord(name string) *CachedImage {
	for i := range inv.images {
		if inv.images[i].ID == name || slices.Contains(inv.images[i].Digests, name) {
			return &inv.images[i]
		}
	}
	return nil
}

// digestsOf returns the digests of repo@digest references.
func digestsOf(refs []string) []string {
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		if _, d, ok := image.SplitDigestRef(r); ok {
			out = append(out, d)
		}
	}
	return out
}

// digestFor picks the digest recorded for repo, or the first digest when the image was
// recorded under another repository name only.
func digestFor(refs []string, repo string) string {
	first := ""
	for _, r := range refs {
		name, d, ok := image.SplitDigestRef(r)
		if ok && name == repo {
			return d
		}
		if ok && first == "" {
			first = d
		}
	}
	return first
}
