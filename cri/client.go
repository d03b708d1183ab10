package cri

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	defaultCallTimeout = 10 * time.Second
	defaultPullTimeout = 10 * time.Minute
	// maxRecvMsgSize is the kubelet's limit: a node with many images has a long ListImages.
	maxRecvMsgSize = 16 << 20
	// kubeletAPIVersion is what the kubelet sends in VersionRequest; runtimes ignore it.
	kubeletAPIVersion = "0.1.0"
)

// Options tune a Client. The zero value is valid.
type Options struct {
	// CallTimeout bounds every unary call except PullImage. Default 10s.
	CallTimeout time.Duration
	// PullTimeout bounds PullImage. Default 10m.
	PullTimeout time.Duration
}

// Client talks to a CRI v1 runtime (ImageService and RuntimeService.Version) over a unix
// socket. Its methods are safe for concurrent use; each blocks until the runtime answers,
// ctx ends or the call's own deadline passes. Errors wrap a package sentinel (ErrUnavailable,
// ErrNotFound, ...) or context.Canceled.
type Client struct {
	endpoint string // normalised, unix:///path
	path     string // socket path, named in New's errors
	opts     Options
	conn     *grpc.ClientConn
	images   runtimeapi.ImageServiceClient
	runtime  runtimeapi.RuntimeServiceClient
}

// New connects to the CRI endpoint, "unix:///path" or a bare "/path", and checks with one
// RuntimeService.Version call (bounded by CallTimeout) that it speaks CRI v1. On failure the
// error names the socket path and wraps ErrUnavailable (nothing listening, socket missing)
// or ErrNotCRI (the endpoint does not implement CRI v1). New starts no goroutine of its own;
// the gRPC connection reconnects by itself (backoff at most ~1s) after a runtime restart.
// Call Close when done.
func New(ctx context.Context, endpoint string, opts Options) (*Client, error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = defaultCallTimeout
	}
	if opts.PullTimeout <= 0 {
		opts.PullTimeout = defaultPullTimeout
	}
	target := "unix://" + path
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgSize)),
		grpc.WithConnectParams(grpc.ConnectParams{
			// A local runtime restarts in a second or two; do not wait minutes for it.
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("cri socket %s: %w: %v", path, ErrUnavailable, err)
	}
	c := &Client{
		endpoint: target,
		path:     path,
		opts:     opts,
		conn:     conn,
		images:   runtimeapi.NewImageServiceClient(conn),
		runtime:  runtimeapi.NewRuntimeServiceClient(conn),
	}
	if _, err := c.Version(ctx); err != nil {
		_ = conn.Close()
		if errors.Is(err, ErrUnavailable) {
			if _, serr := os.Stat(path); errors.Is(serr, fs.ErrNotExist) {
				return nil, fmt.Errorf("cri socket %s: %w: no such file", path, ErrUnavailable)
			}
		}
		return nil, fmt.Errorf("cri socket %s: %w", path, err)
	}
	return c, nil
}

// socketPath returns the socket path of a "unix://" endpoint or a bare path.
func socketPath(endpoint string) (string, error) {
	path := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		path = rest
	} else if strings.Contains(endpoint, "://") {
		return "", fmt.Errorf("cri endpoint %q: only unix sockets are supported", endpoint)
	}
	if path == "" {
		return "", fmt.Errorf("cri endpoint %q: empty socket path", endpoint)
	}
	return path, nil
}

// Endpoint returns the endpoint in its normalised form, "unix:///path".
func (c *Client) Endpoint() string { return c.endpoint }

// Close closes the connection. Calls in flight fail with ErrUnavailable or a context error.
func (c *Client) Close() error { return c.conn.Close() }

// Version reports the runtime's name and version and the CRI API version it speaks ("v1").
func (c *Client) Version(ctx context.Context) (Version, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	resp, err := c.runtime.Version(ctx, &runtimeapi.VersionRequest{Version: kubeletAPIVersion})
	if err != nil {
		return Version{}, wrapError(ctx, "version", err, nil)
	}
	return Version{
		RuntimeName:       resp.GetRuntimeName(),
		RuntimeVersion:    resp.GetRuntimeVersion(),
		RuntimeAPIVersion: resp.GetRuntimeApiVersion(),
	}, nil
}

// ListImages returns every image in the runtime's store (for containerd: namespace k8s.io).
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	resp, err := c.images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, wrapError(ctx, "list images", err, nil)
	}
	imgs := make([]Image, 0, len(resp.GetImages()))
	for _, img := range resp.GetImages() {
		imgs = append(imgs, fromAPI(img))
	}
	return imgs, nil
}

