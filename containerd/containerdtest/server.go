// Package containerdtest provides an in-process fake of containerd's images and content
// services as the agent uses them, and a conformance suite for containerd.Client that runs
// against the fake and against real containerd.
package containerdtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cachemachine/cachemachine/containerd"
)

// Method names for SetError and Call.Method.
const (
	MethodGet          = "images.Get"
	MethodList         = "images.List"
	MethodUpdate       = "images.Update"
	MethodListStatuses = "content.ListStatuses"
	MethodInfo         = "content.Info"
	MethodRead         = "content.Read"
)

// Call is one entry of the server's call log.
type Call struct {
	Method string
	Name   string // image name or digest
	// Paths is an Update's field mask.
	Paths []string
}

// Server is a fake containerd: image records with labels, blobs, and ingests in flight. It
// answers only in the namespace k8s.io (like the CRI plugin's data) and rejects an images
// Update without a target, which crashes a real containerd 1.7 or 2.x. Safe for concurrent use.
type Server struct {
	Socket string

	mu        sync.Mutex // guards the fields below
	records   map[string]*imagesapi.Image
	blobs     map[string][]byte
	downloads []containerd.Download
	errs      map[string]error
	calls     []Call
	// crashed is set by an Update without a target: a real daemon would be gone.
	crashed bool

	srv  *grpc.Server
	dir  string
	done chan struct{}
}

// NewServer serves on a socket in a new temporary directory until Close.
func NewServer() (*Server, error) {
	dir, err := os.MkdirTemp("", "cmctd")
	if err != nil {
		return nil, err
	}
	s := &Server{
		Socket:  filepath.Join(dir, "containerd.sock"),
		records: map[string]*imagesapi.Image{},
		blobs:   map[string][]byte{},
		errs:    map[string]error{},
		srv:     grpc.NewServer(),
		dir:     dir,
		done:    make(chan struct{}),
	}
	ln, err := net.Listen("unix", s.Socket)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	imagesapi.RegisterImagesServer(s.srv, imagesServer{s: s})
	contentapi.RegisterContentServer(s.srv, contentServer{s: s})
	go func() { defer close(s.done); _ = s.srv.Serve(ln) }()
	return s, nil
}

// Endpoint is "unix://" + Socket.
func (s *Server) Endpoint() string { return "unix://" + s.Socket }

// Close stops serving and removes the socket's directory.
func (s *Server) Close() error {
	s.srv.Stop()
	<-s.done
	return os.RemoveAll(s.dir)
}

// AddBlob stores b and returns its digest.
func (s *Server) AddBlob(b []byte) string {
	sum := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(sum[:])
	s.mu.Lock()
	s.blobs[d] = slices.Clone(b)
	s.mu.Unlock()
	return d
}

// SetRecord creates or replaces the image record name pointing at target, with labels.
func (s *Server) SetRecord(name, target string, labels map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[name] = &imagesapi.Image{
		Name:   name,
		Labels: maps.Clone(labels),
		Target: &types.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: target, Size: 1},
	}
}

// Labels returns the labels of record name (nil when there is no such record).
func (s *Server) Labels(name string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.records[name]; r != nil {
		return maps.Clone(r.Labels)
	}
	return nil
}

// SetDownloads replaces the ingests in flight that ListStatuses reports.
func (s *Server) SetDownloads(d []containerd.Download) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.downloads = slices.Clone(d)
}

// SetError makes method fail with err (a gRPC status error) until cleared with nil.
func (s *Server) SetError(method string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.errs, method)
	} else {
		s.errs[method] = err
	}
}

// Calls returns the call log.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// Crashed reports whether an Update without a target arrived.
func (s *Server) Crashed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crashed
}

// begin logs a call and returns its injected error, or an error when the call is not in the
// CRI namespace. Callers hold s.mu.
func (s *Server) begin(ctx context.Context, c Call) error {
	s.calls = append(s.calls, c)
	if err := s.errs[c.Method]; err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if ns := md.Get("containerd-namespace"); len(ns) != 1 || ns[0] != containerd.Namespace {
		return status.Errorf(codes.FailedPrecondition, "namespace is required")
	}
	return nil
}

type imagesServer struct {
	imagesapi.UnimplementedImagesServer
	s *Server
}

func (i imagesServer) Get(ctx context.Context, req *imagesapi.GetImageRequest) (*imagesapi.GetImageResponse, error) {
	s := i.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx, Call{Method: MethodGet, Name: req.GetName()}); err != nil {
		return nil, err
	}
	r := s.records[req.GetName()]
	if r == nil {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", req.GetName())
	}
	return &imagesapi.GetImageResponse{Image: clone(r)}, nil
}

