package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/cri/critest"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
)

const (
	digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	digestB = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// startAgent runs a in the current synctest bubble and stops it when the test ends.
func startAgent(t *testing.T, a *Agent) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	synctest.Wait()
}

func TestFailedPullBacksOffAndRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:w_2024_01"
		a, err := New(Config{BackoffInitial: 10 * time.Second, BackoffMax: 40 * time.Second, ResyncInterval: time.Second}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA}}})
		startAgent(t, a)

		st := a.State()
		require.Empty(t, st.Cached, "a failed pull is never reported as cached")
		require.Len(t, st.Failed, 1)
		f := st.Failed[0]
		require.Equal(t, 1, f.Attempts)
		require.Contains(t, f.Error, cri.ErrNotFound.Error())
		wait := time.Until(f.NextRetry)
		require.True(t, wait >= 5*time.Second && wait <= 10*time.Second, "first retry in %s, want 5s..10s", wait)

		time.Sleep(wait - time.Second)
		synctest.Wait()
		require.Equal(t, 1, pullCount(rt, ref), "no retry before the backoff ends")

		time.Sleep(2 * time.Second) // past NextRetry, and a resync tick
		synctest.Wait()
		require.Equal(t, 2, pullCount(rt, ref))
		st = a.State()
		require.Len(t, st.Failed, 1)
		require.Equal(t, 2, st.Failed[0].Attempts)
		wait = time.Until(st.Failed[0].NextRetry)
		require.True(t, wait >= 10*time.Second-time.Second && wait <= 20*time.Second, "second retry in %s, want 10s..20s", wait)

		rt.AddRemote(ref, digestA, 100)
		time.Sleep(21 * time.Second)
		synctest.Wait()
		st = a.State()
		require.Equal(t, map[string]string{ref: digestA}, st.Cached)
		require.Empty(t, st.Failed)
		require.Empty(t, st.Missing)
	})
}

func TestPullsRespectParallelLimitAndOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		rt.HoldPulls()
		var want []image.Image
		for i := range 5 {
			ref, digest := fmt.Sprintf("ghcr.io/lsst/lab:t%d", i), fmt.Sprintf("sha256:%064d", i)
			rt.AddRemote(ref, digest, 100)
			want = append(want, image.Image{Ref: image.MustParseRef(ref), Digest: digest})
		}
		a, err := New(Config{MaxParallelPulls: 2, ResyncInterval: time.Second}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: want})
		startAgent(t, a)

		st := a.State()
		require.Equal(t, []string{want[0].Ref.String(), want[1].Ref.String()}, refsOf(st.Pulling), "the first images of the list are pulled first")
		require.Equal(t, []string{want[2].Ref.String(), want[3].Ref.String(), want[4].Ref.String()}, st.Queued)
		time.Sleep(5 * time.Second) // passes while pulls hang start nothing more
		synctest.Wait()
		require.Len(t, a.State().Pulling, 2)

		rt.ReleasePulls()
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		st = a.State()
		require.Len(t, st.Cached, 5)
		require.Empty(t, st.Queued)
		for _, d := range want {
			require.Equal(t, 1, pullCount(rt, d.Ref.String()), d.Ref)
		}
	})
}

func TestPullDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		rt.HoldPulls() // a hung registry
		const ref = "ghcr.io/lsst/lab:hang"
		rt.AddRemote(ref, digestA, 100)
		a, err := New(Config{PullTimeout: time.Minute, BackoffInitial: time.Hour, ResyncInterval: time.Second}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA}}})
		startAgent(t, a)
		require.Len(t, a.State().Pulling, 1)
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		st := a.State()
		require.Empty(t, st.Pulling)
		require.Len(t, st.Failed, 1)
		require.Contains(t, st.Failed[0].Error, "deadline")
	})
}