// ImageStatus returns the image that ref (a tag, digest reference or image ID) names, or
// nil and no error when the runtime does not have it.
func (c *Client) ImageStatus(ctx context.Context, ref string) (*Image, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	resp, err := c.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{
		Image: &runtimeapi.ImageSpec{Image: ref},
	})
	if err != nil {
		return nil, wrapError(ctx, "image status "+ref, err, nil)
	}
	if resp.GetImage() == nil {
		return nil, nil
	}
	img := fromAPI(resp.GetImage())
	return &img, nil
}

// PullImage pulls ref with the given credentials (nil: anonymous) and returns the runtime's
// image ID (for containerd the config digest, not the manifest digest). It blocks until the
// pull is done, ctx ends or PullTimeout passes; CRI reports no progress. The credentials go
// with an empty server_address so that containerd also sends them to a hosts.toml mirror.
// Errors never contain the password.
func (c *Client) PullImage(ctx context.Context, ref string, auth *Auth) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.PullTimeout)
	defer cancel()
	req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}
	if auth != nil {
		req.Auth = &runtimeapi.AuthConfig{Username: auth.Username, Password: auth.Password}
	}
	resp, err := c.images.PullImage(ctx, req)
	if err != nil {
		return "", wrapError(ctx, "pull "+ref, err, auth)
	}
	if resp.GetImageRef() == "" {
		return "", fmt.Errorf("pull %s: %w: runtime returned no image ID", ref, ErrRuntime)
	}
	return resp.GetImageRef(), nil
}

// RemoveImage removes the image that ref names, with all its tags. Removing an image the
// runtime does not have succeeds.
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	_, err := c.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{
		Image: &runtimeapi.ImageSpec{Image: ref},
	})
	if err != nil {
		return wrapError(ctx, "remove image "+ref, err, nil)
	}
	return nil
}

// ImageFsInfo returns the usage of the image filesystems. containerd refreshes UsedBytes in
// the background (stats_collect_period), so it may lag a pull by that period.
func (c *Client) ImageFsInfo(ctx context.Context) ([]FsUsage, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.CallTimeout)
	defer cancel()
	resp, err := c.images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		return nil, wrapError(ctx, "image fs info", err, nil)
	}
	out := make([]FsUsage, 0, len(resp.GetImageFilesystems()))
	for _, f := range resp.GetImageFilesystems() {
		out = append(out, FsUsage{
			Mountpoint: f.GetFsId().GetMountpoint(),
			UsedBytes:  f.GetUsedBytes().GetValue(),
			InodesUsed: f.GetInodesUsed().GetValue(),
		})
	}
	return out, nil
}

func fromAPI(img *runtimeapi.Image) Image {
	return Image{
		ID:      img.GetId(),
		Tags:    img.GetRepoTags(),
		Digests: img.GetRepoDigests(),
		Size:    img.GetSize(),
		Pinned:  img.GetPinned(),
	}
}

// wrapError maps err, returned by a gRPC call made with ctx, to a package sentinel:
// "op: sentinel: status message". The credentials in auth, if any, are scrubbed from the
// message. This is the only place that interprets gRPC codes.
func wrapError(ctx context.Context, op string, err error, auth *Auth) error {
	st := status.Convert(err)
	msg := redact(st.Message(), auth)
	var sentinel error
	switch st.Code() {
	case codes.Unavailable:
		sentinel = ErrUnavailable
	case codes.DeadlineExceeded:
		sentinel = ErrDeadline
	case codes.NotFound:
		sentinel = ErrNotFound
	case codes.Unimplemented:
		sentinel = ErrNotCRI
	case codes.Unauthenticated, codes.PermissionDenied:
		sentinel = ErrUnauthorized
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
		// containerd reports a registry's refusal as Unknown with the HTTP status in the text.
		// containerd 1.7 and 2.x answer a Basic challenge they have no credentials for without
		// a second request, with their own sentinel: "pull access denied, repository does not
		// exist or may require authorization: authorization failed: no basic auth credentials".
		if strings.Contains(msg, "401 Unauthorized") || strings.Contains(msg, "403 Forbidden") ||
			strings.Contains(msg, "authorization failed") {
			sentinel = ErrUnauthorized
		} else {
			sentinel = ErrRuntime
		}
	}
	if msg == "" || msg == sentinel.Error() || (sentinel == ErrDeadline && msg == context.DeadlineExceeded.Error()) {
		return fmt.Errorf("%s: %w", op, sentinel)
	}
	return fmt.Errorf("%s: %w: %s", op, sentinel, msg)
}

// redact replaces the password (and the basic-auth token built from it) in msg.
func redact(msg string, auth *Auth) string {
	if auth == nil || auth.Password == "" {
		return msg
	}
	token := base64.StdEncoding.EncodeToString([]byte(auth.Username + ":" + auth.Password))
	msg = strings.ReplaceAll(msg, token, "<redacted>")
	return strings.ReplaceAll(msg, auth.Password, "<redacted>")
}
