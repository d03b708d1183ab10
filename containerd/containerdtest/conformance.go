package containerdtest

import (
	"context"
	"fmt"
	"testing"

	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/cachemachine/cachemachine/containerd"
)

// Fixture names what the store under test holds: one image as a CRI pull leaves it, and a
// record someone else pinned.
type Fixture struct {
	// Tag, DigestRecord and IDRecord are the image's three records ("repo:tag",
	// "repo@sha256:…", "sha256:<config>"), none pinned.
	Tag, DigestRecord, IDRecord string
	// ManifestDigest is the records' target; Layers how many layers its manifest lists.
	ManifestDigest string
	Layers         int
	// ForeignPinned is a record carrying containerd.PinnedLabel but not containerd.OwnLabel.
	ForeignPinned string
	// Labels reads a record's labels from the store directly, not through the client.
	Labels func(t *testing.T, name string) map[string]string
}

// Conformance checks c against the store f describes. It changes labels and restores them.
func Conformance(t *testing.T, c *containerd.Client, f Fixture) {
	ctx := t.Context()

	r, err := c.Record(ctx, f.Tag)
	require.NoError(t, err)
	require.Equal(t, containerd.Record{Name: f.Tag, Target: f.ManifestDigest}, r, "a fresh pull is not pinned")

	for _, name := range []string{f.DigestRecord, f.IDRecord} {
		r, err := c.Pin(ctx, name)
		require.NoError(t, err, name)
		require.Equal(t, containerd.Record{Name: name, Target: f.ManifestDigest, Pinned: true, Ours: true}, r)
		require.Equal(t, containerd.PinnedValue, f.Labels(t, name)[containerd.PinnedLabel])
		require.Contains(t, f.Labels(t, name), containerd.OwnLabel)
		again, err := c.Pin(ctx, name)
		require.NoError(t, err)
		require.Equal(t, r, again, "pinning twice changes nothing")
	}
	tagLabels := f.Labels(t, f.Tag)
	require.NotContains(t, tagLabels, containerd.PinnedLabel, "pinning other records leaves the tag alone")

	pins, err := c.OwnPins(ctx)
	require.NoError(t, err)
	names := []string{}
	for _, p := range pins {
		require.True(t, p.Pinned && p.Ours, "%+v", p)
		names = append(names, p.Name)
	}
	require.ElementsMatch(t, []string{f.DigestRecord, f.IDRecord}, names, "OwnPins lists exactly the records cachemachine pinned")

	before := f.Labels(t, f.ForeignPinned)
	r, err = c.Pin(ctx, f.ForeignPinned)
	require.NoError(t, err)
	require.True(t, r.Pinned)
	require.False(t, r.Ours, "someone else's pin does not become ours")
	require.NoError(t, c.Unpin(ctx, f.ForeignPinned))
	require.Equal(t, before, f.Labels(t, f.ForeignPinned), "someone else's pin is never touched")

	for _, name := range []string{f.DigestRecord, f.IDRecord} {
		require.NoError(t, c.Unpin(ctx, name))
		l := f.Labels(t, name)
		require.NotContains(t, l, containerd.PinnedLabel)
		require.NotContains(t, l, containerd.OwnLabel)
	}
	pins, err = c.OwnPins(ctx)
	require.NoError(t, err)
	require.Empty(t, pins)

	require.NoError(t, c.Unpin(ctx, f.Tag+"-gone"), "unpinning a record that is gone is no error")
	_, err = c.Pin(ctx, f.Tag+"-gone")
	require.ErrorIs(t, err, containerd.ErrNotFound)

	blobs, err := c.ImageBlobs(ctx, f.ManifestDigest)
	require.NoError(t, err)
	require.Len(t, blobs, f.Layers+1, "config and layers")
	for _, b := range blobs {
		size, err := c.BlobSize(ctx, b.Digest)
		require.NoError(t, err)
		require.Equal(t, b.Size, size, b.Digest)
	}
	_, err = c.BlobSize(ctx, "sha256:"+fmt.Sprintf("%064d", 0))
	require.ErrorIs(t, err, containerd.ErrNotFound)
	_, err = c.ImageBlobs(ctx, "sha256:"+fmt.Sprintf("%064d", 0))
	require.ErrorIs(t, err, containerd.ErrNotFound)

	_, err = c.Downloads(ctx)
	require.NoError(t, err)
}

// ForeignPin pins the record name on the containerd at endpoint as someone other than
// cachemachine would (containerd's label alone), and Labels reads a record's labels: raw
// images-service calls for tests against real containerd.
func ForeignPin(t *testing.T, endpoint, name string) {
	t.Helper()
	client, ctx := rawImages(t, endpoint)
	resp, err := client.Get(ctx, &imagesapi.GetImageRequest{Name: name})
	require.NoError(t, err)
	img := resp.GetImage()
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	img.Labels[containerd.PinnedLabel] = containerd.PinnedValue
	_, err = client.Update(ctx, &imagesapi.UpdateImageRequest{Image: img, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels." + containerd.PinnedLabel}}})
	require.NoError(t, err)
}

// Labels returns the labels of record name on the containerd at endpoint (nil if it is gone).
func Labels(t *testing.T, endpoint, name string) map[string]string {
	t.Helper()
	client, ctx := rawImages(t, endpoint)
	resp, err := client.Get(ctx, &imagesapi.GetImageRequest{Name: name})
	if err != nil {
		return nil
	}
	return resp.GetImage().GetLabels()
}

func rawImages(t *testing.T, endpoint string) (imagesapi.ImagesClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return imagesapi.NewImagesClient(conn), metadata.AppendToOutgoingContext(t.Context(), "containerd-namespace", containerd.Namespace)
}
