// Package rubintag knows the Rubin Science Platform image tag conventions (SQR-059 as extended
// by Nublado): it parses tags, builds the display names the spawner shows, orders tags, and
// applies a repoman's selection policy to a registry listing.
//
// Everything here is pure: no I/O, no clock, no logging, and no panics on any input, because
// tags come straight from a registry. Display names are part of the status API and must match
// what the Python cachemachine produced (shared/reference/rubin-tags.md).
package rubintag

import (
	"cmp"
	"math"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"github.com/cachemachine/cachemachine/image"
)

// Type is the kind of image a tag names. The zero value is Unknown, so a Tag that was never
// parsed is never mistaken for a selectable image.
type Type int

// Tag types. Alias is never produced by Parse: a tag is an alias only because a Policy says so.
const (
	Unknown Type = iota
	Release
	ReleaseCandidate
	Weekly
	Daily
	Experimental
	Alias
)

// String returns the type's name as the Python services spelled it.
func (t Type) String() string {
	switch t {
	case Release:
		return "Release"
	case ReleaseCandidate:
		return "Release Candidate"
	case Weekly:
		return "Weekly"
	case Daily:
		return "Daily"
	case Experimental:
		return "Experimental"
	case Alias:
		return "Alias"
	default:
		return "Unknown"
	}
}

// DefaultTag is what an empty tag means, by Docker convention.
const DefaultTag = image.DefaultTag

// Tag is everything a tag string says about its image. Digit strings that appear in display
// names (cycle, cycle build, RSP build) are kept as written, because "0020" must be shown as
// "0020"; they are compared numerically.
type Tag struct {
	// Tag is the tag as listed ("latest" for an empty tag).
	Tag string
	// Type is the kind of image.
	Type Type
	// DisplayName is the human-readable name the spawner shows.
	DisplayName string
	// Version is (major, minor, patch) for releases and candidates, (year, week, 0) for
	// weeklies, (year, month, day) for dailies; an experimental tag carries the version of
	// the tag it wraps. Components beyond the int range saturate at math.MaxInt: no real tag
	// has them, and saturating keeps Parse total.
	Version [3]int
	// RC is the release candidate number (ReleaseCandidate only).
	RC int
	// Cycle is the SAL XML cycle as written ("0020"), or "" when there is none.
	Cycle string
	// CycleBuild is the cycle build as written ("001"), or "" when there is none.
	CycleBuild string
	// RSPBuild is the RSP build number as written ("19"), or "" when there is none.
	RSPBuild string
	// Rest is the free-form trailing part ("20210527"), or "" when there is none.
	Rest string
	// Arch is the architecture suffix ("amd64"), or "" for a multi-architecture tag.
	Arch string
}

// The grammar, compiled once. (?s) lets "." match any byte so that every string has exactly
// one parse; real tags never contain newlines, but fuzzers and broken registries do.
const suffix = `(?:_(?:c|csal)(\d+)\.(\d+))?(?:_rsp(\d+))?(?:_(.+?))?(?:-([a-z0-9]+))?$`

var (
	candidateRE = regexp.MustCompile(`(?s)^r(\d+)_(\d+)_(\d+)_rc(\d+)` + suffix)
	releaseRE   = regexp.MustCompile(`(?s)^r(\d+)_(\d+)_(\d+)` + suffix)
	obsoleteRE  = regexp.MustCompile(`^r(\d\d)(\d)$`)
	weeklyRE    = regexp.MustCompile(`(?s)^w_(\d+)_(\d+)` + suffix)
	dailyRE     = regexp.MustCompile(`(?s)^d_(\d+)_(\d+)_(\d+)` + suffix)
	// An unknown tag may still end in a cycle and an architecture (Nublado's grammar).
	unknownRE = regexp.MustCompile(`(?s)^.*?(?:_c(\d+))?(?:-([a-z0-9]+))?$`)
	// An alias's own name turns a trailing cycle into words.
	aliasCycleRE = regexp.MustCompile(`(?s)^(.*)_c(\d+)$`)
)

