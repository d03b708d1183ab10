package rubintag

import (
	"math"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		tag  string
		want Tag
	}{
		// Every row of the spec's display-name table.
		{
			name: "release",
			tag:  "r21_0_1",
			want: Tag{Tag: "r21_0_1", Type: Release, DisplayName: "Release r21.0.1", Version: [3]int{21, 0, 1}},
		},
		{
			name: "release candidate",
			tag:  "r22_0_0_rc1",
			want: Tag{Tag: "r22_0_0_rc1", Type: ReleaseCandidate, DisplayName: "Release Candidate r22.0.0-rc1", Version: [3]int{22, 0, 0}, RC: 1},
		},
		{
			name: "weekly",
			tag:  "w_2021_22",
			want: Tag{Tag: "w_2021_22", Type: Weekly, DisplayName: "Weekly 2021_22", Version: [3]int{2021, 22, 0}},
		},
		{
			name: "daily keeps digits as written",
			tag:  "d_2021_05_27",
			want: Tag{Tag: "d_2021_05_27", Type: Daily, DisplayName: "Daily 2021_05_27", Version: [3]int{2021, 5, 27}},
		},
		{
			name: "weekly with cycle",
			tag:  "w_2021_22_c0020.001",
			want: Tag{Tag: "w_2021_22_c0020.001", Type: Weekly, DisplayName: "Weekly 2021_22 (SAL Cycle 0020, Build 001)",
				Version: [3]int{2021, 22, 0}, Cycle: "0020", CycleBuild: "001"},
		},
		{
			name: "release with rest",
			tag:  "r21_0_1_20210527",
			want: Tag{Tag: "r21_0_1_20210527", Type: Release, DisplayName: "Release r21.0.1 [20210527]", Version: [3]int{21, 0, 1}, Rest: "20210527"},
		},
		{
			name: "weekly with cycle and rest",
			tag:  "w_2021_22_c0020.001_20210527",
			want: Tag{Tag: "w_2021_22_c0020.001_20210527", Type: Weekly, DisplayName: "Weekly 2021_22 (SAL Cycle 0020, Build 001) [20210527]",
				Version: [3]int{2021, 22, 0}, Cycle: "0020", CycleBuild: "001", Rest: "20210527"},
		},
		{
			name: "weekly with rsp build",
			tag:  "w_2021_22_rsp19",
			want: Tag{Tag: "w_2021_22_rsp19", Type: Weekly, DisplayName: "Weekly 2021_22 (RSP Build 19)", Version: [3]int{2021, 22, 0}, RSPBuild: "19"},
		},
		{
			name: "weekly with arch",
			tag:  "w_2021_22-amd64",
			want: Tag{Tag: "w_2021_22-amd64", Type: Weekly, DisplayName: "Weekly 2021_22 [amd64]", Version: [3]int{2021, 22, 0}, Arch: "amd64"},
		},
		{
			name: "experimental wrapping a weekly",
			tag:  "exp_w_2021_22",
			want: Tag{Tag: "exp_w_2021_22", Type: Experimental, DisplayName: "Experimental Weekly 2021_22", Version: [3]int{2021, 22, 0}},
		},
		{
			name: "experimental wrapping an unknown",
			tag:  "exp_random",
			want: Tag{Tag: "exp_random", Type: Experimental, DisplayName: "Experimental random"},
		},
		{
			name: "unknown recommended",
			tag:  "recommended",
			want: Tag{Tag: "recommended", Type: Unknown, DisplayName: "recommended"},
		},
		// Grammar.
		{
			name: "empty means latest",
			tag:  "",
			want: Tag{Tag: "latest", Type: Unknown, DisplayName: "latest"},
		},
		{
			name: "mixed case is unknown",
			tag:  "MiXeD_CaSe",
			want: Tag{Tag: "MiXeD_CaSe", Type: Unknown, DisplayName: "MiXeD_CaSe"},
		},
		{
			name: "candidate is tried before release",
			tag:  "r23_0_0_rc12_c0020.001",
			want: Tag{Tag: "r23_0_0_rc12_c0020.001", Type: ReleaseCandidate, DisplayName: "Release Candidate r23.0.0-rc12 (SAL Cycle 0020, Build 001)",
				Version: [3]int{23, 0, 0}, RC: 12, Cycle: "0020", CycleBuild: "001"},
		},
		{
			name: "obsolete release",
			tag:  "r170",
			want: Tag{Tag: "r170", Type: Release, DisplayName: "Release r17.0.0", Version: [3]int{17, 0, 0}},
		},
		{
			name: "obsolete release takes exactly three digits",
			tag:  "r1700",
			want: Tag{Tag: "r1700", Type: Unknown, DisplayName: "r1700"},
		},
		{
			name: "obsolete release takes no suffix",
			tag:  "r170_foo",
			want: Tag{Tag: "r170_foo", Type: Unknown, DisplayName: "r170_foo"},
		},
		{
			name: "release numbers are shown as numbers",
			tag:  "r21_00_01",
			want: Tag{Tag: "r21_00_01", Type: Release, DisplayName: "Release r21.0.1", Version: [3]int{21, 0, 1}},
		},
		{
			name: "all suffixes",
			tag:  "w_2021_22_c0020.001_rsp19_foo_bar-arm64",
			want: Tag{Tag: "w_2021_22_c0020.001_rsp19_foo_bar-arm64", Type: Weekly,
				DisplayName: "Weekly 2021_22 (SAL Cycle 0020, Build 001) (RSP Build 19) [foo_bar] [arm64]",
				Version:     [3]int{2021, 22, 0}, Cycle: "0020", CycleBuild: "001", RSPBuild: "19", Rest: "foo_bar", Arch: "arm64"},
		},
		{
			name: "rsp and arch on a daily",
			tag:  "d_2021_05_27_rsp7-amd64",
			want: Tag{Tag: "d_2021_05_27_rsp7-amd64", Type: Daily, DisplayName: "Daily 2021_05_27 (RSP Build 7) [amd64]",
				Version: [3]int{2021, 5, 27}, RSPBuild: "7", Arch: "amd64"},
		},
		{
			name: "rest containing a dash before the arch",
			tag:  "r22_0_1_foo-bar-amd64",
			want: Tag{Tag: "r22_0_1_foo-bar-amd64", Type: Release, DisplayName: "Release r22.0.1 [foo-bar] [amd64]",
				Version: [3]int{22, 0, 1}, Rest: "foo-bar", Arch: "amd64"},
		},
		{
			name: "csal cycle form",
			tag:  "d_2021_06_15_csal0020.005",
			want: Tag{Tag: "d_2021_06_15_csal0020.005", Type: Daily, DisplayName: "Daily 2021_06_15 (SAL Cycle 0020, Build 005)",
				Version: [3]int{2021, 6, 15}, Cycle: "0020", CycleBuild: "005"},
		},
		{
			name: "suffixes out of order are rest",
			tag:  "w_2021_22_rsp19_c0020.001",
			want: Tag{Tag: "w_2021_22_rsp19_c0020.001", Type: Weekly, DisplayName: "Weekly 2021_22 (RSP Build 19) [c0020.001]",
				Version: [3]int{2021, 22, 0}, RSPBuild: "19", Rest: "c0020.001"},
		},
		{
			name: "rsp without digits is rest",
			tag:  "w_2021_22_rspx",
			want: Tag{Tag: "w_2021_22_rspx", Type: Weekly, DisplayName: "Weekly 2021_22 [rspx]", Version: [3]int{2021, 22, 0}, Rest: "rspx"},
		},
		{
			name: "empty rest is unknown",
			tag:  "w_2021_22_",
			want: Tag{Tag: "w_2021_22_", Type: Unknown, DisplayName: "w_2021_22_"},
		},
		{
			name: "unknown with trailing cycle",
			tag:  "recommended_c0027",
			want: Tag{Tag: "recommended_c0027", Type: Unknown, DisplayName: "recommended_c0027", Cycle: "0027"},
		},
		{
			name: "unknown with cycle and arch",
			tag:  "latest_c0027-amd64",
			want: Tag{Tag: "latest_c0027-amd64", Type: Unknown, DisplayName: "latest_c0027-amd64", Cycle: "0027", Arch: "amd64"},
		},
		{
			name: "experimental wrapping everything",
			tag:  "exp_w_2021_22_c0020.001_rsp19_foo-amd64",
			want: Tag{Tag: "exp_w_2021_22_c0020.001_rsp19_foo-amd64", Type: Experimental,
				DisplayName: "Experimental Weekly 2021_22 (SAL Cycle 0020, Build 001) (RSP Build 19) [foo] [amd64]",
				Version:     [3]int{2021, 22, 0}, Cycle: "0020", CycleBuild: "001", RSPBuild: "19", Rest: "foo", Arch: "amd64"},
		},
		{
			name: "experimental wrapping an unknown shows it as written",
			tag:  "exp_random_c0027-amd64",
			want: Tag{Tag: "exp_random_c0027-amd64", Type: Experimental, DisplayName: "Experimental random_c0027-amd64", Cycle: "0027", Arch: "amd64"},
		},
		{
			name: "experimental wrapping a candidate",
			tag:  "exp_r22_0_0_rc1",
			want: Tag{Tag: "exp_r22_0_0_rc1", Type: Experimental, DisplayName: "Experimental Release Candidate r22.0.0-rc1", Version: [3]int{22, 0, 0}, RC: 1},
		},
		{
			name: "nested experimental",
			tag:  "exp_exp_w_2021_22",
			want: Tag{Tag: "exp_exp_w_2021_22", Type: Experimental, DisplayName: "Experimental Experimental Weekly 2021_22", Version: [3]int{2021, 22, 0}},
		},
		{
			name: "experimental of a bare prefix",
			tag:  "exp_exp_",
			want: Tag{Tag: "exp_exp_", Type: Experimental, DisplayName: "Experimental exp_"},
		},
		{
			name: "experimental without rest is unknown",
			tag:  "exp_",
			want: Tag{Tag: "exp_", Type: Unknown, DisplayName: "exp_"},
		},
		{
			name: "huge numbers saturate",
			tag:  "w_99999999999999999999999_1",
			want: Tag{Tag: "w_99999999999999999999999_1", Type: Weekly, DisplayName: "Weekly 99999999999999999999999_1", Version: [3]int{math.MaxInt, 1, 0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, Parse(tt.tag))
		})
	}
}

