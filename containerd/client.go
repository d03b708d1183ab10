package containerd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

const (
	defaultCallTimeout = 10 * time.Second
	// maxRecvMsgSize bounds every answer: ListStatuses of a node pulling many images at once
	// is a few hundred bytes per blob in flight; a list of records is similar.
	maxRecvMsgSize = 4 << 20
	// maxManifestSize bounds a manifest or index read from the content store (registries
	// refuse manifests above 4 MiB).
	maxManifestSize = 4 << 20
	// maxIndexEntries bounds the platform manifests of an index that ImageBlobs looks up (one
	// Info call each, every time progress is measured while the pull has not fetched one yet).
	// Real indexes list a handful of platforms plus their attestations; containerd fetches
	// the node's platform, listed among the first.
	maxIndexEntries = 16
	// namespaceKey is the gRPC metadata key containerd reads the namespace from.
	namespaceKey = "containerd-namespace"
)

// downloadFilter selects the ingests a pull makes (remotes.MakeRefKey); an ingest of another
// kind (an image import, a push) is not a pull's.
const downloadFilter = `ref~="^(layer|config|manifest|index)-"`

// Client talks to containerd's images and content services over its socket, in the CRI
// namespace. Its methods are safe for concurrent use; each blocks until containerd answers,
// ctx ends or the call's deadline passes. Errors wrap a package sentinel or a context error.
type Client struct {
	opts    Options
	conn    *grpc.ClientConn
	images  imagesapi.ImagesClient
	content contentapi.ContentClient
}

// New connects to containerd's socket ("unix:///path" or "/path", the CRI endpoint) and checks
// with one cheap content call that it serves containerd's services: ErrUnsupported when it
// does not (CRI-O), ErrUnavailable when nothing answers. It starts no goroutine of its own.
func New(ctx context.Context, endpoint string, opts Options) (*Client, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	if path == "" || strings.Contains(path, "://") {
		return nil, fmt.Errorf("containerd endpoint %q: only unix sockets are supported", endpoint)
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = defaultCallTimeout
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("containerd socket %s: %w: %v", path, ErrUnavailable, err)
	}
	c := &Client{opts: opts, conn: conn, images: imagesapi.NewImagesClient(conn), content: contentapi.NewContentClient(conn)}
	ctx, cancel := c.call(ctx)
	defer cancel()
	if _, err := c.content.ListStatuses(ctx, &contentapi.ListStatusesRequest{Filters: []string{`ref=="cachemachine-probe"`}}); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("containerd socket %s: %w", path, wrapError(ctx, "probe", err))
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// call returns ctx in the CRI namespace with the call deadline.
func (c *Client) call(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx = metadata.AppendToOutgoingContext(ctx, namespaceKey, Namespace)
	return context.WithTimeout(ctx, c.opts.CallTimeout)
}

// OwnPins returns the image records that carry OwnLabel: the pins cachemachine set.
func (c *Client) OwnPins(ctx context.Context) ([]Record, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.images.List(ctx, &imagesapi.ListImagesRequest{Filters: []string{`labels."` + OwnLabel + `"`}})
	if err != nil {
		return nil, wrapError(ctx, "list pinned images", err)
	}
	out := make([]Record, 0, len(resp.GetImages()))
	for _, img := range resp.GetImages() {
		out = append(out, record(img))
	}
	return out, nil
}

// Record returns the image record name.
func (c *Client) Record(ctx context.Context, name string) (Record, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.images.Get(ctx, &imagesapi.GetImageRequest{Name: name})
	if err != nil {
		return Record{}, wrapError(ctx, "get image "+name, err)
	}
	return record(resp.GetImage()), nil
}

// Pin labels the image record name pinned, marked as cachemachine's, and returns the record
// as it is now. A record pinned by someone else is left exactly as it is (and comes back with
// Ours false), so that Unpin never removes a pin cachemachine did not set.
func (c *Client) Pin(ctx context.Context, name string) (Record, error) {
	return c.setPin(ctx, "pin image "+name, name, true)
}

// Unpin removes cachemachine's pin from the image record name. A record without OwnLabel is
// left alone, and a record that is gone is no error.
func (c *Client) Unpin(ctx context.Context, name string) error {
	_, err := c.setPin(ctx, "unpin image "+name, name, false)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// setPin reads the record and updates both labels. Update always carries the whole image as
// Get returned it: an Update without the image's target crashes containerd 1.7 and 2.x.
func (c *Client) setPin(ctx context.Context, op, name string, pin bool) (Record, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.images.Get(ctx, &imagesapi.GetImageRequest{Name: name})
	if err != nil {
		return Record{}, wrapError(ctx, op, err)
	}
	img := resp.GetImage()
	r := record(img)
	switch {
	case img.GetTarget() == nil || img.GetTarget().GetDigest() == "":
		return r, fmt.Errorf("%s: %w: record without a target", op, ErrInvalid)
	case pin && r.Pinned: // pinned already, by us or by someone else: nothing to do
		return r, nil
	case !pin && !r.Ours:
		return r, nil
	}
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	value, own := "", "" // "" removes a label
	if pin {
		value, own = PinnedValue, "true"
	}
	img.Labels[PinnedLabel], img.Labels[OwnLabel] = value, own
	up, err := c.images.Update(ctx, &imagesapi.UpdateImageRequest{
		Image:      img,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels." + PinnedLabel, "labels." + OwnLabel}},
	})
	if err != nil {
		return r, wrapError(ctx, op, err)
	}
	return record(up.GetImage()), nil
}

func record(img *imagesapi.Image) Record {
	l := img.GetLabels()
	_, ours := l[OwnLabel]
	return Record{Name: img.GetName(), Target: img.GetTarget().GetDigest(), Pinned: l[PinnedLabel] == PinnedValue, Ours: ours}
}

// Downloads returns the blobs a pull is downloading now, with their bytes so far. Only
// downloads are visible: unpacking a layer into the snapshotter has no status.
func (c *Client) Downloads(ctx context.Context) ([]Download, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.content.ListStatuses(ctx, &contentapi.ListStatusesRequest{Filters: []string{downloadFilter}})
	if err != nil {
		return nil, wrapError(ctx, "list downloads", err)
	}
	out := make([]Download, 0, len(resp.GetStatuses()))
	for _, s := range resp.GetStatuses() {
		_, d, ok := strings.Cut(s.GetRef(), "-")
		if !ok || !strings.Contains(d, ":") {
			continue
		}
		out = append(out, Download{Ref: s.GetRef(), Digest: d, Offset: s.GetOffset(), Total: s.GetTotal(), Updated: s.GetUpdatedAt().AsTime()})
	}
	return out, nil
}

// BlobSize returns the size of the blob digest in the content store: complete blobs only
// (ErrNotFound while it is still downloading or was never fetched).
func (c *Client) BlobSize(ctx context.Context, digest string) (int64, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.content.Info(ctx, &contentapi.InfoRequest{Digest: digest})
	if err != nil {
		return 0, wrapError(ctx, "blob "+digest, err)
	}
	return resp.GetInfo().GetSize(), nil
}

// readBlob reads the whole blob digest, at most limit bytes (ErrInvalid beyond).
func (c *Client) readBlob(ctx context.Context, digest string, limit int64) ([]byte, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	stream, err := c.content.Read(ctx, &contentapi.ReadContentRequest{Digest: digest})
	if err != nil {
		return nil, wrapError(ctx, "read blob "+digest, err)
	}
	var out []byte
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, wrapError(ctx, "read blob "+digest, err)
		}
		if int64(len(out)+len(resp.GetData())) > limit {
			return nil, fmt.Errorf("read blob %s: %w: larger than %d bytes", digest, ErrInvalid, limit)
		}
		out = append(out, resp.GetData()...)
	}
}