// Parse parses a tag. It never fails: a tag that matches no known form is Unknown and is
// displayed as written. The forms are tried in the spec's order; dispatching on the first
// character first is only a shortcut, since every known form starts with a fixed letter.
func Parse(tag string) Tag {
	if tag == "" {
		tag = DefaultTag
	}
	switch tag[0] {
	case 'r':
		// Candidates first: a candidate would otherwise parse as a release with rest "rc1".
		if m := candidateRE.FindStringSubmatch(tag); m != nil {
			t := Tag{Tag: tag, Type: ReleaseCandidate, RC: atoi(m[4])}
			t.Version = [3]int{atoi(m[1]), atoi(m[2]), atoi(m[3])}
			t.setSuffixes(m[5:])
			t.DisplayName = "Release Candidate " + releaseName(t.Version) + "-rc" + m[4] + t.suffixNames()
			return t
		}
		if m := releaseRE.FindStringSubmatch(tag); m != nil {
			t := Tag{Tag: tag, Type: Release}
			t.Version = [3]int{atoi(m[1]), atoi(m[2]), atoi(m[3])}
			t.setSuffixes(m[4:])
			t.DisplayName = "Release " + releaseName(t.Version) + t.suffixNames()
			return t
		}
		if m := obsoleteRE.FindStringSubmatch(tag); m != nil {
			t := Tag{Tag: tag, Type: Release, Version: [3]int{atoi(m[1]), atoi(m[2]), 0}}
			t.DisplayName = "Release " + releaseName(t.Version)
			return t
		}
	case 'w':
		if m := weeklyRE.FindStringSubmatch(tag); m != nil {
			t := Tag{Tag: tag, Type: Weekly, Version: [3]int{atoi(m[1]), atoi(m[2]), 0}}
			t.setSuffixes(m[3:])
			t.DisplayName = "Weekly " + m[1] + "_" + m[2] + t.suffixNames()
			return t
		}
	case 'd':
		if m := dailyRE.FindStringSubmatch(tag); m != nil {
			t := Tag{Tag: tag, Type: Daily}
			t.Version = [3]int{atoi(m[1]), atoi(m[2]), atoi(m[3])}
			t.setSuffixes(m[4:])
			t.DisplayName = "Daily " + m[1] + "_" + m[2] + "_" + m[3] + t.suffixNames()
			return t
		}
	case 'e':
		// Experimental builds are usually exp_<another tag>: take that tag's facts so they
		// sort and filter like it. An unknown rest displays as written, which is exactly an
		// unknown tag's display name. Nested prefixes are peeled in a loop rather than by
		// recursion so that a hostile "exp_exp_exp_…" costs linear, not quadratic, time.
		depth, rest := 0, tag
		for len(rest) > len("exp_") && strings.HasPrefix(rest, "exp_") {
			rest = rest[len("exp_"):]
			depth++
		}
		if depth > 0 {
			t := Parse(rest)
			t.Tag = tag
			t.Type = Experimental
			t.DisplayName = strings.Repeat("Experimental ", depth) + t.DisplayName
			return t
		}
	}
	t := Tag{Tag: tag, Type: Unknown, DisplayName: tag}
	if m := unknownRE.FindStringSubmatch(tag); m != nil {
		t.Cycle, t.Arch = m[1], m[2]
	}
	return t
}

// ParseAlias returns the Tag for a tag that a policy declares an alias. Its own name is the
// tag with "_" as spaces, title-cased, and a trailing "_c<N>" as " (SAL Cycle <N>)", which
// also becomes its cycle until its digest tells a better one (Policy.Select).
func ParseAlias(tag string) Tag {
	if tag == "" {
		tag = DefaultTag
	}
	t := Tag{Tag: tag, Type: Alias}
	base := tag
	if m := aliasCycleRE.FindStringSubmatch(tag); m != nil {
		base, t.Cycle = m[1], m[2]
	}
	t.DisplayName = titleCase(strings.ReplaceAll(base, "_", " "))
	if t.Cycle != "" {
		t.DisplayName += " (SAL Cycle " + t.Cycle + ")"
	}
	return t
}

