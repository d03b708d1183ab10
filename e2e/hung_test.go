package e2e

import (
	"encoding/json"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// hungRegistry accepts TCP connections and never answers, as a registry behind a broken load
// balancer does. Its connections are closed when the test ends.
func hungRegistry(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu    sync.Mutex // guards conns
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestHungRegistryDelaysNobody: a SimpleRepoMan image whose registry accepts connections and
// never answers once stopped every listing, so no image was ever cached, and `debug
// reconcile` hung. Now each lookup has a deadline, the healthy image is cached, and reconcile
// answers within its bound naming the late source.
func TestHungRegistryDelaysNobody(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_07"}, 2*mb, 1, nil)
	require.NoError(t, err)
	good := reg.Addr + "/lsst/lab:w_2024_07"
	hung := hungRegistry(t) + "/lsst/lab:w_2024_08"

	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), []string{hung, good}))
	eventually(t, 60*time.Second, "the healthy image to be cached", func() bool { return tagDigest(t, n.cri, good) == digest })

	start := time.Now()
	out, err := p.debug(t, "reconcile")
	took := time.Since(start)
	require.Error(t, err, "reconcile reports the late source: %s", out)
	require.Contains(t, out, "sources still listing after 10s", "reconcile answers when its bound ends")
	require.Contains(t, out, "repomen[0] SimpleRepoMan")
	t.Logf("reconcile answered in %s: %s", took.Round(time.Millisecond), out)
}

// TestRegistryOutageKeepsTheLastDigest: during a registry outage a SimpleRepoMan's digest
// lookups fail. The desired list used to lose every image_hash and change version on every
// refresh; now the last known digest stays, the version stays, and reconcile reports the
// lookup error as the source's error.
func TestRegistryOutageKeepsTheLastDigest(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	digest, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_09"}, 1*mb, 1, nil)
	require.NoError(t, err)
	ref := reg.Addr + "/lsst/lab:w_2024_09"

	p := startAgent(t, n.dir, standalone(n.dir, n.cd.Endpoint(), []string{ref}))
	type desired struct {
		Version uint64 `json:"version"`
		Images  []struct {
			Ref    string `json:"image_url"`
			Digest string `json:"image_hash"`
		} `json:"images"`
	}
	get := func() (d desired, ok bool) {
		out, err := p.debug(t, "-o", "json", "desired")
		if err != nil {
			return d, false
		}
		require.NoError(t, json.Unmarshal([]byte(out), &d), out)
		return d, len(d.Images) == 1
	}
	eventually(t, 30*time.Second, "the digest resolved", func() bool { d, ok := get(); return ok && d.Images[0].Digest == digest })
	before, _ := get()

	require.NoError(t, reg.Close())
	out, err := p.debug(t, "reconcile")
	require.Error(t, err)
	require.Contains(t, out, "repomen[0] SimpleRepoMan: resolve digests", "the lookup error is the source's error")
	require.Contains(t, out, reg.Addr)
	// reconcile answers when the round ends; the leader publishes after that. Two completed
	// agent passes (a second each) leave it time to publish a changed list, were there one.
	p.waitPasses(t, 2)
	after, ok := get()
	require.True(t, ok)
	require.Equal(t, before, after, "the last known digest and the version stay")
}
