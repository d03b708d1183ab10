package status

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cachemachine/cachemachine/image"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the current output")

const (
	gar   = "us-central1-docker.pkg.dev/rubin/sciplat/sciplat-lab"
	hub   = "registry.hub.docker.com/lsstsqre/sciplat-lab"
	dio   = "docker.io/lsstsqre/sciplat-lab"
	other = "docker.io/library/busybox"

	dA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	dB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	dC = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
	dD = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
)

func alive(name string, inv map[string]string) Node {
	return Node{Name: name, Alive: true, Inventory: inv}
}

func TestCompute(t *testing.T) {
	t.Parallel()
	weekly := Image{ImageURL: gar + ":w_2021_22", ImageHash: dA, Name: "Weekly 2021_22"}
	recommended := Image{ImageURL: gar + ":recommended", ImageHash: dA, Name: "Recommended (Weekly 2021_22)"}
	daily := Image{ImageURL: gar + ":d_2021_06_01", ImageHash: dB, Name: "Daily 2021_06_01"}

	tests := []struct {
		name          string
		in            Input
		wantCommon    []CommonImage
		wantAvailable []Image
		wantToCache   []Image
		wantDesired   []Image
	}{
		{
			name: "common across nodes with the same digest",
			in: Input{
				Desired: imgs([]Image{recommended, weekly, daily}),
				Nodes: []Node{
					alive("n1", map[string]string{gar + ":w_2021_22": dA, gar + ":recommended": dA, gar + ":d_2021_06_01": dB}),
					alive("n2", map[string]string{gar + ":w_2021_22": dA, gar + ":recommended": dA}),
				},
			},
			wantCommon: []CommonImage{
				{ImageURL: gar + ":recommended", ImageHash: dA, Tags: []string{"w_2021_22"}},
				{ImageURL: gar + ":w_2021_22", ImageHash: dA, Tags: []string{"recommended"}},
			},
			wantAvailable: []Image{recommended, weekly},
			wantToCache:   []Image{daily},
			wantDesired:   []Image{recommended, weekly, daily},
		},
		{
			name: "a node with another digest for the tag: not common",
			in: Input{
				Desired: imgs([]Image{weekly, daily}),
				Nodes: []Node{
					alive("n1", map[string]string{gar + ":w_2021_22": dA, gar + ":d_2021_06_01": dB}),
					alive("n2", map[string]string{gar + ":w_2021_22": dA, gar + ":d_2021_06_01": dC}),
				},
			},
			wantCommon:    []CommonImage{{ImageURL: gar + ":w_2021_22", ImageHash: dA, Tags: []string{}}},
			wantAvailable: []Image{weekly},
			wantToCache:   []Image{daily},
			wantDesired:   []Image{weekly, daily},
		},
		{
			name: "dead node ignored",
			in: Input{
				Desired: imgs([]Image{weekly}),
				Nodes: []Node{
					alive("n1", map[string]string{gar + ":w_2021_22": dA}),
					{Name: "n2", Alive: false},
					alive("n3", map[string]string{gar + ":w_2021_22": dA}),
				},
			},
			wantCommon:    []CommonImage{{ImageURL: gar + ":w_2021_22", ImageHash: dA, Tags: []string{}}},
			wantAvailable: []Image{weekly},
			wantToCache:   []Image{},
			wantDesired:   []Image{weekly},
		},
		{
			name: "alive node without inventory: nothing is common",
			in: Input{
				Desired: imgs([]Image{weekly}),
				Nodes: []Node{
					alive("n1", map[string]string{gar + ":w_2021_22": dA}),
					alive("n2", nil),
				},
			},
			wantCommon:    []CommonImage{},
			wantAvailable: []Image{},
			wantToCache:   []Image{weekly},
			wantDesired:   []Image{weekly},
		},
		{
			name: "tags: other common tags of the digest in the same repository, sorted",
			in: Input{
				Nodes: []Node{
					alive("n1", map[string]string{
						gar + ":w_2021_22": dA, gar + ":recommended": dA, gar + ":latest_weekly": dA,
						gar + ":only_here":     dA, // not on n2: not common, not a tag of the others
						hub + ":w_2021_22":     dA, // same digest, other repository
						"localhost:5000/lab:w": dB,
					}),
					alive("n2", map[string]string{
						gar + ":w_2021_22": dA, gar + ":recommended": dA, gar + ":latest_weekly": dA,
						hub + ":w_2021_22": dA, "localhost:5000/lab:w": dB,
					}),
				},
			},
			wantCommon: []CommonImage{
				{ImageURL: "localhost:5000/lab:w", ImageHash: dB, Tags: []string{}},
				{ImageURL: hub + ":w_2021_22", ImageHash: dA, Tags: []string{}},
				{ImageURL: gar + ":latest_weekly", ImageHash: dA, Tags: []string{"recommended", "w_2021_22"}},
				{ImageURL: gar + ":recommended", ImageHash: dA, Tags: []string{"latest_weekly", "w_2021_22"}},
				{ImageURL: gar + ":w_2021_22", ImageHash: dA, Tags: []string{"latest_weekly", "recommended"}},
			},
			wantAvailable: []Image{},
			wantToCache:   []Image{},
			wantDesired:   []Image{},
		},
		{
			// The Python service's tests name Docker Hub images without a registry; the node
			// records them as docker.io/…: references are normalised where they enter.
			name: "a short Docker Hub name without a digest is available under its normal name",
			in: Input{
				Desired: []image.Image{{Ref: image.MustParseRef("lsstsqre/sciplat-lab:recommended"), Name: "Recommended"}},
				Nodes:   []Node{alive("n1", map[string]string{"docker.io/lsstsqre/sciplat-lab:recommended": dA})},
			},
			wantCommon:    []CommonImage{{ImageURL: "docker.io/lsstsqre/sciplat-lab:recommended", ImageHash: dA, Tags: []string{}}},
			wantAvailable: []Image{{ImageURL: "docker.io/lsstsqre/sciplat-lab:recommended", Name: "Recommended"}},
			wantToCache:   []Image{},
			wantDesired:   []Image{{ImageURL: "docker.io/lsstsqre/sciplat-lab:recommended", Name: "Recommended"}},
		},
		{
			name: "available by digest although the names differ",
			in: Input{
				Desired: imgs([]Image{
					{ImageURL: hub + ":recommended", ImageHash: dA, Name: "Recommended"},
					{ImageURL: hub + ":w_2021_22", ImageHash: dB, Name: "Weekly 2021_22"}, // name matches, digest does not
				}),
				Nodes: []Node{
					alive("n1", map[string]string{dio + ":w_2021_21": dA, dio + ":w_2021_22": dC, hub + ":w_2021_22": dC}),
					alive("n2", map[string]string{dio + ":w_2021_21": dA, dio + ":w_2021_22": dC, hub + ":w_2021_22": dC}),
				},
			},
			wantCommon: []CommonImage{
				{ImageURL: dio + ":w_2021_21", ImageHash: dA, Tags: []string{}},
				{ImageURL: dio + ":w_2021_22", ImageHash: dC, Tags: []string{}},
				{ImageURL: hub + ":w_2021_22", ImageHash: dC, Tags: []string{}},
			},
			wantAvailable: []Image{{ImageURL: hub + ":recommended", ImageHash: dA, Name: "Recommended"}},
			wantToCache:   []Image{{ImageURL: hub + ":w_2021_22", ImageHash: dB, Name: "Weekly 2021_22"}},
			wantDesired: []Image{
				{ImageURL: hub + ":recommended", ImageHash: dA, Name: "Recommended"},
				{ImageURL: hub + ":w_2021_22", ImageHash: dB, Name: "Weekly 2021_22"}, // name matches, digest does not
			},
		},
		{
			name: "empty digest matches by image_url",
			in: Input{
				Desired: imgs([]Image{
					{ImageURL: other + ":1.36", Name: "busybox 1.36"},
					{ImageURL: other + ":1.37", Name: "busybox 1.37"},
				}),
				Nodes: []Node{
					alive("n1", map[string]string{other + ":1.36": dC, other + ":1.37": dB}),
					alive("n2", map[string]string{other + ":1.36": dC}),
				},
			},
			wantCommon:    []CommonImage{{ImageURL: other + ":1.36", ImageHash: dC, Tags: []string{}}},
			wantAvailable: []Image{{ImageURL: other + ":1.36", Name: "busybox 1.36"}},
			wantToCache:   []Image{{ImageURL: other + ":1.37", Name: "busybox 1.37"}},
			wantDesired: []Image{
				{ImageURL: other + ":1.36", Name: "busybox 1.36"},
				{ImageURL: other + ":1.37", Name: "busybox 1.37"},
			},
		},
		{
			name: "digest keys and entries without digest are ignored",
			in: Input{
				Nodes: []Node{
					alive("n1", map[string]string{other + "@" + dA: dA, other + ":untagged": "", other + ":1": dA}),
					alive("n2", map[string]string{other + "@" + dA: dA, other + ":untagged": "", other + ":1": dA}),
				},
			},
			wantCommon:    []CommonImage{{ImageURL: other + ":1", ImageHash: dA, Tags: []string{}}},
			wantAvailable: []Image{},
			wantToCache:   []Image{},
			wantDesired:   []Image{},
		},
		{
			name: "a warming node does not count",
			in: Input{
				Desired: imgs([]Image{weekly, daily}),
				Nodes: []Node{
					alive("n1", map[string]string{gar + ":w_2021_22": dA, gar + ":d_2021_06_01": dB}),
					{Name: "n2", Alive: true, Warming: true, Inventory: map[string]string{gar + ":w_2021_22": dA}},
				},
			},
			wantCommon: []CommonImage{
				{ImageURL: gar + ":d_2021_06_01", ImageHash: dB, Tags: []string{}},
				{ImageURL: gar + ":w_2021_22", ImageHash: dA, Tags: []string{}},
			},
			wantAvailable: []Image{weekly, daily},
			wantToCache:   []Image{},
			wantDesired:   []Image{weekly, daily},
		},
		{
			name: "every alive node warming: all of them count (a new pool)",
			in: Input{
				Desired: imgs([]Image{weekly, daily}),
				Nodes: []Node{
					{Name: "n1", Alive: true, Warming: true, Inventory: map[string]string{gar + ":w_2021_22": dA, gar + ":d_2021_06_01": dB}},
					{Name: "n2", Alive: true, Warming: true, Inventory: map[string]string{gar + ":w_2021_22": dA}},
					{Name: "n3", Alive: false, Inventory: map[string]string{}},
				},
			},
			wantCommon:    []CommonImage{{ImageURL: gar + ":w_2021_22", ImageHash: dA, Tags: []string{}}},
			wantAvailable: []Image{weekly},
			wantToCache:   []Image{daily},
			wantDesired:   []Image{weekly, daily},
		},
		{
			name:          "no nodes",
			in:            Input{Desired: imgs([]Image{weekly, daily})},
			wantCommon:    []CommonImage{},
			wantAvailable: []Image{},
			wantToCache:   []Image{weekly, daily},
			wantDesired:   []Image{weekly, daily},
		},
		{
			name: "only dead nodes",
			in: Input{
				Desired: imgs([]Image{weekly}),
				Nodes:   []Node{{Name: "n1", Inventory: map[string]string{gar + ":w_2021_22": dA}}},
			},
			wantCommon:    []CommonImage{},
			wantAvailable: []Image{},
			wantToCache:   []Image{weekly},
			wantDesired:   []Image{weekly},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Compute(tt.in)
			require.Equal(t, tt.wantCommon, got.CommonCache, "common_cache")
			require.Equal(t, tt.wantAvailable, got.AvailableImages, "available_images")
			require.Equal(t, tt.wantToCache, got.ImagesToCache, "images_to_cache")
			require.Equal(t, tt.wantDesired, got.DesiredImages, "desired_images")
		})
	}
}