func TestParseAlias(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		tag       string
		wantName  string
		wantCycle string
	}{
		{name: "recommended", tag: "recommended", wantName: "Recommended"},
		{name: "underscores become spaces", tag: "latest_weekly", wantName: "Latest Weekly"},
		{name: "title case like python", tag: "LATEST_dAILY2x", wantName: "Latest Daily2X"},
		{name: "trailing cycle", tag: "recommended_c0027", wantName: "Recommended (SAL Cycle 0027)", wantCycle: "0027"},
		{name: "only the last cycle", tag: "latest_c1_c0027", wantName: "Latest C1 (SAL Cycle 0027)", wantCycle: "0027"},
		{name: "empty is latest", tag: "", wantName: "Latest"},
		{name: "known form declared alias", tag: "w_2021_22", wantName: "W 2021 22"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ParseAlias(tt.tag)
			require.Equal(t, Alias, got.Type)
			require.Equal(t, tt.wantName, got.DisplayName)
			require.Equal(t, tt.wantCycle, got.Cycle)
		})
	}
}

func TestTypeString(t *testing.T) {
	t.Parallel()
	want := map[Type]string{
		Unknown: "Unknown", Release: "Release", ReleaseCandidate: "Release Candidate", Weekly: "Weekly",
		Daily: "Daily", Experimental: "Experimental", Alias: "Alias", Type(99): "Unknown",
	}
	for typ, s := range want {
		require.Equal(t, s, typ.String())
	}
}

