package rubintag

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/image"
)

// named is the part of a selected image most tests care about.
type named struct{ Tag, Name string }

func project(sel []image.Image) []named {
	var out []named
	for _, s := range sel {
		out = append(out, named{s.Tag(), s.Name})
	}
	return out
}

// listed is one tag of a test listing and its digest.
type listed struct{ Tag, Digest string }

// testRepo is the repository the test listings are in.
var testRepo = image.MustParseRef("registry.example/rubin/sciplat-lab")

// images turns a test listing into the images a source lists.
func images(ls []listed) []image.Image {
	out := make([]image.Image, len(ls))
	for i, l := range ls {
		out[i] = image.Image{Ref: testRepo.WithTag(l.Tag), Digest: l.Digest, Name: l.Tag}
	}
	return out
}

func intp(n int) *int { return &n }

// pythonCycleRegistry is the Python cachemachine's tests/alias_test.py registry.
var pythonCycleRegistry = []listed{
	{"w_2021_21_c0020.002", "sha256:21c20"},
	{"w_2021_22_c0020.003", "sha256:22c20"},
	{"d_2021_06_14_c0020.004", "sha256:614c20"},
	{"d_2021_06_15_c0020.005", "sha256:615c20"},
	{"latest_weekly", "sha256:22c20"},
	{"latest_daily", "sha256:615c20"},
	{"recommended", "sha256:22c20"},
	{"w_2021_21_c0021.002", "sha256:21c21"},
	{"w_2021_22_c0021.003", "sha256:22c21"},
	{"d_2021_06_14_c0021.004", "sha256:614c21"},
	{"d_2021_06_15_c0021.005", "sha256:615c21"},
}

// basicRegistry is a Docker Hub style listing: recommended points at the newest weekly.
var basicRegistry = []listed{
	{"recommended", "sha256:w22"},
	{"latest_weekly", "sha256:w22"},
	{"latest_daily", "sha256:d0527"},
	{"latest", "sha256:w22"},
	{"r21_0_0", "sha256:r2100"},
	{"r21_0_1", "sha256:r2101"},
	{"r22_0_0_rc1", "sha256:rc1"},
	{"w_2021_9", "sha256:w9"},
	{"w_2021_10", "sha256:w10"},
	{"w_2021_22", "sha256:w22"},
	{"w_2021_23-amd64", "sha256:w23a"},
	{"d_2021_05_26", "sha256:d0526"},
	{"d_2021_05_27", "sha256:d0527"},
	{"exp_w_2021_30", "sha256:exp"},
	{"MiXeD_CaSe", "sha256:mixed"},
}

