// Package critest provides an in-memory CRI runtime that behaves like containerd 1.6 for
// image calls (Runtime), the same runtime served over gRPC on a unix socket (Server), and a
// conformance suite for cri.Client that runs against any CRI endpoint and against Runtime.
package critest

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cachemachine/cachemachine/cri"
)

// ServerOptions configure a Server. The zero value is valid.
type ServerOptions struct {
	// Socket is the unix socket path to listen on. Default: cri.sock in a new temporary
	// directory (short, so under the 108-byte limit), removed by Close.
	Socket string
	// Mountpoint is what ImageFsInfo reports. Default: the socket's directory.
	Mountpoint string
}

// Server serves a Runtime as a CRI v1 endpoint: ImageService in full and
// RuntimeService.Version. The Runtime's methods (AddRemote, SetError, Calls, ...) configure
// and inspect what it serves. All methods are safe for concurrent use, also while serving.
type Server struct {
	*Runtime

	socket  string
	tempDir string // created by NewServer, removed by Close; "" if the caller chose Socket

	mu     sync.Mutex    // guards the fields below
	grpc   *grpc.Server  // nil while stopped
	served chan struct{} // closed when the current Serve returns
}

// NewServer starts serving on the socket in a goroutine owned by the Server; Close (or
// Stop) ends it.
func NewServer(opts ServerOptions) (*Server, error) {
	s := &Server{socket: opts.Socket}
	if s.socket == "" {
		dir, err := os.MkdirTemp("", "cm")
		if err != nil {
			return nil, err
		}
		s.tempDir = dir
		s.socket = filepath.Join(dir, "cri.sock")
	}
	if opts.Mountpoint == "" {
		opts.Mountpoint = filepath.Dir(s.socket)
	}
	s.Runtime = NewRuntime(RuntimeOptions{Mountpoint: opts.Mountpoint})
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
	runtimeapi.RegisterImageServiceServer(g, &imageService{r: s.Runtime})
	runtimeapi.RegisterRuntimeServiceServer(g, &runtimeService{r: s.Runtime})
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

// imageService is the gRPC face of a Runtime's images. The Runtime's errors carry the gRPC
// code and message containerd would send (callError); injected errors go out as they are.
type imageService struct {
	runtimeapi.UnimplementedImageServiceServer
	r *Runtime
}

func (is *imageService) ListImages(_ context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	imgs, err := is.r.listImages(req.GetFilter().GetImage().GetImage())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ListImagesResponse{}
	for _, img := range imgs {
		resp.Images = append(resp.Images, toAPI(img))
	}
	return resp, nil
}

func (is *imageService) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	img, err := is.r.ImageStatus(ctx, req.GetImage().GetImage())
	if err != nil {
		return nil, err
	}
	if img == nil {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: toAPI(*img)}, nil
}

func (is *imageService) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	id, err := is.r.PullImage(ctx, req.GetImage().GetImage(), fromAPIAuth(req.GetAuth()))
	if err != nil {
		return nil, err
	}
	return &runtimeapi.PullImageResponse{ImageRef: id}, nil
}

func (is *imageService) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	if err := is.r.RemoveImage(ctx, req.GetImage().GetImage()); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

func (is *imageService) ImageFsInfo(ctx context.Context, _ *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	fss, err := is.r.ImageFsInfo(ctx)
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ImageFsInfoResponse{}
	for _, fs := range fss {
		resp.ImageFilesystems = append(resp.ImageFilesystems, &runtimeapi.FilesystemUsage{
			Timestamp:  time.Now().UnixNano(),
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: fs.Mountpoint},
			UsedBytes:  &runtimeapi.UInt64Value{Value: fs.UsedBytes},
			InodesUsed: &runtimeapi.UInt64Value{Value: fs.InodesUsed},
		})
	}
	return resp, nil
}

// fromAPIAuth returns the credentials of a pull request, nil for none; a basic-auth token
// that does not decode gives credentials no registry accepts.
func fromAPIAuth(a *runtimeapi.AuthConfig) *cri.Auth {
	if a == nil {
		return nil
	}
	if a.GetAuth() == "" {
		return &cri.Auth{Username: a.GetUsername(), Password: a.GetPassword()}
	}
	b, err := base64.StdEncoding.DecodeString(a.GetAuth())
	if err != nil {
		return &cri.Auth{}
	}
	user, pass, _ := strings.Cut(string(b), ":")
	return &cri.Auth{Username: user, Password: pass}
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
	r *Runtime
}

// Version identifies the fake; RuntimeName is "critest".
func (rs *runtimeService) Version(ctx context.Context, _ *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	v, err := rs.r.Version(ctx)
	if err != nil {
		return nil, err
	}
	return &runtimeapi.VersionResponse{
		Version:           "0.1.0",
		RuntimeName:       v.RuntimeName,
		RuntimeVersion:    v.RuntimeVersion,
		RuntimeApiVersion: v.RuntimeAPIVersion,
	}, nil
}
