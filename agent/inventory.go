package agent

import (
	"slices"
	"strings"

	"github.com/cachemachine/cachemachine/cri"
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
// known, the tag's image has that manifest digest. It returns the tag's digest on the node.
func (inv inventory) has(d DesiredImage) (string, bool) {
	img := inv.byTag[d.Ref]
	if img == nil {
		return "", false
	}
	if d.Digest != "" {
		if slices.Contains(digestsOf(img.Digests), d.Digest) {
			return d.Digest, true
		}
		return "", false
	}
	return digestFor(img.Digests, repoOf(d.Ref)), true
}

// digestsOf returns the digests of repo@digest references.
func digestsOf(refs []string) []string {
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		if d := digestOf(r); d != "" {
			out = append(out, d)
		}
	}
	return out
}

// digestFor picks the digest recorded for repo, or the first digest when the image was
// recorded under another repository name only.
func digestFor(refs []string, repo string) string {
	for _, r := range refs {
		if repoOf(r) == repo {
			return digestOf(r)
		}
	}
	for _, r := range refs {
		if d := digestOf(r); d != "" {
			return d
		}
	}
	return ""
}