func TestTagMovedIsNotCached(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:recommended"
		rt.AddRemote(ref, digestB, 100) // the registry moved the tag
		a, err := New(Config{ResyncInterval: time.Second}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA}}})
		startAgent(t, a)
		st := a.State()
		require.Empty(t, st.Cached)
		require.Len(t, st.Failed, 1)
		require.Contains(t, st.Failed[0].Error, "tag moved")
		require.Contains(t, st.Failed[0].Error, digestB)

		// The next refresh publishes the new digest: it is cached without another pull.
		a.SetDesired(Desired{Version: 2, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestB}}})
		synctest.Wait()
		require.Equal(t, map[string]string{ref: digestB}, a.State().Cached)
		require.Equal(t, 1, pullCount(rt, ref))
	})
}

// TestTagAndDigestReferenceIsCachedOnce: containerd records no tag for "repo:tag@digest",
// only the digest; the image is cached by its digest, not pulled on every pass.
func TestTagAndDigestReferenceIsCachedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:w_2024_01@" + digestA
		rt.AddRemote("ghcr.io/lsst/lab:w_2024_01", digestA, 100)
		a, err := New(Config{ResyncInterval: time.Second}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref)}}})
		startAgent(t, a)
		time.Sleep(3 * time.Second)
		synctest.Wait()
		st := a.State()
		require.Equal(t, map[string]string{ref: digestA}, st.Cached)
		require.Empty(t, st.Missing)
		require.Equal(t, 1, pullCount(rt, ref))
	})
}

func TestRemovedImageIsPulledAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:w_2024_01"
		rt.AddRemote(ref, digestA, 100)
		a, err := New(Config{ResyncInterval: 10 * time.Second}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA}}})
		startAgent(t, a)
		require.Contains(t, a.State().Cached, ref)
		v := a.State().Version

		require.NoError(t, rt.RemoveImage(t.Context(), ref)) // kubelet image GC
		time.Sleep(11 * time.Second)
		synctest.Wait()
		require.Equal(t, 2, pullCount(rt, ref))
		require.Contains(t, a.State().Cached, ref)
		require.Greater(t, a.State().Version, v)
	})
}

func TestDiskGuardHoldsPulls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:big"
		rt.AddRemote(ref, digestA, 100)
		var avail atomic.Uint64
		avail.Store(100 << 20)
		stat := func(string) (uint64, uint64, error) { return 1 << 30, avail.Load(), nil }
		a, err := New(Config{MinFreeDiskPercent: 15, StateDir: t.TempDir(), ResyncInterval: time.Second}, rt, nil, nil, WithStatFS(stat))
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA, Size: 200 << 20}}})
		startAgent(t, a)
		st := a.State()
		require.Len(t, st.Held, 1)
		require.Contains(t, st.Held[0].Reason, "insufficient disk")
		require.Zero(t, pullCount(rt, ref))

		avail.Store(900 << 20) // space was freed
		time.Sleep(time.Second)
		synctest.Wait()
		require.Contains(t, a.State().Cached, ref)
		require.Empty(t, a.State().Held)
	})
}

func TestTagsOfOneDigestDownloadOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		rt.HoldPulls()
		rec, weekly := "ghcr.io/lsst/lab:recommended", "ghcr.io/lsst/lab:w_2024_01"
		rt.AddRemote(rec, digestA, 100)
		rt.AddRemote(weekly, digestA, 100)
		a, err := New(Config{MaxParallelPulls: 4, ResyncInterval: time.Second}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(rec), Digest: digestA}, {Ref: image.MustParseRef(weekly), Digest: digestA}}})
		startAgent(t, a)
		st := a.State()
		require.Equal(t, []string{rec}, refsOf(st.Pulling))
		require.Equal(t, []string{weekly}, st.Queued)
		rt.ReleasePulls()
		synctest.Wait()
		require.Equal(t, map[string]string{rec: digestA, weekly: digestA}, a.State().Cached)
	})
}

