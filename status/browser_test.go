package status

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/stretchr/testify/require"
)

// chromiumFlags start Debian's Chromium headless on a machine with no network but loopback.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--hide-scrollbars", "--window-size=1500,1100",
}

// dashboard is a pool mid-rollout: pulls at several stages, pins honoured on two nodes and
// not on the third (containerd 1.6.20), a held and a failed pull, a node down, a new node
// warming.
func dashboard(now time.Time) Input {
	in := representative()
	in.DesiredVersion = uint64(now.Add(-7 * time.Minute).UnixNano())
	eta := func(s float64) *float64 { return &s }
	at := now.Add(-2 * time.Second)
	b, a := &in.Nodes[0], &in.Nodes[1]
	b.Updated, a.Updated = now.Add(-2*time.Second), now.Add(-14*time.Second)
	b.Pinned = []string{gar + ":recommended", gar + ":w_2021_22", gar + ":w_2021_21"}
	b.Pinning = Pinning{Status: "honoured", Detail: "containerd 2.1.4 reports the pins: the kubelet's image GC skips them", BudgetBytes: 50 << 30, PinnedBytes: 8 << 30}
	b.Progress = []Progress{{ImageURL: gar + ":d_2021_06_01", Phase: "downloading", BytesDone: 2900 << 20, BytesTotal: 4 << 30, BytesPerSecond: 95 << 20, ETASeconds: eta(12.6), MeasuredAt: &at}}
	a.Pinning = Pinning{Status: "unsupported", Detail: "containerd 1.6.20 does not report pins to the kubelet (needs containerd 1.6.25, 1.7.10 or 2.x): images removed by image GC are pulled again"}
	c := Node{
		Name: "gke-pool-1-d", Alive: true, Version: 1622548800000000030, Updated: now.Add(-1 * time.Second),
		Inventory: map[string]string{gar + ":recommended": dA, gar + ":w_2021_22": dA},
		Cached:    []string{gar + ":recommended", gar + ":w_2021_22"},
		Missing:   []string{gar + ":w_2021_21", gar + ":d_2021_06_01", other + ":1.36"},
		Pulling:   []string{gar + ":w_2021_21", other + ":1.36"},
		Pinned:    []string{gar + ":recommended", gar + ":w_2021_22"},
		Pinning:   Pinning{Status: "honoured", BudgetBytes: 50 << 30, PinnedBytes: 4 << 30},
		Progress: []Progress{
			{ImageURL: gar + ":w_2021_21", Phase: "unpacking", BytesDone: 4 << 30, BytesTotal: 4 << 30, MeasuredAt: &at},
			{ImageURL: other + ":1.36", Phase: "downloading", BytesDone: 300 << 20, BytesTotal: 2 << 30, BytesPerSecond: 60 << 20, ETASeconds: eta(29), MeasuredAt: &at},
		},
		Disk: Disk{UsedBytes: 31 << 30, CapacityBytes: 100 << 30},
		// A node that joined a few minutes ago: it does not count for the common cache yet.
		Warming: true, WarmingUntil: now.Add(8 * time.Minute),
		WarmingMissing: []string{gar + ":w_2021_21", gar + ":d_2021_06_01", other + ":1.36"},
	}
	in.Nodes = append(in.Nodes, c)
	return in
}

// TestStatusPageInChromium renders the status page in headless Chromium, checks the DOM it
// built (progress bars, relative times, no raw version counters) and keeps a screenshot
// (in $CM_SCREENSHOT_DIR when set) for a person to look at.
func TestStatusPageInChromium(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		lab.SkipOrFail(t, "chromium is missing (make test installs it with scripts/install-deps.sh; or apt-get install -y chromium)")
	}
	now := time.Now()
	in := dashboard(now)
	srv := httptest.NewServer(NewHandler(fakeBackend{in: in, leader: in.Leader, self: true}))
	t.Cleanup(srv.Close)
	url := srv.URL + "/cachemachine/jupyter"

	dir := os.Getenv("CM_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	shot := filepath.Join(dir, "status-page.png")
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		all := append(append(append([]string{}, chromiumFlags...), "--user-data-dir="+t.TempDir()), args...)
		out, err := exec.CommandContext(ctx, bin, all...).Output()
		require.NoError(t, err, "chromium %v", args)
		return string(out)
	}
	dom := run("--dump-dom", url)
	for _, want := range []string{
		`role="progressbar" aria-valuenow="70"`,  // 2900 MiB of 4 GiB
		`role="progressbar" aria-valuenow="100"`, // unpacking
		"95.0 MiB/s",
		"7 min ago", // the desired list
		"8.0 GiB pinned of 50.0 GiB", "not honoured",
		`<span class="pin"></span>`,
		`http-equiv="refresh"`,
		`class="badge warm"`, "warming, 3 missing", "cached on every alive node that is not warming",
	} {
		require.Contains(t, dom, want)
	}
	require.Regexp(t, `about \d+ s left`, dom)
	require.Regexp(t, `updated 1\d s ago`, dom) // the leader learnt gke-pool-1-a's state 14 s ago
	require.NotContains(t, dom, ">1622548800000000012<", "no raw state version counters on the page")
	run("--screenshot="+shot, url)
	fi, err := os.Stat(shot)
	require.NoError(t, err)
	require.Greater(t, fi.Size(), int64(20<<10), "a rendered page, not a blank one")
	t.Logf("screenshot: %s", shot)
	if strings.HasPrefix(dir, os.TempDir()) && os.Getenv("CM_SCREENSHOT_DIR") == "" {
		t.Log("set CM_SCREENSHOT_DIR to keep it")
	}
}