func TestComputeDoesNotAliasInput(t *testing.T) {
	t.Parallel()
	in := Input{
		Labels:  map[string]string{"pool": "lab"},
		All:     imgs([]Image{{ImageURL: gar + ":w_2021_22", ImageHash: dA, Name: "w_2021_22"}}),
		Desired: imgs([]Image{{ImageURL: gar + ":w_2021_22", ImageHash: dA, Name: "Weekly 2021_22"}}),
	}
	d := Compute(in)
	d.Labels["pool"] = "x"
	d.AllImages[0].Name = "x"
	d.DesiredImages[0].Name = "x"
	require.Equal(t, "lab", in.Labels["pool"])
	require.Equal(t, "w_2021_22", in.All[0].Name)
	require.Equal(t, "Weekly 2021_22", in.Desired[0].Name)
}

func TestEmptyListsEncodeAsArrays(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(Compute(Input{Name: "jupyter"}))
	require.NoError(t, err)
	require.JSONEq(t, `{"name":"jupyter","labels":{},"common_cache":[],"all_images":[],
		"desired_images":[],"available_images":[],"images_to_cache":[]}`, string(b))

	b, err = json.Marshal(NodesView(Input{Leader: "n1", Nodes: []Node{{Name: "n1", Alive: true}}}))
	require.NoError(t, err)
	require.JSONEq(t, `{"leader":"n1","nodes":[{"name":"n1","alive":true,"cached":[],"missing":[],
		"pulling":[],"held":[],"failed":[],"disk":{"used_bytes":0,"capacity_bytes":0},"version":0,
		"pinned":[],"pinning":{"status":"","budget_bytes":0,"pinned_bytes":0,"over_budget":[]},"progress":[],"updated":null,
		"warming":false}]}`, string(b))
}

