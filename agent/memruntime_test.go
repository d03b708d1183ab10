package agent

import (
	"context"
	"errors"
	"sync"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// nopRuntime is a runtime with no images for tests that never reach the runtime.
type nopRuntime struct{}

func (nopRuntime) ListImages(context.Context) ([]cri.Image, error)         { return nil, nil }
func (nopRuntime) ImageStatus(context.Context, string) (*cri.Image, error) { return nil, nil }
func (nopRuntime) PullImage(context.Context, string, *cri.Auth) (string, error) {
	return "", errors.New("nop")
}
func (nopRuntime) ImageFsInfo(context.Context) ([]cri.FsUsage, error) { return nil, nil }
func (nopRuntime) Version(context.Context) (cri.Version, error)       { return cri.Version{}, nil }

// memRuntime is an in-memory runtime for tests under testing/synctest, where the gRPC fake
// (cri/critest) cannot run because socket I/O does not let the bubble's clock advance. The
// behaviour the agent relies on is covered against critest and real containerd elsewhere.
type memRuntime struct {
	mu      sync.Mutex        // guards the fields below
	remote  map[string]string // ref -> digest the registry serves
	images  map[string]string // ref -> digest present on the node
	failing map[string]error  // ref -> error its pulls return
	pulls   []string
	block   chan struct{} // when set, pulls wait for it
}

func newMemRuntime() *memRuntime {
	return &memRuntime{remote: map[string]string{}, images: map[string]string{}, failing: map[string]error{}}
}

func (m *memRuntime) ListImages(context.Context) ([]cri.Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []cri.Image
	for ref, d := range m.images {
		out = append(out, cri.Image{ID: "id-" + ref, Tags: []string{ref}, Digests: []string{image.MustParseRef(ref).Repository() + "@" + d}, Size: 100})
	}
	return out, nil
}

func (m *memRuntime) ImageStatus(_ context.Context, ref string) (*cri.Image, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.images[ref]
	if !ok {
		return nil, nil
	}
	return &cri.Image{ID: "id-" + ref, Tags: []string{ref}, Digests: []string{image.MustParseRef(ref).Repository() + "@" + d}, Size: 100}, nil
}

func (m *memRuntime) PullImage(ctx context.Context, ref string, _ *cri.Auth) (string, error) {
	m.mu.Lock()
	m.pulls = append(m.pulls, ref)
	block := m.block
	m.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return "", cri.ErrDeadline
		}
	}
	m.mu.Lock()
	err := m.failing[ref]
	d, ok := m.remote[ref]
	m.mu.Unlock()
	if err != nil {
		return "", err
	}
	if !ok {
		return "", cri.ErrNotFound
	}
	m.mu.Lock()
	m.images[ref] = d
	m.mu.Unlock()
	return "id-" + ref, nil
}

func (m *memRuntime) ImageFsInfo(context.Context) ([]cri.FsUsage, error) {
	return []cri.FsUsage{{Mountpoint: "/images", UsedBytes: 1000}}, nil
}

func (m *memRuntime) Version(context.Context) (cri.Version, error) {
	return cri.Version{RuntimeName: "mem", RuntimeVersion: "1"}, nil
}

func (m *memRuntime) pullCount(ref string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, p := range m.pulls {
		if p == ref {
			n++
		}
	}
	return n
}
