package rubintag

import (
	"slices"
	"strconv"
	"strings"

	"github.com/cachemachine/cachemachine/image"
)

// Policy is a Rubin repoman's selection configuration (the config's recommended_tag,
// alias_tags, num_*, cycle and pin). The zero Policy selects nothing. A Policy is a value and
// is safe for concurrent use.
type Policy struct {
	// RecommendedTag is the alias selected first; "" for none.
	RecommendedTag string
	// AliasTags are further aliases, selected after the recommended one in this order.
	AliasTags []string
	// NumReleases, NumWeeklies and NumDailies are how many of the newest of each type to
	// select; zero or negative selects none.
	NumReleases, NumWeeklies, NumDailies int
	// Cycle, when non-nil, restricts every selection to tags of this SAL cycle.
	Cycle *int
	// Pin lists tags selected last, when listed and not already selected.
	Pin []string
}

// entry is one listed image, its tag parsed once.
type entry struct {
	tag Tag
	img image.Image
}

// listing is a deduplicated, parsed registry listing with aliases resolved.
type listing struct {
	entries []entry
	byTag   map[string]int
}

// Select returns the images the policy wants cached, in priority order, each tag at most
// once: the recommended tag, the other aliases, the newest NumReleases releases, NumWeeklies
// weeklies and NumDailies dailies, then the pins. Only listed tags are selected (a pin or
// alias the registry does not list has no digest to pull, so it is skipped, as in Nublado).
// With Cycle set, only tags of that cycle are selected (aliases through their digest's
// cycle). Architecture-specific tags are never selected, nor are candidates, experimental or
// unknown tags unless pinned. Each selected image is as listed, with Name set to its display
// name and Priority to its place in the result. The result is never nil.
func (p Policy) Select(images []image.Image) []image.Image {
	l := p.resolve(images)
	out := []image.Image{} // never nil: the status API shows an empty list as [], not null
	seen := make(map[string]bool)
	add := func(i int) {
		e := &l.entries[i]
		if seen[e.tag.Tag] || !p.eligible(e.tag) {
			return
		}
		seen[e.tag.Tag] = true
		img := e.named()
		img.Priority = len(out)
		out = append(out, img)
	}
	byName := func(tag string) {
		if tag == "" {
			return
		}
		if i, ok := l.byTag[tag]; ok {
			add(i)
		}
	}

	byName(p.RecommendedTag)
	for _, a := range p.AliasTags {
		byName(a)
	}

	// One pass buckets the candidates; each bucket is sorted once.
	var buckets [3][]int
	for i, e := range l.entries {
		if b := bucket(e.tag.Type); b >= 0 && e.tag.Arch == "" && p.eligible(e.tag) {
			buckets[b] = append(buckets[b], i)
		}
	}
	for b, n := range [3]int{p.NumReleases, p.NumWeeklies, p.NumDailies} {
		idx := buckets[b]
		slices.SortFunc(idx, func(x, y int) int { return Compare(l.entries[y].tag, l.entries[x].tag) })
		for _, i := range idx[:max(0, min(n, len(idx)))] {
			add(i)
		}
	}

	for _, pin := range p.Pin {
		if i, ok := l.byTag[pin]; ok && l.entries[i].tag.Arch == "" {
			add(i)
		}
	}
	return out
}

// bucket maps the automatically selected types to Select's buckets, -1 for the others.
func bucket(t Type) int {
	switch t {
	case Release:
		return 0
	case Weekly:
		return 1
	case Daily:
		return 2
	}
	return -1
}

// eligible applies the cycle filter. The configured cycle is an integer and a tag's cycle is
// a digit string, so they are compared by value ("0020" is cycle 20).
func (p Policy) eligible(t Tag) bool {
	if p.Cycle == nil {
		return true
	}
	return *p.Cycle >= 0 && t.Cycle != "" && cmpNum(t.Cycle, strconv.Itoa(*p.Cycle)) == 0
}

// isAlias reports whether the policy declares tag an alias.
func (p Policy) isAlias(tag string) bool {
	return tag != "" && (tag == p.RecommendedTag || slices.Contains(p.AliasTags, tag))
}

// resolve parses each listed tag once (the first listing of a tag wins, as in the Python hash
// cache), in listing order, and names the aliases: an alias is named "<Alias> (<names of the
// recognised tags sharing its digest, sorted descending, joined by ", ">)" and takes the
// cycle of a same-digest tag.
func (p Policy) resolve(images []image.Image) *listing {
	l := &listing{entries: make([]entry, 0, len(images)), byTag: make(map[string]int, len(images))}
	aliasDigests := make(map[string][]int) // digest -> indexes of the non-alias tags sharing it
	var aliases []int
	for _, img := range images {
		name := img.Tag()
		if name == "" {
			name = DefaultTag
		}
		if _, dup := l.byTag[name]; dup {
			continue
		}
		var t Tag
		if p.isAlias(name) {
			t = ParseAlias(name)
			aliases = append(aliases, len(l.entries))
			if img.Digest != "" {
				aliasDigests[img.Digest] = nil
			}
		} else {
			t = Parse(name)
		}
		l.byTag[name] = len(l.entries)
		l.entries = append(l.entries, entry{tag: t, img: img})
	}
	if len(aliases) == 0 {
		return l
	}
	for i, e := range l.entries {
		if e.tag.Type == Alias {
			continue
		}
		if same, ok := aliasDigests[e.img.Digest]; ok {
			aliasDigests[e.img.Digest] = append(same, i)
		}
	}
	for _, a := range aliases {
		e := &l.entries[a]
		var names []string
		cycleTaken := false
		for _, i := range aliasDigests[e.img.Digest] {
			o := l.entries[i].tag
			if o.Type != Unknown {
				names = append(names, o.DisplayName)
			}
			// The digest's cycle beats the alias's own: the filter is about the image.
			if !cycleTaken && o.Cycle != "" {
				e.tag.Cycle, cycleTaken = o.Cycle, true
			}
		}
		if len(names) > 0 {
			slices.Sort(names)
			slices.Reverse(names)
			e.tag.DisplayName += " (" + strings.Join(names, ", ") + ")"
		}
	}
	return l
}

// named returns the listed image with its display name.
func (e *entry) named() image.Image {
	img := e.img
	img.Name = e.tag.DisplayName
	return img
}