func TestNodesView(t *testing.T) {
	t.Parallel()
	retry := time.Date(2024, 5, 1, 12, 0, 30, 0, time.FixedZone("CEST", 2*3600))
	eta := 30.72
	in := Input{
		Leader: "a-node",
		Nodes: []Node{
			{
				Name: "b-node", Alive: true, Version: 7,
				Inventory: map[string]string{gar + ":w_2021_22": dA},
				Cached:    []string{gar + ":w_2021_22"},
				Missing:   []string{gar + ":w_2021_21", gar + ":d_2021_06_01"},
				Pulling:   []string{gar + ":w_2021_21"},
				Held:      []Held{{ImageURL: gar + ":d_2021_06_01", Reason: "disk: 9% free would remain, minimum 15%"}},
				Failed:    []Failed{{ImageURL: gar + ":w_2021_20", Error: "pull: deadline exceeded", Attempts: 3, NextRetry: retry}},
				Disk:      Disk{UsedBytes: 60 << 30, CapacityBytes: 100 << 30},
				Pinned:    []string{gar + ":w_2021_22"},
				Pinning:   Pinning{Status: "honoured", Detail: "containerd 2.1.4 reports the pins", BudgetBytes: 50 << 30, PinnedBytes: 4 << 30, OverBudget: []string{}},
				Progress:  []Progress{{ImageURL: gar + ":w_2021_21", Phase: "downloading", BytesDone: 1 << 30, BytesTotal: 4 << 30, BytesPerSecond: 100 << 20, ETASeconds: &eta, MeasuredAt: &retry}},
				Updated:   retry,
			},
			{Name: "a-node", Alive: false, Version: 3},
			{
				Name: "c-node", Alive: true, Version: 1,
				Missing: []string{gar + ":w_2021_22"}, Pulling: []string{gar + ":w_2021_22"},
				Warming: true, WarmingUntil: retry, WarmingMissing: []string{gar + ":w_2021_22"},
			},
		},
	}
	v := NodesView(in)
	require.Equal(t, "a-node", v.Leader)
	require.Len(t, v.Nodes, 3)
	require.Equal(t, "a-node", v.Nodes[0].Name, "sorted by name")
	require.Equal(t, "b-node", v.Nodes[1].Name)

	b, err := json.Marshal(v)
	require.NoError(t, err)
	require.JSONEq(t, `{"leader":"a-node","nodes":[
		{"name":"a-node","alive":false,"cached":[],"missing":[],"pulling":[],"held":[],"failed":[],
		 "disk":{"used_bytes":0,"capacity_bytes":0},"version":3,
		 "pinned":[],"pinning":{"status":"","budget_bytes":0,"pinned_bytes":0,"over_budget":[]},"progress":[],"updated":null,
		 "warming":false},
		{"name":"b-node","alive":true,
		 "cached":["`+gar+`:w_2021_22"],
		 "missing":["`+gar+`:w_2021_21","`+gar+`:d_2021_06_01"],
		 "pulling":["`+gar+`:w_2021_21"],
		 "held":[{"image_url":"`+gar+`:d_2021_06_01","reason":"disk: 9% free would remain, minimum 15%"}],
		 "failed":[{"image_url":"`+gar+`:w_2021_20","error":"pull: deadline exceeded","attempts":3,
		            "next_retry":"2024-05-01T10:00:30Z"}],
		 "disk":{"used_bytes":64424509440,"capacity_bytes":107374182400},"version":7,
		 "pinned":["`+gar+`:w_2021_22"],
		 "pinning":{"status":"honoured","detail":"containerd 2.1.4 reports the pins","budget_bytes":53687091200,"pinned_bytes":4294967296,"over_budget":[]},
		 "progress":[{"image_url":"`+gar+`:w_2021_21","phase":"downloading","bytes_done":1073741824,"bytes_total":4294967296,
		              "bytes_per_second":104857600,"eta_seconds":30.72,"measured_at":"2024-05-01T12:00:30+02:00"}],
		 "updated":"2024-05-01T10:00:30Z","warming":false},
		{"name":"c-node","alive":true,"cached":[],"missing":["`+gar+`:w_2021_22"],"pulling":["`+gar+`:w_2021_22"],
		 "held":[],"failed":[],"disk":{"used_bytes":0,"capacity_bytes":0},"version":1,
		 "pinned":[],"pinning":{"status":"","budget_bytes":0,"pinned_bytes":0,"over_budget":[]},"progress":[],"updated":null,
		 "warming":true,"warming_until":"2024-05-01T10:00:30Z","warming_missing":["`+gar+`:w_2021_22"]}]}`, string(b))

	b, err = json.Marshal(Failed{ImageURL: "x", Error: "e", Attempts: 1})
	require.NoError(t, err)
	require.JSONEq(t, `{"image_url":"x","error":"e","attempts":1,"next_retry":null}`, string(b))
}