// setSuffixes stores the five optional suffix groups shared by the known forms.
func (t *Tag) setSuffixes(m []string) {
	t.Cycle, t.CycleBuild, t.RSPBuild, t.Rest, t.Arch = m[0], m[1], m[2], m[3], m[4]
}

// suffixNames renders the suffixes in the spec's fixed order.
func (t *Tag) suffixNames() string {
	var b strings.Builder
	if t.Cycle != "" {
		b.WriteString(" (SAL Cycle " + t.Cycle + ", Build " + t.CycleBuild + ")")
	}
	if t.RSPBuild != "" {
		b.WriteString(" (RSP Build " + t.RSPBuild + ")")
	}
	if t.Rest != "" {
		b.WriteString(" [" + t.Rest + "]")
	}
	if t.Arch != "" {
		b.WriteString(" [" + t.Arch + "]")
	}
	return b.String()
}

// releaseName is "r<major>.<minor>.<patch>" with the numbers as numbers, as Python printed them.
func releaseName(v [3]int) string {
	return "r" + strconv.Itoa(v[0]) + "." + strconv.Itoa(v[1]) + "." + strconv.Itoa(v[2])
}

// Compare orders tags oldest first: negative when a is older than b. The spec only orders
// tags of one type; to keep sorting total, releases and candidates share one order (a
// candidate is older than the release it precedes), and other types order by Type.
// Within an order: version, then candidate number, cycle, cycle build, RSP build (all
// numeric), then the tag string, so two different tags never compare equal.
func Compare(a, b Tag) int {
	if c := cmp.Compare(typeGroup(a.Type), typeGroup(b.Type)); c != 0 {
		return c
	}
	for i := range a.Version {
		if c := cmp.Compare(a.Version[i], b.Version[i]); c != 0 {
			return c
		}
	}
	if a.Type != b.Type { // a release and its candidate
		if a.Type == Release {
			return 1
		}
		return -1
	}
	if c := cmp.Compare(a.RC, b.RC); c != 0 {
		return c
	}
	if c := cmpNum(a.Cycle, b.Cycle); c != 0 {
		return c
	}
	if c := cmpNum(a.CycleBuild, b.CycleBuild); c != 0 {
		return c
	}
	if c := cmpNum(a.RSPBuild, b.RSPBuild); c != 0 {
		return c
	}
	return strings.Compare(a.Tag, b.Tag)
}

// typeGroup puts releases and candidates in one group so their order is transitive.
func typeGroup(t Type) Type {
	if t == ReleaseCandidate {
		return Release
	}
	return t
}

// cmpNum compares digit strings by value without converting, so any length is safe;
// an absent number sorts before every present one, as in Nublado.
func cmpNum(a, b string) int {
	if a == "" || b == "" {
		return cmp.Compare(len(a), len(b))
	}
	a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
	if c := cmp.Compare(len(a), len(b)); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

// atoi converts an ASCII digit string (the regexps guarantee one), saturating at math.MaxInt.
func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		d := int(s[i] - '0')
		if n > (math.MaxInt-d)/10 {
			return math.MaxInt
		}
		n = n*10 + d
	}
	return n
}

// titleCase is Python's str.title(): a cased letter is upper after an uncased character and
// lower after a cased one, so "latest weekly" becomes "Latest Weekly" exactly as before.
func titleCase(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	prevCased := false
	for _, r := range s {
		cased := unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r)
		if cased {
			if prevCased {
				r = unicode.ToLower(r)
			} else {
				r = unicode.ToTitle(r)
			}
		}
		b.WriteRune(r)
		prevCased = cased
	}
	return b.String()
}