// manifest is the part of an OCI or Docker image manifest or index that names blobs.
type manifest struct {
	Manifests []descriptor `json:"manifests"`
	Config    *descriptor  `json:"config"`
	Layers    []descriptor `json:"layers"`
}

type descriptor struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// ImageBlobs returns the config and layers of the image whose manifest (or index) digest is
// given, read from the content store: ErrNotFound until the pull has fetched the manifest.
// For an index it takes the platform manifest containerd fetched (the first one present).
func (c *Client) ImageBlobs(ctx context.Context, digest string) ([]Blob, error) {
	for range 2 { // an index, then its manifest
		raw, err := c.readBlob(ctx, digest, maxManifestSize)
		if err != nil {
			return nil, err
		}
		var m manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("manifest %s: %w: %v", digest, ErrInvalid, err)
		}
		if len(m.Manifests) == 0 {
			if m.Config == nil {
				return nil, fmt.Errorf("manifest %s: %w: neither config nor manifests", digest, ErrInvalid)
			}
			out := []Blob{{Digest: m.Config.Digest, Size: m.Config.Size}}
			for _, l := range m.Layers {
				out = append(out, Blob{Digest: l.Digest, Size: l.Size})
			}
			return out, nil
		}
		next := ""
		for _, d := range m.Manifests[:min(len(m.Manifests), maxIndexEntries)] {
			if _, err := c.BlobSize(ctx, d.Digest); err == nil {
				next = d.Digest
				break
			} else if !errors.Is(err, ErrNotFound) {
				return nil, err
			}
		}
		if next == "" {
			return nil, fmt.Errorf("index %s: %w: no platform manifest fetched yet", digest, ErrNotFound)
		}
		digest = next
	}
	return nil, fmt.Errorf("manifest %s: %w: an index of indexes", digest, ErrInvalid)
}

// wrapError maps err, from a gRPC call made with ctx, to a package sentinel: "op: sentinel:
// message". This is the only place that interprets gRPC codes.
func wrapError(ctx context.Context, op string, err error) error {
	st := status.Convert(err)
	var sentinel error
	switch st.Code() {
	case codes.Unavailable:
		sentinel = ErrUnavailable
	case codes.DeadlineExceeded:
		sentinel = ErrDeadline
	case codes.NotFound:
		sentinel = ErrNotFound
	case codes.Unimplemented:
		sentinel = ErrUnsupported
	case codes.Canceled:
		switch ctx.Err() {
		case context.Canceled:
			sentinel = context.Canceled
		case context.DeadlineExceeded:
			sentinel = ErrDeadline
		default:
			sentinel = ErrRuntime
		}
	default:
		sentinel = ErrRuntime
	}
	if msg := st.Message(); msg != "" && msg != sentinel.Error() {
		return fmt.Errorf("%s: %w: %s", op, sentinel, msg)
	}
	return fmt.Errorf("%s: %w", op, sentinel)
}
