// Package critest provides an in-process fake CRI v1 server that behaves like containerd 1.6
// for image calls, and a conformance suite for cri.Client that runs against any CRI endpoint.
package critest

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cachemachine/cachemachine/cri"
)

// Method names for SetError and Call.Method.
const (
	MethodVersion     = "Version"
	MethodListImages  = "ListImages"
	MethodImageStatus = "ImageStatus"
	MethodPullImage   = "PullImage"
	MethodRemoveImage = "RemoveImage"
	MethodImageFsInfo = "ImageFsInfo"
)

// ServerOptions configure a Server. The zero value is valid.
type ServerOptions struct {
	// Socket is the unix socket path to listen on. Default: cri.sock in a new temporary
	// directory (short, so under the 108-byte limit), removed by Close.
	Socket string
	// Mountpoint is what ImageFsInfo reports. Default: the socket's directory.
	Mountpoint string
}

// Call is one entry of the server's call log.
type Call struct {
	Method string
	Ref    string // the image reference, for ImageStatus, PullImage and RemoveImage
	Time   time.Time
}

type remote struct {
	digest string
	size   uint64
}

// Server is a fake CRI runtime: ImageService in full and RuntimeService.Version, with a fake
// registry behind PullImage. All methods are safe for concurrent use, also while serving.
type Server struct {
	socket     string
	mountpoint string
	tempDir    string // created by NewServer, removed by Close; "" if the caller chose Socket

	mu       sync.Mutex            // guards the fields below
	images   map[string]*cri.Image // by image ID
	remotes  map[string]remote     // by repo:tag
	errs     map[string]error      // by method
	latency  time.Duration         // of PullImage
	auth     *cri.Auth             // required for pulls if non-nil
	diskUsed *uint64               // nil: sum of image sizes
	calls    []Call
	grpc     *grpc.Server  // nil while stopped
	served   chan struct{} // closed when the current Serve returns
}

// NewServer starts serving on the socket in a goroutine owned by the Server; Close (or
// Stop) ends it.
func NewServer(opts ServerOptions) (*Server, error) {
	s := &Server{
		socket:     opts.Socket,
		mountpoint: opts.Mountpoint,
		images:     make(map[string]*cri.Image),
		remotes:    make(map[string]remote),
		errs:       make(map[string]error),
	}
	if s.socket == "" {
		dir, err := os.MkdirTemp("", "cm")
		if err != nil {
			return nil, err
		}
		s.tempDir = dir
		s.socket = filepath.Join(dir, "cri.sock")
	}
	if s.mountpoint == "" {
		s.mountpoint = filepath.Dir(s.socket)
	}
	if err := s.Restart(); err != nil {
		s.removeTemp()
		return nil, err
	}
	return s, nil
}

// Start is NewServer with default options for tests; the server is closed at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := NewServer(ServerOptions{})
	if err != nil {
		t.Fatalf("critest: start server: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Endpoint returns "unix://" and the socket path, for cri.New.
func (s *Server) Endpoint() string { return "unix://" + s.socket }

// Stop stops serving, like a runtime that was killed: open connections are cut and calls in
// flight fail. The images are kept; Restart serves them again on the same socket.
// Stop blocks until the serving goroutine has returned.
func (s *Server) Stop() {
	s.mu.Lock()
	g, served := s.grpc, s.served
	s.grpc, s.served = nil, nil
	s.mu.Unlock()
	if g == nil {
		return
	}
	g.Stop()
	<-served
}

// Restart serves again on the same socket after Stop, with the same images. It is a no-op
// if the server is serving.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grpc != nil {
		return nil
	}
	// A killed runtime leaves its socket file behind.
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	lis, err := net.Listen("unix", s.socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	runtimeapi.RegisterImageServiceServer(g, &imageService{s: s})
	runtimeapi.RegisterRuntimeServiceServer(g, &runtimeService{s: s})
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	s.grpc, s.served = g, served
	return nil
}

// Close stops serving and removes the temporary directory NewServer created.
func (s *Server) Close() error {
	s.Stop()
	return s.removeTemp()
}

func (s *Server) removeTemp() error {
	if s.tempDir == "" {
		return nil
	}
	return os.RemoveAll(s.tempDir)
}

// AddRemote makes ref (repo:tag) pullable from the fake registry with the given manifest
// digest and image size. The image ID is derived from the digest, so two tags with one
// digest pull to one image. Adding a ref again moves the tag in the registry.
func (s *Server) AddRemote(ref, digest string, size uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remotes[normalize(ref)] = remote{digest: digest, size: size}
}

// RemoveRemote deletes ref from the fake registry; images already pulled stay.
func (s *Server) RemoveRemote(ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.remotes, normalize(ref))
}