func TestSelect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		policy Policy
		images []listed
		want   []named
	}{
		{
			name: "python alias test with cycle 20",
			policy: Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly", "latest_daily"},
				NumWeeklies: 2, NumDailies: 2, Cycle: intp(20)},
			images: pythonCycleRegistry,
			want: []named{
				{"recommended", "Recommended (Weekly 2021_22 (SAL Cycle 0020, Build 003))"},
				{"latest_weekly", "Latest Weekly (Weekly 2021_22 (SAL Cycle 0020, Build 003))"},
				{"latest_daily", "Latest Daily (Daily 2021_06_15 (SAL Cycle 0020, Build 005))"},
				{"w_2021_22_c0020.003", "Weekly 2021_22 (SAL Cycle 0020, Build 003)"},
				{"w_2021_21_c0020.002", "Weekly 2021_21 (SAL Cycle 0020, Build 002)"},
				{"d_2021_06_15_c0020.005", "Daily 2021_06_15 (SAL Cycle 0020, Build 005)"},
				{"d_2021_06_14_c0020.004", "Daily 2021_06_14 (SAL Cycle 0020, Build 004)"},
			},
		},
		{
			name:   "cycle 21 drops the aliases, whose digests are cycle 20",
			policy: Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly"}, NumWeeklies: 1, NumDailies: 1, Cycle: intp(21)},
			images: pythonCycleRegistry,
			want: []named{
				{"w_2021_22_c0021.003", "Weekly 2021_22 (SAL Cycle 0021, Build 003)"},
				{"d_2021_06_15_c0021.005", "Daily 2021_06_15 (SAL Cycle 0021, Build 005)"},
			},
		},
		{
			name:   "cycle nobody has selects nothing",
			policy: Policy{RecommendedTag: "recommended", NumWeeklies: 5, NumDailies: 5, Cycle: intp(99)},
			images: pythonCycleRegistry,
			want:   nil,
		},
		{
			name: "recommended and the weekly it points to are both listed",
			policy: Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly", "latest_daily"},
				NumReleases: 1, NumWeeklies: 2, NumDailies: 3},
			images: basicRegistry,
			want: []named{
				{"recommended", "Recommended (Weekly 2021_22)"},
				{"latest_weekly", "Latest Weekly (Weekly 2021_22)"},
				{"latest_daily", "Latest Daily (Daily 2021_05_27)"},
				{"r21_0_1", "Release r21.0.1"},
				{"w_2021_22", "Weekly 2021_22"},
				{"w_2021_10", "Weekly 2021_10"},
				{"d_2021_05_27", "Daily 2021_05_27"},
				{"d_2021_05_26", "Daily 2021_05_26"},
			},
		},
		{
			name:   "num zero selects only aliases",
			policy: Policy{RecommendedTag: "recommended"},
			images: basicRegistry,
			want:   []named{{"recommended", "Recommended (Weekly 2021_22)"}},
		},
		{
			name:   "negative counts select none",
			policy: Policy{NumReleases: -1, NumWeeklies: -3, NumDailies: -1},
			images: basicRegistry,
			want:   nil,
		},
		{
			name:   "zero policy selects nothing",
			images: basicRegistry,
			want:   nil,
		},
		{
			name:   "counts beyond the listing take all, newest first",
			policy: Policy{NumReleases: 10, NumWeeklies: 10},
			images: basicRegistry,
			want: []named{
				{"r21_0_1", "Release r21.0.1"},
				{"r21_0_0", "Release r21.0.0"},
				{"w_2021_22", "Weekly 2021_22"},
				{"w_2021_10", "Weekly 2021_10"},
				{"w_2021_9", "Weekly 2021_9"},
			},
		},
		{
			name: "candidates, experimental, unknown and arch tags only when pinned; arch never",
			policy: Policy{NumReleases: 1, NumWeeklies: 1,
				Pin: []string{"r22_0_0_rc1", "exp_w_2021_30", "MiXeD_CaSe", "w_2021_23-amd64", "latest"}},
			images: basicRegistry,
			want: []named{
				{"r21_0_1", "Release r21.0.1"},
				{"w_2021_22", "Weekly 2021_22"},
				{"r22_0_0_rc1", "Release Candidate r22.0.0-rc1"},
				{"exp_w_2021_30", "Experimental Weekly 2021_30"},
				{"MiXeD_CaSe", "MiXeD_CaSe"},
				{"latest", "latest"},
			},
		},
		{
			name: "each tag at most once; unlisted pins and aliases are skipped",
			policy: Policy{RecommendedTag: "recommended", AliasTags: []string{"recommended", "latest_weekly", "nope"},
				NumWeeklies: 1, Pin: []string{"w_2021_22", "latest_weekly", "w_1999_1", "w_2021_9", "w_2021_9", ""}},
			images: basicRegistry,
			want: []named{
				{"recommended", "Recommended (Weekly 2021_22)"},
				{"latest_weekly", "Latest Weekly (Weekly 2021_22)"},
				{"w_2021_22", "Weekly 2021_22"},
				{"w_2021_9", "Weekly 2021_9"},
			},
		},
		{
			name:   "recommended missing from the listing",
			policy: Policy{RecommendedTag: "recommended", NumWeeklies: 1},
			images: []listed{{"w_2021_22", "sha256:a"}},
			want:   []named{{"w_2021_22", "Weekly 2021_22"}},
		},
		{
			name:   "alias names every recognised same-digest tag, sorted descending",
			policy: Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly"}},
			images: []listed{
				{"recommended", "sha256:x"},
				{"latest_weekly", "sha256:x"},
				{"r21_0_1", "sha256:x"},
				{"w_2021_9", "sha256:x"},
				{"w_2021_10", "sha256:x"},
				{"exp_w_2021_10", "sha256:x"},
				{"d_2021_05_27", "sha256:x"},
				{"some_unknown", "sha256:x"},
				{"w_2021_11", "sha256:other"},
			},
			want: []named{
				{"recommended", "Recommended (Weekly 2021_9, Weekly 2021_10, Release r21.0.1, Experimental Weekly 2021_10, Daily 2021_05_27)"},
				{"latest_weekly", "Latest Weekly (Weekly 2021_9, Weekly 2021_10, Release r21.0.1, Experimental Weekly 2021_10, Daily 2021_05_27)"},
			},
		},
		{
			name:   "alias without recognised same-digest tags keeps its own name",
			policy: Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly", "latest_daily"}},
			images: []listed{
				{"recommended", "sha256:x"},
				{"some_unknown", "sha256:x"},
				{"latest_weekly", ""},
				{"w_2021_22", ""},
				{"latest_daily", "sha256:d"},
			},
			want: []named{
				{"recommended", "Recommended"},
				{"latest_weekly", "Latest Weekly"},
				{"latest_daily", "Latest Daily"},
			},
		},
		{
			name:   "alias with a trailing cycle",
			policy: Policy{RecommendedTag: "recommended_c0027", NumWeeklies: 1, Cycle: intp(27)},
			images: []listed{
				{"recommended_c0027", "sha256:x"},
				{"w_2024_10_c0027.001", "sha256:x"},
				{"w_2024_11_c0028.001", "sha256:y"},
			},
			want: []named{
				{"recommended_c0027", "Recommended (SAL Cycle 0027) (Weekly 2024_10 (SAL Cycle 0027, Build 001))"},
				{"w_2024_10_c0027.001", "Weekly 2024_10 (SAL Cycle 0027, Build 001)"},
			},
		},
		{
			name:   "alias cycle comes from its digest before its name",
			policy: Policy{RecommendedTag: "recommended_c0027", Cycle: intp(27)},
			images: []listed{
				{"recommended_c0027", "sha256:y"},
				{"w_2024_11_c0028.001", "sha256:y"},
			},
			want: nil,
		},
		{
			name:   "alias without cycle takes a same-digest unknown's cycle",
			policy: Policy{RecommendedTag: "recommended", Cycle: intp(27)},
			images: []listed{
				{"recommended", "sha256:y"},
				{"stable_c0027", "sha256:y"},
			},
			want: []named{{"recommended", "Recommended"}},
		},
		{
			name:   "duplicate listing: the first digest wins",
			policy: Policy{RecommendedTag: "recommended"},
			images: []listed{
				{"recommended", "sha256:a"},
				{"w_2021_22", "sha256:a"},
				{"recommended", "sha256:b"},
				{"w_2021_23", "sha256:b"},
			},
			want: []named{{"recommended", "Recommended (Weekly 2021_22)"}},
		},
		{
			name:   "empty listed tag is latest",
			policy: Policy{AliasTags: []string{"latest"}},
			images: []listed{{"", "sha256:a"}, {"w_2021_22", "sha256:a"}},
			want:   []named{{"latest", "Latest (Weekly 2021_22)"}},
		},
		{
			name:   "negative cycle matches nothing",
			policy: Policy{NumWeeklies: 1, Cycle: intp(-20)},
			images: pythonCycleRegistry,
			want:   nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.policy.Select(images(tt.images))
			require.NotNil(t, got)
			require.Equal(t, tt.want, project(got))
			requireSelectInvariants(t, tt.policy, tt.images, got)
		})
	}
}