func TestCredentialErrorIsAFailedPull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:1"
		rt.AddRemote(ref, digestA, 100)
		a, err := New(Config{ResyncInterval: time.Second}, rt, credsFunc(func(context.Context, string) (*cri.Auth, error) {
			return nil, errors.New("token source: metadata server unreachable")
		}), nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref)}}})
		startAgent(t, a)
		st := a.State()
		require.Len(t, st.Failed, 1)
		require.Contains(t, st.Failed[0].Error, "credentials for "+ref)
		require.Zero(t, pullCount(rt, ref))
	})
}

type credsFunc func(context.Context, string) (*cri.Auth, error)

func (f credsFunc) AuthFor(ctx context.Context, ref string) (*cri.Auth, error) { return f(ctx, ref) }

func refsOf(ps []Pulling) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Ref)
	}
	return out
}

func TestFinishedPullStartsTheNextAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		var want []image.Image
		for i := range 4 {
			ref, digest := fmt.Sprintf("ghcr.io/lsst/lab:t%d", i), fmt.Sprintf("sha256:%064d", i)
			rt.AddRemote(ref, digest, 100)
			want = append(want, image.Image{Ref: image.MustParseRef(ref), Digest: digest})
		}
		// No resync tick within the test: only the end of a pull can start the next one.
		a, err := New(Config{MaxParallelPulls: 1, ResyncInterval: time.Hour}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: want})
		start := time.Now()
		startAgent(t, a)
		require.Len(t, a.State().Cached, 4)
		require.Zero(t, time.Since(start), "queued pulls waited for a tick")
	})
}

func TestUnhealthyAfterLongWithoutInventory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		a, err := New(Config{ResyncInterval: 10 * time.Second}, rt, nil, nil)
		require.NoError(t, err)
		startAgent(t, a)
		require.NoError(t, a.Healthy())
		rt.SetError(critest.MethodListImages, cri.ErrUnavailable)
		time.Sleep(time.Minute)
		synctest.Wait()
		require.NoError(t, a.Healthy(), "a short outage (containerd restarting) is not fatal")
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		require.ErrorContains(t, a.Healthy(), "no CRI inventory")
		rt.SetError(critest.MethodListImages, nil)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		require.NoError(t, a.Healthy())
	})
}

// newRuntime is an empty in-memory runtime; made inside a synctest bubble, it runs on the
// bubble's clock.
func newRuntime() *critest.Runtime { return critest.NewRuntime(critest.RuntimeOptions{}) }

var _ Runtime = (*critest.Runtime)(nil)

// pullCount is how many times PullImage was called for ref.
func pullCount(rt *critest.Runtime, ref string) int {
	n := 0
	for _, c := range rt.Calls() {
		if c.Method == critest.MethodPullImage && c.Ref == ref {
			n++
		}
	}
	return n
}

// TestRetryStartsWhenItsBackoffEnds: retries used to wait for the next resync tick, so their
// gaps were multiples of the resync interval. Each failed image now has its own deadline.
func TestRetryStartsWhenItsBackoffEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:w_2024_02"
		// No resync within the test: only the backoff's end can start the retry.
		a, err := New(Config{BackoffInitial: 10 * time.Second, BackoffMax: 40 * time.Second, ResyncInterval: time.Hour}, rt, nil, nil)
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA}}})
		startAgent(t, a)
		for attempt := 1; attempt <= 3; attempt++ {
			st := a.State()
			require.Len(t, st.Failed, 1)
			require.Equal(t, attempt, st.Failed[0].Attempts)
			next := st.Failed[0].NextRetry
			time.Sleep(time.Until(next) - time.Millisecond)
			synctest.Wait()
			require.Equal(t, attempt, pullCount(rt, ref), "attempt %d: no retry before its backoff ends", attempt)
			time.Sleep(time.Millisecond)
			synctest.Wait()
			require.Equal(t, attempt+1, pullCount(rt, ref), "attempt %d: the retry starts when its backoff ends", attempt)
		}
	})
}

