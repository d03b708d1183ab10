// Package gartest provides an in-process fake of the Artifact Registry gRPC API: enough of
// ListDockerImages, with the real API's paging, error codes and URI shapes, to test
// gar.Lister, with error and latency injection and a call log. It can be filled by hand or
// from a real (local) registry's contents.
package gartest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/artifactregistry/apiv1/artifactregistrypb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The real API's page sizes for ListDockerImages: requests above MaxPageSize are coerced to
// it (AIP-158), a zero page size means DefaultPageSize (the API does not document its
// default; 100 is what Google APIs commonly use).
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Option configures a Server.
type Option func(*Server)

// WithPageSizes overrides the default and maximum page sizes.
func WithPageSizes(def, max int) Option {
	return func(s *Server) { s.defPage, s.maxPage = def, max }
}

// Request is one entry of the call log.
type Request struct {
	Parent    string
	PageSize  int32
	PageToken string
	// Code is the status the call returned.
	Code codes.Code
}

type imageVersion struct {
	name   string // path in the repository, e.g. "sciplat-lab"
	digest string
	tags   []string
	size   int64
}

type repository struct {
	host, projectPath, name string
	images                  []*imageVersion // in insertion order, which is the listing order
	// byDigest and byTag index images by image path + "\x00" + digest or tag, so that
	// filling a large repository is linear.
	byDigest, byTag map[string]*imageVersion
}

// Server is a fake ArtifactRegistry service listening on 127.0.0.1. All methods are safe for
// concurrent use, also while serving.
type Server struct {
	artifactregistrypb.UnimplementedArtifactRegistryServer

	lis     net.Listener
	grpc    *grpc.Server
	done    chan struct{} // closed when the serving goroutine returns
	defPage int
	maxPage int

	mu sync.Mutex // guards the fields below
	// repos maps "projects/p/locations/l/repositories/r" to its contents.
	repos     map[string]*repository
	err       error // returned by every call while set
	failNext  int   // number of further calls that return failErr
	failErr   error
	errFunc   func(Request) error // consulted for every call while set
	latency   time.Duration
	requests  []Request
	closeOnce sync.Once
}

// NewServer starts serving on 127.0.0.1:0 in a goroutine owned by the Server; Close ends it.
func NewServer(opts ...Option) (*Server, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	s := &Server{
		lis:     lis,
		grpc:    grpc.NewServer(),
		done:    make(chan struct{}),
		defPage: DefaultPageSize,
		maxPage: MaxPageSize,
		repos:   make(map[string]*repository),
	}
	for _, o := range opts {
		o(s)
	}
	artifactregistrypb.RegisterArtifactRegistryServer(s.grpc, s)
	go func() {
		defer close(s.done)
		_ = s.grpc.Serve(lis) // returns when Close stops the server
	}()
	return s, nil
}

// Start is NewServer for tests; the server is closed at cleanup.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s, err := NewServer(opts...)
	if err != nil {
		t.Fatalf("gartest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Addr returns the listening address, host:port, for gar.Config.Endpoint with Insecure.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops serving, cutting calls in flight, and waits for the serving goroutine.
// It may be called more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.grpc.Stop()
		<-s.done
	})
}

var parentRE = regexp.MustCompile(`^projects/([a-z0-9.:-]+)/locations/([a-z0-9-]+)/repositories/([a-z0-9][a-z0-9-]*)$`)

// AddRepository makes an empty repository, so that listing it returns no images rather
// than NotFound. name is "projects/p/locations/l/repositories/r"; it panics if name is
// malformed, which is a mistake in the test.
func (s *Server) AddRepository(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.repoLocked(name)
}

func (s *Server) repoLocked(name string) *repository {
	if r, ok := s.repos[name]; ok {
		return r
	}
	m := parentRE.FindStringSubmatch(name)
	if m == nil {
		panic(fmt.Sprintf("gartest: malformed repository name %q", name))
	}
	r := &repository{
		host:        m[2] + "-docker.pkg.dev",
		projectPath: strings.ReplaceAll(m[1], ":", "/"),
		name:        m[3],
		byDigest:    make(map[string]*imageVersion),
		byTag:       make(map[string]*imageVersion),
	}
	s.repos[name] = r
	return r
}