func TestCompare(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		older, newer string
	}{
		{name: "weeks are numeric", older: "w_2021_9", newer: "w_2021_10"},
		{name: "years before weeks", older: "w_2020_52", newer: "w_2021_1"},
		{name: "days are numeric", older: "d_2021_5_9", newer: "d_2021_05_10"},
		{name: "months before days", older: "d_2021_05_31", newer: "d_2021_06_01"},
		{name: "releases by version", older: "r21_0_9", newer: "r21_0_10"},
		{name: "obsolete release is older", older: "r170", newer: "r21_0_1"},
		{name: "candidate older than its release", older: "r23_0_0_rc2", newer: "r23_0_0"},
		{name: "candidate newer than the previous release", older: "r22_0_1", newer: "r23_0_0_rc1"},
		{name: "candidates are numeric", older: "r23_0_0_rc9", newer: "r23_0_0_rc10"},
		{name: "tie: no cycle first", older: "w_2021_22", newer: "w_2021_22_c0020.001"},
		{name: "tie: cycle", older: "w_2021_22_c0020.009", newer: "w_2021_22_c21.001"},
		{name: "tie: cycle build", older: "w_2021_22_c0020.9", newer: "w_2021_22_c0020.010"},
		{name: "tie: rsp build", older: "w_2021_22_rsp9", newer: "w_2021_22_rsp10"},
		{name: "tie: tag string", older: "w_2021_22-amd64", newer: "w_2021_22_foo"},
		{name: "tie: leading zeros", older: "w_2021_022", newer: "w_2021_22"},
		{name: "unknown by tag", older: "latest", newer: "recommended"},
		{name: "experimental by wrapped version", older: "exp_w_2021_9", newer: "exp_w_2021_10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, b := Parse(tt.older), Parse(tt.newer)
			require.Negative(t, Compare(a, b))
			require.Positive(t, Compare(b, a))
			require.Zero(t, Compare(a, a))
		})
	}
}

