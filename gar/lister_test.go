package gar_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/image"
)

const parent = "projects/p/locations/us-central1/repositories/sciplat"

func digest(i int) string { return fmt.Sprintf("sha256:%064x", i) }

func testConfig(addr string) gar.Config {
	return gar.Config{
		ProjectID: "p", Location: "us-central1", Repository: "sciplat", Image: "sciplat-lab",
		Endpoint: addr, Insecure: true,
	}
}

func newLister(t testing.TB, srv *gartest.Server) *gar.Lister {
	t.Helper()
	l, err := gar.New(context.Background(), testConfig(srv.Addr()), gar.WithRetryDelay(time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func TestListerReadsEveryPage(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t)
	want := make([]image.Image, 2500)
	for i := range want {
		tag := fmt.Sprintf("w_%d_%02d", 2000+i/50, i%50)
		srv.Add(parent, "sciplat-lab", digest(i), []string{tag}, int64(i))
		want[i] = listed("us-central1-docker.pkg.dev/p/sciplat/sciplat-lab", tag, digest(i), uint64(i))
	}
	l := newLister(t, srv)

	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, 3, l.Calls())
	require.Equal(t, 3, srv.Calls())
	for _, r := range srv.Requests() {
		require.Equal(t, parent, r.Parent)
		require.EqualValues(t, gar.PageSize, r.PageSize)
	}
}

func TestListerFiltersImageAndSplitsTags(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t)
	srv.Add(parent, "sciplat-lab", digest(1), []string{"w_2024_01", "recommended"}, 4<<30)
	srv.Add(parent, "other", digest(2), []string{"w_2024_02"}, 1)
	srv.Add(parent, "x/sciplat-lab", digest(3), []string{"w_2024_03"}, 1)
	srv.Add(parent, "sciplat-lab/x", digest(4), []string{"w_2024_04"}, 1)
	srv.Add(parent, "sciplat-lab", digest(5), nil, 1) // untagged
	srv.Add(parent, "sciplat-lab", digest(6), []string{"d_2024_01_05"}, 7)
	srv.Add("projects/p/locations/us-central1/repositories/other", "sciplat-lab", digest(7), []string{"w_2024_07"}, 1)
	l := newLister(t, srv)

	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	const repo = "us-central1-docker.pkg.dev/p/sciplat/sciplat-lab"
	require.Equal(t, []image.Image{
		listed(repo, "w_2024_01", digest(1), 4<<30),
		listed(repo, "recommended", digest(1), 4<<30),
		listed(repo, "d_2024_01_05", digest(6), 7),
	}, got)
	require.Equal(t, "us-central1-docker.pkg.dev/p/sciplat/sciplat-lab", l.Repository())
	require.Equal(t, parent, l.Parent())
}

// An image path with slashes is matched as a whole, never by its last component: the tags
// of "x/sciplat-lab" are pulled as .../x/sciplat-lab, not as .../sciplat-lab.
func TestListerNestedImagePath(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t)
	srv.Add(parent, "sciplat-lab", digest(1), []string{"a"}, 1)
	srv.Add(parent, "x/sciplat-lab", digest(2), []string{"b"}, 1)
	cfg := testConfig(srv.Addr())
	cfg.Image = "x/sciplat-lab"
	l, err := gar.New(t.Context(), cfg)
	require.NoError(t, err)
	defer l.Close()

	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.Equal(t, []image.Image{listed("us-central1-docker.pkg.dev/p/sciplat/x/sciplat-lab", "b", digest(2), 1)}, got)
	require.Equal(t, "us-central1-docker.pkg.dev/p/sciplat/x/sciplat-lab", l.Repository())
}

func TestListerDomainScopedProject(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t)
	const p = "projects/example.com:proj/locations/us/repositories/sciplat"
	srv.Add(p, "sciplat-lab", digest(1), []string{"a"}, 1)
	cfg := testConfig(srv.Addr())
	cfg.ProjectID, cfg.Location = "example.com:proj", "us"
	l, err := gar.New(t.Context(), cfg)
	require.NoError(t, err)
	defer l.Close()

	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.Equal(t, []image.Image{listed("us-docker.pkg.dev/example.com/proj/sciplat/sciplat-lab", "a", digest(1), 1)}, got)
	require.Equal(t, "us-docker.pkg.dev/example.com/proj/sciplat/sciplat-lab", l.Repository())
}

func TestListerEmptyRepository(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t)
	srv.AddRepository(parent)
	l := newLister(t, srv)
	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.Empty(t, got)
	require.Equal(t, 1, l.Calls())
}

func TestListerRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		fail      int
		code      codes.Code
		wantErr   error
		wantCalls int
	}{
		{name: "two unavailable then success", fail: 2, code: codes.Unavailable, wantCalls: 3},
		{name: "internal then success", fail: 1, code: codes.Internal, wantCalls: 2},
		{name: "resource exhausted then success", fail: 2, code: codes.ResourceExhausted, wantCalls: 3},
		{name: "three unavailable", fail: 3, code: codes.Unavailable, wantErr: gar.ErrUnavailable, wantCalls: 3},
		{name: "permission denied is not retried", fail: 1, code: codes.PermissionDenied, wantErr: gar.ErrPermission, wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := gartest.Start(t)
			srv.Add(parent, "sciplat-lab", digest(1), []string{"a"}, 1)
			srv.FailNext(tt.fail, status.Error(tt.code, "injected"))
			l := newLister(t, srv)

			got, err := l.ListImages(t.Context())
			require.Equal(t, tt.wantCalls, srv.Calls())
			require.Equal(t, tt.wantCalls, l.Calls())
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Contains(t, err.Error(), parent)
				return
			}
			require.NoError(t, err)
			require.Equal(t, []image.Image{listed("us-central1-docker.pkg.dev/p/sciplat/sciplat-lab", "a", digest(1), 1)}, got)
		})
	}
}

// Retries are per call: a failure on the second page retries that page only.
func TestListerRetriesOnePage(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t, gartest.WithPageSizes(2, 2))
	for i := range 3 {
		srv.Add(parent, "sciplat-lab", digest(i), []string{fmt.Sprint("t", i)}, 1)
	}
	failed := false
	srv.SetErrorFunc(func(r gartest.Request) error {
		if r.PageToken != "" && !failed {
			failed = true
			return status.Error(codes.Unavailable, "injected")
		}
		return nil
	})
	l := newLister(t, srv)

	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.Len(t, got, 3)
	reqs := srv.Requests()
	require.Len(t, reqs, 3)
	require.Empty(t, reqs[0].PageToken)
	require.Equal(t, codes.Unavailable, reqs[1].Code)
	require.Equal(t, reqs[1].PageToken, reqs[2].PageToken)
	require.Equal(t, codes.OK, reqs[2].Code)
}

func TestListerErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		setup    func(*gartest.Server)
		cfg      func(*gar.Config)
		wantErr  error
		contains []string
	}{
		{
			name: "permission denied",
			setup: func(s *gartest.Server) {
				s.SetError(status.Error(codes.PermissionDenied,
					"Permission 'artifactregistry.repositories.downloadArtifacts' denied"))
			},
			wantErr:  gar.ErrPermission,
			contains: []string{"list " + parent + ": permission denied: Permission 'artifactregistry.repositories.downloadArtifacts' denied"},
		},
		{
			name:     "unauthenticated",
			setup:    func(s *gartest.Server) { s.SetError(status.Error(codes.Unauthenticated, "no token")) },
			wantErr:  gar.ErrUnauthenticated,
			contains: []string{"list " + parent + ": not authenticated", "no token"},
		},
		{
			name:     "repository not found",
			setup:    func(s *gartest.Server) { s.Add(parent, "sciplat-lab", digest(1), []string{"a"}, 1) },
			cfg:      func(c *gar.Config) { c.Repository = "nope" },
			wantErr:  gar.ErrNotFound,
			contains: []string{"list projects/p/locations/us-central1/repositories/nope: repository not found"},
		},
		{
			name:     "malformed parent",
			cfg:      func(c *gar.Config) { c.Location = "US_CENTRAL" },
			wantErr:  gar.ErrInvalid,
			contains: []string{"list projects/p/locations/US_CENTRAL/repositories/sciplat: invalid request"},
		},
		{
			name:     "other code",
			setup:    func(s *gartest.Server) { s.SetError(status.Error(codes.Aborted, "boom")) },
			wantErr:  gar.ErrAPI,
			contains: []string{"Aborted", "boom", parent},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := gartest.Start(t)
			if tt.setup != nil {
				tt.setup(srv)
			}
			cfg := testConfig(srv.Addr())
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			l, err := gar.New(t.Context(), cfg, gar.WithRetryDelay(time.Millisecond))
			require.NoError(t, err)
			defer l.Close()

			_, err = l.ListImages(t.Context())
			require.ErrorIs(t, err, tt.wantErr)
			for _, s := range tt.contains {
				require.Contains(t, err.Error(), s)
			}
		})
	}
}

