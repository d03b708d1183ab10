package containerd_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/containerd/containerdtest"
)

// fakeImage stores a manifest with a config and n layers in s, with the three records a CRI
// pull leaves, and returns the manifest digest.
func fakeImage(t *testing.T, s *containerdtest.Server, repo, tag string, n int) (string, string) {
	t.Helper()
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","tag":%q}`, tag))
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{SchemaVersion: 2, Config: desc{"application/vnd.oci.image.config.v1+json", s.AddBlob(cfg), len(cfg)}}
	for i := range n {
		b := []byte(strings.Repeat(fmt.Sprintf("%s layer %d ", tag, i), 100+i))
		m.Layers = append(m.Layers, desc{"application/vnd.oci.image.layer.v1.tar+gzip", s.AddBlob(b), len(b)})
	}
	raw, err := json.Marshal(m)
	require.NoError(t, err)
	md := s.AddBlob(raw)
	for _, name := range []string{repo + ":" + tag, repo + "@" + md, m.Config.Digest} {
		s.SetRecord(name, md, map[string]string{"io.cri-containerd.image": "managed"})
	}
	return md, m.Config.Digest
}

func newFake(t *testing.T) (*containerdtest.Server, *containerd.Client) {
	t.Helper()
	s, err := containerdtest.NewServer()
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	c, err := containerd.New(t.Context(), s.Endpoint(), containerd.Options{CallTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return s, c
}

func TestConformanceFake(t *testing.T) {
	t.Parallel()
	s, c := newFake(t)
	const repo = "docker.io/cm/lab"
	md, id := fakeImage(t, s, repo, "w1", 3)
	s.SetRecord("registry.k8s.io/pause:3.9", md, map[string]string{containerd.PinnedLabel: containerd.PinnedValue})
	containerdtest.Conformance(t, c, containerdtest.Fixture{
		Tag: repo + ":w1", DigestRecord: repo + "@" + md, IDRecord: id,
		ManifestDigest: md, Layers: 3, ForeignPinned: "registry.k8s.io/pause:3.9",
		Labels: func(t *testing.T, name string) map[string]string { return s.Labels(name) },
	})
	require.False(t, s.Crashed(), "every Update carried the image's target")
	for _, call := range s.Calls() {
		if call.Method == containerdtest.MethodUpdate {
			require.ElementsMatch(t, []string{"labels." + containerd.PinnedLabel, "labels." + containerd.OwnLabel}, call.Paths)
		}
	}
}

// TestPinRestoresALostPin: a record that kept cachemachine's label but lost the pin label is
// pinned again (was: taken as pinned already, and left to the kubelet's image GC).
func TestPinRestoresALostPin(t *testing.T) {
	t.Parallel()
	s, c := newFake(t)
	md, _ := fakeImage(t, s, "docker.io/cm/lab", "w1", 1)
	name := "docker.io/cm/lab@" + md
	s.SetRecord(name, md, map[string]string{containerd.OwnLabel: "true"})
	r, err := c.Pin(t.Context(), name)
	require.NoError(t, err)
	require.True(t, r.Pinned)
	require.True(t, r.Ours)
	require.Equal(t, containerd.PinnedValue, s.Labels(name)[containerd.PinnedLabel])
}

func TestDownloads(t *testing.T) {
	t.Parallel()
	s, c := newFake(t)
	at := time.Unix(1700000000, 0).UTC()
	d := "sha256:" + strings.Repeat("ab", 32)
	s.SetDownloads([]containerd.Download{{Ref: "layer-" + d, Offset: 10, Total: 100, Updated: at}, {Ref: "garbage"}})
	got, err := c.Downloads(t.Context())
	require.NoError(t, err)
	require.Equal(t, []containerd.Download{{Ref: "layer-" + d, Digest: d, Offset: 10, Total: 100, Updated: at}}, got)
}

func TestIndexTakesTheFetchedManifest(t *testing.T) {
	t.Parallel()
	s, c := newFake(t)
	md, _ := fakeImage(t, s, "docker.io/cm/multi", "w1", 2)
	absent := "sha256:" + strings.Repeat("cd", 32)
	idx := s.AddBlob([]byte(fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"digest":%q,"size":1},{"digest":%q,"size":1}]}`, absent, md)))
	blobs, err := c.ImageBlobs(t.Context(), idx)
	require.NoError(t, err)
	require.Len(t, blobs, 3)
}

// TestIndexLooksUpABoundedNumberOfManifests: a huge index costs at most 16 Info calls a
// measure, not one per entry.
func TestIndexLooksUpABoundedNumberOfManifests(t *testing.T) {
	t.Parallel()
	s, c := newFake(t)
	var entries []string
	for i := range 1000 {
		entries = append(entries, fmt.Sprintf(`{"digest":"sha256:%064x","size":1}`, i))
	}
	idx := s.AddBlob([]byte(`{"schemaVersion":2,"manifests":[` + strings.Join(entries, ",") + `]}`))
	_, err := c.ImageBlobs(t.Context(), idx)
	require.ErrorIs(t, err, containerd.ErrNotFound)
	infos := 0
	for _, call := range s.Calls() {
		if call.Method == containerdtest.MethodInfo {
			infos++
		}
	}
	require.LessOrEqual(t, infos, 16)
}

func TestErrorsMapToSentinels(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"unavailable", status.Error(codes.Unavailable, "restarting"), containerd.ErrUnavailable},
		{"unimplemented", status.Error(codes.Unimplemented, "unknown service"), containerd.ErrUnsupported},
		{"deadline", status.Error(codes.DeadlineExceeded, ""), containerd.ErrDeadline},
		{"other", status.Error(codes.Internal, "boom"), containerd.ErrRuntime},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, c := newFake(t)
			md, _ := fakeImage(t, s, "docker.io/cm/e", "v", 1)
			s.SetError(containerdtest.MethodGet, tt.err)
			_, err := c.Pin(t.Context(), "docker.io/cm/e@"+md)
			require.ErrorIs(t, err, tt.want)
			require.True(t, strings.HasPrefix(err.Error(), "pin image docker.io/cm/e@"), err.Error())
			s.SetError(containerdtest.MethodListStatuses, tt.err)
			_, err = c.Downloads(t.Context())
			require.True(t, errors.Is(err, tt.want), err)
		})
	}
}

func TestNewRefusesAnotherRuntime(t *testing.T) {
	t.Parallel()
	s, _ := newFake(t)
	s.SetError(containerdtest.MethodListStatuses, status.Error(codes.Unimplemented, "unknown service containerd.services.content.v1.Content"))
	_, err := containerd.New(t.Context(), s.Endpoint(), containerd.Options{})
	require.ErrorIs(t, err, containerd.ErrUnsupported)
}