// TestCompareTotal checks that Compare is a strict total order on a mixed set, since
// sorting with an inconsistent comparator silently misorders.
func TestCompareTotal(t *testing.T) {
	t.Parallel()
	var tags []Tag
	for _, s := range []string{
		"r21_0_1", "r22_0_0_rc1", "r22_0_0", "r170", "w_2021_9", "w_2021_10", "w_2021_10-amd64",
		"w_2021_10_c0020.001", "d_2021_05_27", "exp_w_2021_22", "exp_random", "recommended",
		"latest", "r22_0_0_rc1_c0020.001", "d_2021_5_27", "recommended_c0027",
	} {
		tags = append(tags, Parse(s))
	}
	tags = append(tags, ParseAlias("latest_weekly"))
	for _, a := range tags {
		for _, b := range tags {
			require.Equal(t, -Compare(b, a), Compare(a, b), "%s vs %s", a.Tag, b.Tag)
			require.Equal(t, a.Tag == b.Tag, Compare(a, b) == 0, "%s vs %s", a.Tag, b.Tag)
			for _, c := range tags {
				if Compare(a, b) < 0 && Compare(b, c) < 0 {
					require.Negative(t, Compare(a, c), "%s < %s < %s", a.Tag, b.Tag, c.Tag)
				}
			}
		}
	}
	require.True(t, slices.IsSortedFunc(sortedCopy(tags), Compare))
}

func sortedCopy(tags []Tag) []Tag {
	out := slices.Clone(tags)
	slices.SortFunc(out, Compare)
	return out
}

// FuzzParse checks that Parse is total and deterministic and always names the tag.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "r21_0_1", "r22_0_0_rc1", "r170", "w_2021_22_c0020.001_rsp19_foo-amd64", "d_2021_05_27",
		"exp_w_2021_22", "exp_random_c0027-amd64", "recommended_c0027", "w_2021_22_csal0020.001",
		"exp_exp_", "r99999999999999999999_0_0", "w_2021_22_\n-amd64",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a := Parse(s)
		require.Equal(t, a, Parse(s))
		require.NotEmpty(t, a.DisplayName)
		if s != "" {
			require.Equal(t, s, a.Tag)
		}
		require.Zero(t, Compare(a, a))
		al := ParseAlias(s)
		require.Equal(t, al, ParseAlias(s))
		require.NotEmpty(t, al.DisplayName)
	})
}