func TestListerContext(t *testing.T) {
	t.Parallel()
	t.Run("cancelled during a call", func(t *testing.T) {
		t.Parallel()
		srv := gartest.Start(t)
		srv.Add(parent, "sciplat-lab", digest(1), []string{"a"}, 1)
		srv.SetLatency(time.Minute)
		l := newLister(t, srv)
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := l.ListImages(ctx)
		require.ErrorIs(t, err, context.Canceled)
		require.Contains(t, err.Error(), parent)
	})
	t.Run("deadline during a call", func(t *testing.T) {
		t.Parallel()
		srv := gartest.Start(t)
		srv.Add(parent, "sciplat-lab", digest(1), []string{"a"}, 1)
		srv.SetLatency(time.Minute)
		l := newLister(t, srv)
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		_, err := l.ListImages(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
	t.Run("cancelled during backoff", func(t *testing.T) {
		t.Parallel()
		srv := gartest.Start(t)
		srv.SetError(status.Error(codes.Unavailable, "down"))
		l, err := gar.New(t.Context(), testConfig(srv.Addr()), gar.WithRetryDelay(time.Hour))
		require.NoError(t, err)
		defer l.Close()
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		_, err = l.ListImages(ctx)
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(start), 30*time.Second)
	})
	t.Run("already cancelled", func(t *testing.T) {
		t.Parallel()
		srv := gartest.Start(t)
		l := newLister(t, srv)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := l.ListImages(ctx)
		require.ErrorIs(t, err, context.Canceled)
	})
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  func(*gar.Config)
		want string
	}{
		{name: "no project", cfg: func(c *gar.Config) { c.ProjectID = "" }, want: "project_id is empty"},
		{name: "no location", cfg: func(c *gar.Config) { c.Location = "" }, want: "location is empty"},
		{name: "no repository", cfg: func(c *gar.Config) { c.Repository = "" }, want: "gar_repository is empty"},
		{name: "slash in repository", cfg: func(c *gar.Config) { c.Repository = "a/b" }, want: "gar_repository"},
		{name: "no image", cfg: func(c *gar.Config) { c.Image = "" }, want: "gar_image"},
		{name: "image with tag", cfg: func(c *gar.Config) { c.Image = "img:tag" }, want: "gar_image"},
		{name: "insecure without endpoint", cfg: func(c *gar.Config) { c.Endpoint = "" }, want: "insecure_endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig("127.0.0.1:1")
			tt.cfg(&cfg)
			_, err := gar.New(t.Context(), cfg)
			require.ErrorIs(t, err, gar.ErrConfig)
			require.Contains(t, err.Error(), tt.want)
		})
	}
}

// The production path (Insecure false: the client dials itself) also counts calls; the fake
// is reached by overriding the transport security and credentials through client options.
func TestListerEndpointOverride(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t)
	srv.Add(parent, "sciplat-lab", digest(1), []string{"a"}, 1)
	cfg := testConfig(srv.Addr())
	cfg.Insecure = false
	l, err := gar.New(t.Context(), cfg, gar.WithClientOptions(
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	))
	require.NoError(t, err)
	defer l.Close()
	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.Equal(t, []image.Image{listed("us-central1-docker.pkg.dev/p/sciplat/sciplat-lab", "a", digest(1), 1)}, got)
	require.Equal(t, 1, l.Calls())
}

// TestListerRealGAR lists a real Artifact Registry image with Application Default
// Credentials when CACHEMACHINE_GAR (project/location/repository/image) is set.
func TestListerRealGAR(t *testing.T) {
	spec := os.Getenv("CACHEMACHINE_GAR")
	if spec == "" {
		t.Skip("CACHEMACHINE_GAR=project/location/repository/image not set")
	}
	parts := strings.SplitN(spec, "/", 4)
	require.Len(t, parts, 4, "CACHEMACHINE_GAR")
	l, err := gar.New(t.Context(), gar.Config{
		ProjectID: parts[0], Location: parts[1], Repository: parts[2], Image: parts[3],
	})
	require.NoError(t, err)
	defer l.Close()
	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.NotEmpty(t, got)
	for _, img := range got {
		require.NotEmpty(t, img.Tag())
		require.True(t, strings.HasPrefix(img.Digest, "sha256:"), img.Digest)
	}
	t.Logf("%d tags in %d calls", len(got), l.Calls())
}

func TestErrorsAreDistinct(t *testing.T) {
	t.Parallel()
	all := []error{gar.ErrConfig, gar.ErrPermission, gar.ErrUnauthenticated, gar.ErrNotFound,
		gar.ErrInvalid, gar.ErrUnavailable, gar.ErrAPI, gar.ErrToken}
	for i, a := range all {
		for j, b := range all {
			require.Equal(t, i == j, errors.Is(a, b))
		}
	}
}

// listed is the image a listing gives for tag of repo.
func listed(repo, tag, digest string, size uint64) image.Image {
	return image.Image{Ref: image.MustParseRef(repo + ":" + tag), Digest: digest, Name: tag, Size: size}
}