// SetPullLatency makes every PullImage take d (a slow or hung registry). A pull whose ctx
// ends first fails with DeadlineExceeded or Canceled and stores nothing.
func (s *Server) SetPullLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetError makes every call of method (MethodPullImage, ...) fail with err, which should be
// a gRPC status error, until SetError(method, nil).
func (s *Server) SetError(method string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.errs, method)
		return
	}
	s.errs[method] = err
}

// SetPullAuth makes the registry require these credentials: a pull without them fails with
// codes.Unknown and "401 Unauthorized" in the message, as containerd reports it.
func (s *Server) SetPullAuth(username, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth = &cri.Auth{Username: username, Password: password}
}

// SetDiskUsage fixes the used bytes ImageFsInfo reports (default: the sum of image sizes).
func (s *Server) SetDiskUsage(used uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.diskUsed = &used
}

// Calls returns a copy of the call log, oldest first.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// Images returns a copy of the images the runtime holds, sorted by ID.
func (s *Server) Images() []cri.Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listLocked("")
}

// begin logs a call and returns its injected error, if any.
func (s *Server) begin(method, ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, Call{Method: method, Ref: ref, Time: time.Now()})
	return s.errs[method]
}

func (s *Server) listLocked(filter string) []cri.Image {
	out := make([]cri.Image, 0, len(s.images))
	for _, img := range s.images {
		if filter != "" && !matches(img, filter) {
			continue
		}
		out = append(out, copyImage(img))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// findLocked returns the image that ref names: its ID, one of its tags or digest refs.
func (s *Server) findLocked(ref string) *cri.Image {
	if img, ok := s.images[ref]; ok {
		return img
	}
	ref = normalize(ref)
	for _, img := range s.images {
		if matches(img, ref) {
			return img
		}
	}
	return nil
}

// pull resolves ref in the fake registry and stores the image as containerd does.
func (s *Server) pull(ref string, auth *runtimeapi.AuthConfig) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ref = normalize(ref)
	if s.auth != nil && !authMatches(s.auth, auth) {
		return "", status.Errorf(codes.Unknown,
			"failed to pull and unpack image %q: failed to resolve reference %q: "+
				"pulling from host fake failed with status code [manifests]: 401 Unauthorized", ref, ref)
	}
	repo, tag, dgst := splitRef(ref)
	var r remote
	found := false
	if dgst != "" {
		for name, rr := range s.remotes {
			if rr.digest == dgst && repoOf(name) == repo {
				r, found = rr, true
				break
			}
		}
	} else {
		r, found = s.remotes[ref]
	}
	if !found {
		return "", status.Errorf(codes.NotFound,
			"failed to pull and unpack image %q: failed to resolve reference %q: %s: not found", ref, ref, ref)
	}
	id := ImageID(r.digest)
	if tag != "" {
		// A tag points to one image; pulling it after it moved leaves the old image dangling.
		for _, img := range s.images {
			if img.ID != id {
				img.Tags = slices.DeleteFunc(img.Tags, func(t string) bool { return t == ref })
			}
		}
	}
	img, ok := s.images[id]
	if !ok {
		img = &cri.Image{ID: id, Size: r.size}
		s.images[id] = img
	}
	if tag != "" && !slices.Contains(img.Tags, ref) {
		img.Tags = append(img.Tags, ref)
	}
	if d := repo + "@" + r.digest; !slices.Contains(img.Digests, d) {
		img.Digests = append(img.Digests, d)
	}
	return id, nil
}

// ImageID is the image ID the fake runtime gives the image with this manifest digest.
func ImageID(digest string) string {
	sum := sha256.Sum256([]byte("config of " + digest))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func authMatches(want *cri.Auth, got *runtimeapi.AuthConfig) bool {
	if got == nil {
		return false
	}
	user, pass := got.GetUsername(), got.GetPassword()
	if got.GetAuth() != "" {
		b, err := base64.StdEncoding.DecodeString(got.GetAuth())
		if err != nil {
			return false
		}
		user, pass, _ = strings.Cut(string(b), ":")
	}
	return user == want.Username && pass == want.Password
}

func matches(img *cri.Image, ref string) bool {
	return img.ID == ref || slices.Contains(img.Tags, ref) || slices.Contains(img.Digests, ref)
}

func copyImage(img *cri.Image) cri.Image {
	c := *img
	c.Tags = slices.Clone(img.Tags)
	c.Digests = slices.Clone(img.Digests)
	return c
}

// splitRef splits repo:tag or repo@digest; the ':' of a registry port is not a tag.
func splitRef(ref string) (repo, tag, digest string) {
	if r, d, ok := strings.Cut(ref, "@"); ok {
		return r, "", d
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:], ""
	}
	return ref, "", ""
}

func repoOf(ref string) string {
	repo, _, _ := splitRef(ref)
	return repo
}

// normalize adds the implicit :latest tag; unlike containerd it adds no docker.io prefix.
func normalize(ref string) string {
	if strings.HasPrefix(ref, "sha256:") {
		return ref
	}
	if _, tag, dgst := splitRef(ref); tag == "" && dgst == "" {
		return ref + ":latest"
	}
	return ref
}

// imageService is the gRPC face of the Server's images.
type imageService struct {
	runtimeapi.UnimplementedImageServiceServer
	s *Server
}

func (is *imageService) ListImages(_ context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	if err := is.s.begin(MethodListImages, ""); err != nil {
		return nil, err
	}
	filter := req.GetFilter().GetImage().GetImage()
	if filter != "" && !strings.HasPrefix(filter, "sha256:") {
		filter = normalize(filter)
	}
	is.s.mu.Lock()
	imgs := is.s.listLocked(filter)
	is.s.mu.Unlock()
	resp := &runtimeapi.ListImagesResponse{}
	for _, img := range imgs {
		resp.Images = append(resp.Images, toAPI(img))
	}
	return resp, nil
}

func (is *imageService) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	ref := req.GetImage().GetImage()
	if err := is.s.begin(MethodImageStatus, ref); err != nil {
		return nil, err
	}
	is.s.mu.Lock()
	defer is.s.mu.Unlock()
	img := is.s.findLocked(ref)
	if img == nil {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: toAPI(copyImage(img))}, nil
}