func TestSelectCarriesDigestAndType(t *testing.T) {
	t.Parallel()
	p := Policy{RecommendedTag: "recommended", NumWeeklies: 1}
	got := p.Select(images(basicRegistry))
	require.Equal(t, []image.Image{
		{Ref: testRepo.WithTag("recommended"), Digest: "sha256:w22", Name: "Recommended (Weekly 2021_22)", Priority: 0},
		{Ref: testRepo.WithTag("w_2021_22"), Digest: "sha256:w22", Name: "Weekly 2021_22", Priority: 1},
	}, got)
}

// resolved is every listed image once (the first listing of a tag wins), in listing order,
// with its display name: what Select chooses from.
func resolved(p Policy, images []image.Image) []image.Image {
	l := p.resolve(images)
	out := make([]image.Image, len(l.entries))
	for i, e := range l.entries {
		out[i] = e.named()
	}
	return out
}

func TestResolve(t *testing.T) {
	t.Parallel()
	p := Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly"}, NumWeeklies: 1}
	got := resolved(p, images(append(basicRegistry, listed{"w_2021_9", "sha256:dup"})))
	require.Len(t, got, len(basicRegistry))
	want := map[string]string{
		"recommended":     "Recommended (Weekly 2021_22)",
		"latest_weekly":   "Latest Weekly (Weekly 2021_22)",
		"latest_daily":    "latest_daily", // not an alias under this policy
		"latest":          "latest",
		"r22_0_0_rc1":     "Release Candidate r22.0.0-rc1",
		"w_2021_23-amd64": "Weekly 2021_23 [amd64]",
		"exp_w_2021_30":   "Experimental Weekly 2021_30",
		"w_2021_9":        "Weekly 2021_9",
	}
	for i, s := range got {
		require.Equal(t, basicRegistry[i].Tag, s.Tag(), "listing order")
		require.Equal(t, basicRegistry[i].Digest, s.Digest)
		if w, ok := want[s.Tag()]; ok {
			require.Equal(t, w, s.Name, s.Tag())
		}
	}
}