// representative is a pool of three nodes, one down, two sources, one of them failing.
func representative() Input {
	listed := time.Date(2021, 6, 1, 12, 0, 0, 0, time.UTC)
	return Input{
		Name:   "jupyter",
		Labels: map[string]string{"jupyterlab": "ok"},
		Leader: "gke-pool-1-a",
		All: imgs([]Image{
			{ImageURL: gar + ":recommended", ImageHash: dA, Name: "recommended"},
			{ImageURL: gar + ":w_2021_22", ImageHash: dA, Name: "w_2021_22"},
			{ImageURL: gar + ":w_2021_21", ImageHash: dB, Name: "w_2021_21"},
			{ImageURL: gar + ":d_2021_06_01", ImageHash: dC, Name: "d_2021_06_01"},
		}),
		Desired: imgs([]Image{
			{ImageURL: gar + ":recommended", ImageHash: dA, Name: "Recommended (Weekly 2021_22)"},
			{ImageURL: gar + ":w_2021_22", ImageHash: dA, Name: "Weekly 2021_22"},
			{ImageURL: gar + ":w_2021_21", ImageHash: dB, Name: "Weekly 2021_21"},
			{ImageURL: gar + ":d_2021_06_01", ImageHash: dC, Name: "Daily 2021_06_01"},
			{ImageURL: other + ":1.36", Name: "busybox"},
		}),
		Nodes: []Node{
			{
				Name: "gke-pool-1-b", Alive: true, Version: 1622548800000000012,
				Inventory: map[string]string{
					gar + ":recommended": dA, gar + ":w_2021_22": dA, gar + ":w_2021_21": dB,
					dio + ":w_2021_22": dA, other + ":1.36": dD,
				},
				Cached:  []string{gar + ":recommended", gar + ":w_2021_22", gar + ":w_2021_21", other + ":1.36"},
				Missing: []string{gar + ":d_2021_06_01"},
				Pulling: []string{gar + ":d_2021_06_01"},
				Disk:    Disk{UsedBytes: 40 << 30, CapacityBytes: 100 << 30},
			},
			{
				Name: "gke-pool-1-a", Alive: true, Version: 1622548800000000007,
				Inventory: map[string]string{
					gar + ":recommended": dA, gar + ":w_2021_22": dA, dio + ":w_2021_22": dA, other + ":1.36": dD,
				},
				Cached:  []string{gar + ":recommended", gar + ":w_2021_22", other + ":1.36"},
				Missing: []string{gar + ":w_2021_21", gar + ":d_2021_06_01"},
				Held:    []Held{{ImageURL: gar + ":d_2021_06_01", Reason: "disk: would leave 12% free, minimum 15%"}},
				Failed: []Failed{{ImageURL: gar + ":w_2021_21", Error: "pull: rpc error: code = DeadlineExceeded",
					Attempts: 2, NextRetry: listed.Add(time.Minute)}},
				Disk: Disk{UsedBytes: 86 << 30, CapacityBytes: 100 << 30},
			},
			{Name: "gke-pool-1-c", Alive: false, Version: 1622548800000000001},
		},
		Sources: []SourceStatus{
			{Name: "RubinRepoGar us-central1-docker.pkg.dev/rubin/sciplat/sciplat-lab", ListedAt: listed, Images: 4},
			{Name: "SimpleRepoMan", ListedAt: listed.Add(-time.Hour), Error: "listing: 503 Service Unavailable", Images: 1},
		},
		DesiredVersion: 42,
	}
}

func TestDumpGolden(t *testing.T) {
	t.Parallel()
	got, err := json.MarshalIndent(Compute(representative()), "", "  ")
	require.NoError(t, err)
	got = append(got, '\n')
	path := filepath.Join("testdata", "dump.golden.json")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create it")

	var gotFields, wantFields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(got, &gotFields))
	require.NoError(t, json.Unmarshal(want, &wantFields))
	keys := func(m map[string]json.RawMessage) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		return ks
	}
	require.Equal(t, []string{"all_images", "available_images", "common_cache", "desired_images",
		"images_to_cache", "labels", "name"}, keys(gotFields), "the dump's fields are the Python service's")
	require.Equal(t, keys(wantFields), keys(gotFields))
	for _, k := range keys(wantFields) {
		require.JSONEq(t, string(wantFields[k]), string(gotFields[k]), "field %s (run go test -update after an intended change)", k)
	}
}

// imgs turns document entries into the images an Input holds.
func imgs(entries []Image) []image.Image {
	out := make([]image.Image, len(entries))
	for i, e := range entries {
		out[i] = image.Image{Ref: image.MustParseRef(e.ImageURL), Digest: e.ImageHash, Name: e.Name}
	}
	return out
}