// TestHoldIsLoggedWhenItStarts: a held pull used to be logged on every pass, because the
// reason names the free space, which moves.
func TestHoldIsLoggedWhenItStarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:w_2024_03"
		rt.AddRemote(ref, digestA, 100)
		var logs lab.LogBuffer
		free := uint64(50 << 30)
		var mu sync.Mutex
		statfs := func(string) (uint64, uint64, error) {
			mu.Lock()
			defer mu.Unlock()
			free -= 100 << 20 // the free space moves on every pass
			return 100 << 30, free, nil
		}
		a, err := New(Config{MinFreeDiskPercent: 60, ResyncInterval: time.Second, StateDir: t.TempDir()}, rt, nil,
			slog.New(slog.NewTextHandler(&logs, nil)), WithStatFS(statfs))
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA, Size: 1}}})
		startAgent(t, a)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		require.Len(t, a.State().Held, 1)
		require.Equal(t, 1, strings.Count(logs.String(), "holding pull"), logs.String())
	})
}

// TestRuntimeDownIsShownAsItIs: while containerd was down, a pull that had already failed was
// shown as "pulling" and the node stayed ready. Now the state says the runtime is
// unavailable, the pull is failed, and readiness goes after a bounded time.
func TestRuntimeDownIsShownAsItIs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		rt.HoldPulls()
		const ref = "ghcr.io/lsst/lab:w_2024_04"
		rt.AddRemote(ref, digestA, 100)
		a, err := New(Config{ResyncInterval: 5 * time.Second, BackoffInitial: time.Minute}, rt, nil, nil)
		require.NoError(t, err)
		require.False(t, a.Ready(), "not ready before the first inventory")
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA}}})
		startAgent(t, a)
		require.True(t, a.Ready())
		require.Len(t, a.State().Pulling, 1)

		// containerd dies mid-pull: the pull fails, and so does every inventory.
		rt.SetError(critest.MethodListImages, cri.ErrUnavailable)
		rt.SetError(critest.MethodPullImage, cri.ErrUnavailable)
		rt.ReleasePulls()
		synctest.Wait()
		st := a.State()
		require.False(t, st.Ready)
		require.Contains(t, st.LastError, "container runtime unavailable")
		require.Empty(t, st.Pulling, "the failed pull is not shown as pulling")
		require.Len(t, st.Failed, 1)
		require.Equal(t, ref, st.Failed[0].Ref)
		require.True(t, a.Ready(), "a short outage (containerd restarting) keeps the node ready")

		time.Sleep(31 * time.Second)
		synctest.Wait()
		require.False(t, a.Ready(), "no inventory for 30 s: not ready")

		rt.SetError(critest.MethodListImages, nil)
		rt.SetError(critest.MethodPullImage, nil)
		time.Sleep(6 * time.Second)
		synctest.Wait()
		require.True(t, a.Ready())
		require.True(t, a.State().Ready)
		require.Empty(t, a.State().LastError)
	})
}

// TestPullNowReportsItsDuration: `debug pull` always printed "duration: 0s".
func TestPullNowReportsItsDuration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		const ref = "ghcr.io/lsst/lab:w_2024_05"
		rt.AddRemote(ref, digestA, 100)
		rt.SetPullLatency(3 * time.Second)
		a, err := New(Config{ResyncInterval: time.Hour}, rt, nil, nil)
		require.NoError(t, err)
		res, err := a.PullNow(t.Context(), ref)
		require.NoError(t, err)
		require.Equal(t, 3*time.Second, res.Duration)
	})
}

// TestPersistedListIsNeverOlderThanTheOneInForce: lists set at once from two goroutines (the
// leader's publish and a gossiped list) must leave the newest on disk.
func TestPersistedListIsNeverOlderThanTheOneInForce(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, err := New(Config{StateDir: dir}, newRuntime(), nil, nil)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for v := range 50 {
		wg.Go(func() {
			a.SetDesired(Desired{Version: uint64(v + 1), Images: []image.Image{{Ref: image.MustParseRef(fmt.Sprintf("ghcr.io/lsst/lab:w_%d", v))}}})
		})
	}
	wg.Wait()
	saved, err := loadDesired(dir)
	require.NoError(t, err)
	require.Equal(t, a.Desired().Version, saved.Version)
}
