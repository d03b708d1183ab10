package agent

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/image"
)

// memContent is an in-memory content store with downloads in flight.
type memContent struct {
	mu        sync.Mutex // guards the fields below
	manifests map[string][]containerd.Blob
	present   map[string]int64
	inFlight  map[string]int64 // digest -> offset
	calls     int
}

func (m *memContent) Downloads(context.Context) ([]containerd.Download, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
	var out []containerd.Download
	for d, off := range m.inFlight {
		out = append(out, containerd.Download{Ref: "layer-" + d, Digest: d, Offset: off})
	}
	return out, nil
}

func (m *memContent) ImageBlobs(_ context.Context, digest string) ([]containerd.Blob, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.manifests[digest]; ok {
		return b, nil
	}
	return nil, containerd.ErrNotFound
}

func (m *memContent) BlobSize(_ context.Context, digest string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.present[digest]; ok {
		return s, nil
	}
	return 0, containerd.ErrNotFound
}

func (m *memContent) set(fn func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn()
}

func TestProgressFromTheContentStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newRuntime()
		rt.HoldPulls()
		const ref = "ghcr.io/lsst/lab:big"
		rt.AddRemote(ref, digestA, 2100)
		layer := func(i int) string { return fmt.Sprintf("sha256:%064d", 100+i) }
		mc := &memContent{manifests: map[string][]containerd.Blob{}, present: map[string]int64{}, inFlight: map[string]int64{}}
		reg := prometheus.NewRegistry()
		a, err := New(Config{ResyncInterval: time.Minute}, rt, nil, nil, WithDownloads(mc), WithRegisterer(reg))
		require.NoError(t, err)
		a.SetDesired(Desired{Version: 1, Images: []image.Image{{Ref: image.MustParseRef(ref), Digest: digestA}}})
		startAgent(t, a)

		time.Sleep(time.Second)
		synctest.Wait()
		p, ok := a.LiveProgress(ref)
		require.True(t, ok)
		require.Equal(t, PhaseResolving, p.Phase, "no manifest in the store yet")

		// The manifest arrived: a config already present (shared) and two 1000-byte layers,
		// one downloading.
		mc.set(func() {
			mc.manifests[digestA] = []containerd.Blob{{Digest: layer(0), Size: 100}, {Digest: layer(1), Size: 1000}, {Digest: layer(2), Size: 1000}}
			mc.present[layer(0)] = 100
			mc.inFlight[layer(1)] = 500
		})
		time.Sleep(time.Second)
		synctest.Wait()
		p, _ = a.LiveProgress(ref)
		require.Equal(t, Progress{Phase: PhaseDownloading, BytesDone: 600, BytesTotal: 2100, BytesPerSecond: 500, At: p.At}, p)
		st := a.State()
		require.Equal(t, p, st.Pulling[0].Progress, "the first measurement with a total is a new step")
		version := st.Version

		mc.set(func() { mc.inFlight[layer(1)] = 510 }) // under a tenth more: State stays
		time.Sleep(time.Second)
		synctest.Wait()
		require.Equal(t, version, a.State().Version, "a small step does not change the state")
		p, _ = a.LiveProgress(ref)
		require.Equal(t, uint64(610), p.BytesDone, "the debug socket sees every measurement")

		mc.set(func() {
			delete(mc.inFlight, layer(1))
			mc.present[layer(1)] = 1000
			mc.present[layer(2)] = 1000 // began and ended between two looks
		})
		time.Sleep(time.Second)
		synctest.Wait()
		p, _ = a.LiveProgress(ref)
		require.Equal(t, PhaseUnpacking, p.Phase)
		require.Equal(t, uint64(2100), p.BytesDone)
		require.Equal(t, PhaseUnpacking, a.State().Pulling[0].Progress.Phase)
		// Downloaded while watched: 500 + 10 + 490 of layer 1 (layer 2 was never seen in
		// flight, the config was there before).
		require.Equal(t, 1000.0, testutil.ToFloat64(a.metrics.pullBytes))

		rt.ReleasePulls()
		time.Sleep(time.Second)
		synctest.Wait()
		_, ok = a.LiveProgress(ref)
		require.False(t, ok, "the pull ended")
		calls := mc.calls
		time.Sleep(5 * time.Second)
		synctest.Wait()
		require.Equal(t, calls, mc.calls, "no content calls while nothing is pulling")
	})
}

func TestETA(t *testing.T) {
	t.Parallel()
	at := time.Unix(100, 0)
	p := Progress{Phase: PhaseDownloading, BytesDone: 100, BytesTotal: 1100, BytesPerSecond: 100, At: at}
	eta, ok := p.ETA(at.Add(2 * time.Second))
	require.True(t, ok)
	require.Equal(t, 8*time.Second, eta)
	_, ok = Progress{BytesTotal: 10}.ETA(at)
	require.False(t, ok, "no rate, no estimate")
}