// List supports the filters the client sends: none, or the presence of one label
// (`labels."key"`).
func (i imagesServer) List(ctx context.Context, req *imagesapi.ListImagesRequest) (*imagesapi.ListImagesResponse, error) {
	s := i.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx, Call{Method: MethodList}); err != nil {
		return nil, err
	}
	var key string
	for _, f := range req.GetFilters() {
		k, ok := strings.CutPrefix(f, "labels.")
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "fake: unsupported filter %q", f)
		}
		key = strings.Trim(k, `"`)
	}
	out := &imagesapi.ListImagesResponse{}
	for _, name := range slices.Sorted(maps.Keys(s.records)) {
		r := s.records[name]
		if _, ok := r.Labels[key]; key == "" || ok {
			out.Images = append(out.Images, clone(r))
		}
	}
	return out, nil
}

// Update applies label paths of the mask, as containerd's metadata store does ("" removes a
// label). A request without a target is what crashes containerd 1.7 and 2.x: refused here,
// and recorded (Crashed).
func (i imagesServer) Update(ctx context.Context, req *imagesapi.UpdateImageRequest) (*imagesapi.UpdateImageResponse, error) {
	s := i.s
	s.mu.Lock()
	defer s.mu.Unlock()
	img := req.GetImage()
	if err := s.begin(ctx, Call{Method: MethodUpdate, Name: img.GetName(), Paths: req.GetUpdateMask().GetPaths()}); err != nil {
		return nil, err
	}
	if img.GetTarget() == nil || img.GetTarget().GetDigest() == "" {
		s.crashed = true
		return nil, status.Errorf(codes.Unavailable, "fake: an update without a target crashes containerd")
	}
	r := s.records[img.GetName()]
	if r == nil {
		return nil, status.Errorf(codes.NotFound, "image %q: not found", img.GetName())
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "fake: an update without a mask replaces the record: not used by the client")
	}
	for _, p := range paths {
		key, ok := strings.CutPrefix(p, "labels.")
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "fake: unsupported path %q", p)
		}
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		if v := img.GetLabels()[key]; v != "" {
			r.Labels[key] = v
		} else {
			delete(r.Labels, key)
		}
	}
	r.UpdatedAt = timestamppb.Now()
	return &imagesapi.UpdateImageResponse{Image: clone(r)}, nil
}

func clone(r *imagesapi.Image) *imagesapi.Image {
	return &imagesapi.Image{Name: r.Name, Labels: maps.Clone(r.Labels), Target: &types.Descriptor{MediaType: r.Target.MediaType, Digest: r.Target.Digest, Size: r.Target.Size}, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
}

type contentServer struct {
	contentapi.UnimplementedContentServer
	s *Server
}

// ListStatuses answers every download for the client's kind filter, and nothing for any
// other filter (the client's probe).
func (c contentServer) ListStatuses(ctx context.Context, req *contentapi.ListStatusesRequest) (*contentapi.ListStatusesResponse, error) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx, Call{Method: MethodListStatuses}); err != nil {
		return nil, err
	}
	out := &contentapi.ListStatusesResponse{}
	if !slices.ContainsFunc(req.GetFilters(), func(f string) bool { return strings.HasPrefix(f, "ref~=") }) {
		return out, nil
	}
	for _, d := range s.downloads {
		out.Statuses = append(out.Statuses, &contentapi.Status{Ref: d.Ref, Offset: d.Offset, Total: d.Total, UpdatedAt: timestamppb.New(d.Updated)})
	}
	return out, nil
}

func (c contentServer) Info(ctx context.Context, req *contentapi.InfoRequest) (*contentapi.InfoResponse, error) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx, Call{Method: MethodInfo, Name: req.GetDigest()}); err != nil {
		return nil, err
	}
	b, ok := s.blobs[req.GetDigest()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "content digest %s: not found", req.GetDigest())
	}
	return &contentapi.InfoResponse{Info: &contentapi.Info{Digest: req.GetDigest(), Size: int64(len(b)), CreatedAt: timestamppb.New(time.Now())}}, nil
}

func (c contentServer) Read(req *contentapi.ReadContentRequest, stream contentapi.Content_ReadServer) error {
	s := c.s
	s.mu.Lock()
	err := s.begin(stream.Context(), Call{Method: MethodRead, Name: req.GetDigest()})
	b, ok := s.blobs[req.GetDigest()]
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if !ok {
		return status.Errorf(codes.NotFound, "content digest %s: not found", req.GetDigest())
	}
	for off := 0; off < len(b); off += 1 << 10 { // small chunks: the client must reassemble
		end := min(len(b), off+1<<10)
		if err := stream.Send(&contentapi.ReadContentResponse{Offset: int64(off), Data: b[off:end]}); err != nil {
			return err
		}
	}
	return nil
}
