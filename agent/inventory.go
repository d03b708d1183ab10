package agent

import (
	"slices"
	"strings"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// inventory indexes one CRI snapshot.
type inventory struct {
	images  []CachedImage
	byTag   map[string]*CachedImage
	largest uint64
}

func newInventory(imgs []cri.Image) inventory {
	inv := inventory{images: make([]CachedImage, 0, len(imgs)), byTag: map[string]*CachedImage{}}
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
	for i := range inv.images {
		for _, t := range inv.images[i].Tags {
			inv.byTag[t] = &inv.images[i]
		}
	}
	return inv
}

// has reports whether the node holds d: the tag is present and, when the desired digest is
// known, the tag's image has that manifest digest (a reference by digest only: an image of
// the repository with that digest). It returns the digest on the node.
func (inv inventory) has(d image.Image) (string, bool) {
	want := d.WantDigest()
	if d.Tag() == "" {
		for _, img := range inv.images {
			if slices.Contains(img.Digests, d.Ref.Repository()+"@"+want) {
				return want, true
			}
		}
		return "", false
	}
	img := inv.byTag[d.Ref.WithTag(d.Tag()).String()]
	if img == nil {
		return "", false
	}
	if want != "" {
		if slices.Contains(digestsOf(img.Digests), want) {
			return want, true
		}
		return "", false
	}
	return digestFor(img.Digests, d.Ref.Repository()), true
}

// imageOf returns the image that holds d on the node (as has decides), nil if none.
func (inv inventory) imageOf(d image.Image) *CachedImage {
	if _, ok := inv.has(d); !ok {
		return nil
	}
	if d.Tag() == "" {
		want := d.Ref.Repository() + "@" + d.WantDigest()
		for i := range inv.images {
			if slices.Contains(inv.images[i].Digests, want) {
				return &inv.images[i]
			}
		}
		return nil
	}
	return inv.byTag[d.Ref.WithTag(d.Tag()).String()]
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