func (is *imageService) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	ref := req.GetImage().GetImage()
	if err := is.s.begin(MethodPullImage, ref); err != nil {
		return nil, err
	}
	is.s.mu.Lock()
	latency := is.s.latency
	is.s.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	id, err := is.s.pull(ref, req.GetAuth())
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PullImageResponse{ImageRef: id}, nil
}

func (is *imageService) RemoveImage(_ context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	ref := req.GetImage().GetImage()
	if err := is.s.begin(MethodRemoveImage, ref); err != nil {
		return nil, err
	}
	is.s.mu.Lock()
	defer is.s.mu.Unlock()
	if img := is.s.findLocked(ref); img != nil {
		delete(is.s.images, img.ID)
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

func (is *imageService) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	if err := is.s.begin(MethodImageFsInfo, ""); err != nil {
		return nil, err
	}
	is.s.mu.Lock()
	defer is.s.mu.Unlock()
	var used uint64
	if is.s.diskUsed != nil {
		used = *is.s.diskUsed
	} else {
		for _, img := range is.s.images {
			used += img.Size
		}
	}
	return &runtimeapi.ImageFsInfoResponse{
		ImageFilesystems: []*runtimeapi.FilesystemUsage{{
			Timestamp:  time.Now().UnixNano(),
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: is.s.mountpoint},
			UsedBytes:  &runtimeapi.UInt64Value{Value: used},
			InodesUsed: &runtimeapi.UInt64Value{Value: uint64(len(is.s.images))},
		}},
	}, nil
}

func toAPI(img cri.Image) *runtimeapi.Image {
	return &runtimeapi.Image{
		Id:          img.ID,
		RepoTags:    img.Tags,
		RepoDigests: img.Digests,
		Size:        img.Size,
		Pinned:      img.Pinned,
	}
}

// runtimeService answers Version; every other RuntimeService call is Unimplemented.
type runtimeService struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	s *Server
}

// Version identifies the fake; RuntimeName is "critest".
func (rs *runtimeService) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	if err := rs.s.begin(MethodVersion, ""); err != nil {
		return nil, err
	}
	return &runtimeapi.VersionResponse{
		Version:           "0.1.0",
		RuntimeName:       "critest",
		RuntimeVersion:    "0.0.0",
		RuntimeApiVersion: "v1",
	}, nil
}