// Add puts an image version into repository ("projects/p/locations/l/repositories/r",
// created if needed): image is its path in the repository (e.g. "sciplat-lab"), digest its
// manifest digest, size its size in bytes. Adding a digest again adds the tags and replaces
// the size; a tag already on another digest of the same image moves, as a push does. It
// panics if repository is malformed, which is a mistake in the test.
func (s *Server) Add(repository, image, digest string, tags []string, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.repoLocked(repository)
	target := r.byDigest[image+"\x00"+digest]
	if target == nil {
		target = &imageVersion{name: image, digest: digest}
		r.images = append(r.images, target)
		r.byDigest[image+"\x00"+digest] = target
	}
	target.size = size
	for _, t := range tags {
		key := image + "\x00" + t
		switch prev := r.byTag[key]; prev {
		case target:
			continue
		case nil:
		default:
			prev.tags = slices.DeleteFunc(prev.tags, func(pt string) bool { return pt == t })
		}
		r.byTag[key] = target
		target.tags = append(target.tags, t)
	}
}

// SetError makes every call fail with err (a gRPC status error; others become Unknown) until
// SetError(nil).
func (s *Server) SetError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// FailNext makes the next n calls fail with err, then the server answers normally again.
func (s *Server) FailNext(n int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext, s.failErr = n, err
}

// SetErrorFunc makes every call consult f (with the request; Code is unset) and fail with
// its error when it is not nil, until SetErrorFunc(nil). f is called with the server's lock
// held, one call at a time, so it may keep state without locking and must not call the
// Server.
func (s *Server) SetErrorFunc(f func(Request) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errFunc = f
}

// SetLatency makes every call take at least d; a call whose context ends first fails with
// its context's status.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// Calls returns how many ListDockerImages calls the server has received.
func (s *Server) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

// Requests returns a copy of the call log, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// ListDockerImages serves one page of the repository's images in insertion order. Like the
// real API it answers InvalidArgument for a malformed parent, page size or page token and
// NotFound for a repository that does not exist.
func (s *Server) ListDockerImages(ctx context.Context, req *artifactregistrypb.ListDockerImagesRequest) (*artifactregistrypb.ListDockerImagesResponse, error) {
	resp, err := s.list(ctx, req)
	s.mu.Lock()
	s.requests = append(s.requests, Request{
		Parent: req.GetParent(), PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
		Code: status.Code(err),
	})
	s.mu.Unlock()
	return resp, err
}

func (s *Server) list(ctx context.Context, req *artifactregistrypb.ListDockerImagesRequest) (*artifactregistrypb.ListDockerImagesResponse, error) {
	s.mu.Lock()
	latency := s.latency
	injected := s.err
	if injected == nil && s.failNext > 0 {
		s.failNext--
		injected = s.failErr
	}
	if injected == nil && s.errFunc != nil {
		injected = s.errFunc(Request{Parent: req.GetParent(), PageSize: req.GetPageSize(), PageToken: req.GetPageToken()})
	}
	s.mu.Unlock()

	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-t.C:
		}
	}
	if injected != nil {
		return nil, injected
	}

	parent := req.GetParent()
	if !parentRE.MatchString(parent) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid parent %q: want projects/*/locations/*/repositories/*", parent)
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, status.Errorf(codes.InvalidArgument, "page_size must not be negative: %d", size)
	case size == 0:
		size = s.defPage
	case size > s.maxPage:
		size = s.maxPage
	}
	offset, err := decodeToken(parent, req.GetPageToken())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid page_token")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.repos[parent]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "Requested entity was not found.")
	}
	if offset > len(r.images) {
		return nil, status.Errorf(codes.InvalidArgument, "invalid page_token")
	}
	end := min(offset+size, len(r.images))
	resp := &artifactregistrypb.ListDockerImagesResponse{}
	for _, img := range r.images[offset:end] {
		resp.DockerImages = append(resp.DockerImages, &artifactregistrypb.DockerImage{
			Name:           parent + "/dockerImages/" + url.PathEscape(img.name) + "@" + img.digest,
			Uri:            r.host + "/" + r.projectPath + "/" + r.name + "/" + img.name + "@" + img.digest,
			Tags:           slices.Clone(img.tags),
			ImageSizeBytes: img.size,
			MediaType:      "application/vnd.oci.image.manifest.v1+json",
		})
	}
	if end < len(r.images) {
		resp.NextPageToken = encodeToken(parent, end)
	}
	return resp, nil
}

// Page tokens are opaque to clients and bound to the parent they were issued for.
func encodeToken(parent string, offset int) string {
	return base64.RawURLEncoding.EncodeToString([]byte(parent + "\x00" + strconv.Itoa(offset)))
}

func decodeToken(parent, token string) (int, error) {
	if token == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return 0, err
	}
	p, off, ok := strings.Cut(string(b), "\x00")
	if !ok || p != parent {
		return 0, errors.New("token for another parent")
	}
	n, err := strconv.Atoi(off)
	if err != nil || n < 0 {
		return 0, errors.New("bad offset")
	}
	return n, nil
}