// requireSelectInvariants checks what must hold for any policy and listing.
func requireSelectInvariants(t *testing.T, p Policy, listing []listed, got []image.Image) {
	t.Helper()
	tags := make(map[string]bool)
	for _, img := range listing {
		tag := img.Tag
		if tag == "" {
			tag = DefaultTag
		}
		tags[tag] = true
	}
	bound := 1 + len(p.AliasTags) + len(p.Pin) + max(0, p.NumReleases) + max(0, p.NumWeeklies) + max(0, p.NumDailies)
	require.LessOrEqual(t, len(got), min(bound, len(tags)))
	seen := make(map[string]bool)
	for i, img := range got {
		s := img.Tag()
		require.False(t, seen[s], "duplicate %q", s)
		seen[s] = true
		require.True(t, tags[s], "unlisted %q", s)
		require.NotEmpty(t, img.Name)
		require.Equal(t, i, img.Priority)
		if !p.isAlias(s) {
			require.Empty(t, Parse(s).Arch, "arch tag %q selected", s)
		}
		if s == p.RecommendedTag {
			require.Zero(t, i, "recommended not first")
		}
	}
}

// FuzzSelect builds a listing from the fuzzer's strings and checks Select's invariants.
func FuzzSelect(f *testing.F) {
	f.Add("recommended w_2021_22 w_2021_10 d_2021_05_27 r21_0_1 latest_weekly w_2021_23-amd64", uint8(3), uint8(2), int8(-1))
	f.Add("recommended_c0027 w_2024_10_c0027.001 exp_random r22_0_0_rc1  MiXeD", uint8(7), uint8(1), int8(27))
	f.Fuzz(func(t *testing.T, spec string, digests, n uint8, cycle int8) {
		var listing []listed
		var tags []string
		start := 0
		for i := 0; i <= len(spec); i++ {
			if i == len(spec) || spec[i] == ' ' {
				tag := spec[start:i]
				tags = append(tags, tag)
				listing = append(listing, listed{Tag: tag, Digest: fmt.Sprint("sha256:", i%(int(digests%8)+1))})
				start = i + 1
			}
		}
		p := Policy{NumReleases: int(n % 4), NumWeeklies: int(n / 4 % 4), NumDailies: int(n / 16 % 4)}
		if len(tags) > 0 {
			p.RecommendedTag = tags[0]
		}
		if len(tags) > 2 {
			p.AliasTags = tags[1:3]
		}
		if len(tags) > 4 {
			p.Pin = tags[len(tags)-2:]
		}
		if cycle >= 0 {
			p.Cycle = intp(int(cycle))
		}
		imgs := images(listing)
		got := p.Select(imgs)
		requireSelectInvariants(t, p, listing, got)
		require.Equal(t, got, p.Select(imgs), "deterministic")
		require.LessOrEqual(t, len(resolved(p, imgs)), len(imgs))
	})
}

// BenchmarkSelect5000 selects from a realistic 5,000-tag listing: years of weeklies and
// dailies, some with cycles and architectures, releases, candidates, experimentals, aliases.
func BenchmarkSelect5000(b *testing.B) {
	imgs := images(realisticListing(5000))
	p := Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly", "latest_daily"},
		NumReleases: 1, NumWeeklies: 2, NumDailies: 3, Pin: []string{"w_2019_10"}}
	b.ReportAllocs()
	for b.Loop() {
		if got := p.Select(imgs); len(got) != 10 {
			b.Fatalf("selected %d", len(got))
		}
	}
}

func realisticListing(n int) []listed {
	images := []listed{
		{"recommended", "sha256:w0"}, {"latest_weekly", "sha256:w0"}, {"latest_daily", "sha256:d0"}, {"latest", "sha256:d0"},
	}
	seen := make(map[string]bool)
	for i := 0; len(images) < n; i++ {
		year, week, month, day := 2024-i/365, 52-(i/7)%52, 12-(i/28)%12, 28-i%28
		var tag string
		switch i % 10 {
		case 0, 1, 2, 3:
			tag = fmt.Sprintf("d_%d_%02d_%02d", year, month, day)
		case 4:
			tag = fmt.Sprintf("w_%d_%d", year, week)
		case 5:
			tag = fmt.Sprintf("w_%d_%d_c00%d.%03d", year, week, 20+i%10, i%100)
		case 6:
			tag = fmt.Sprintf("d_%d_%02d_%02d_rsp%d-amd64", year, month, day, i%40)
		case 7:
			tag = fmt.Sprintf("r%d_%d_%d", 20+i%10, i%3, i%5)
		case 8:
			tag = fmt.Sprintf("r%d_0_0_rc%d", 20+i%10, i%4)
		default:
			tag = fmt.Sprintf("exp_w_%d_%d_nosudo%d", year, week, i)
		}
		if seen[tag] {
			continue
		}
		seen[tag] = true
		digest := fmt.Sprintf("sha256:%064d", i)
		if i == 0 {
			digest = "sha256:d0"
		} else if i == 4 {
			digest = "sha256:w0"
		}
		images = append(images, listed{Tag: tag, Digest: digest})
	}
	return images
}
