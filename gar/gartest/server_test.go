package gartest_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/artifactregistry/apiv1/artifactregistrypb"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/gar/gartest"
)

const parent = "projects/p/locations/us-central1/repositories/sciplat"

func digest(i int) string { return fmt.Sprintf("sha256:%064x", i) }

func client(t *testing.T, s *gartest.Server) artifactregistrypb.ArtifactRegistryClient {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return artifactregistrypb.NewArtifactRegistryClient(conn)
}

func list(t *testing.T, c artifactregistrypb.ArtifactRegistryClient, parent string, size int32, token string) (*artifactregistrypb.ListDockerImagesResponse, error) {
	t.Helper()
	return c.ListDockerImages(t.Context(), &artifactregistrypb.ListDockerImagesRequest{
		Parent: parent, PageSize: size, PageToken: token,
	})
}

func TestPageSizes(t *testing.T) {
	t.Parallel()
	s := gartest.Start(t)
	for i := range 1500 {
		s.Add(parent, "img", digest(i), []string{fmt.Sprint("t", i)}, 1)
	}
	c := client(t, s)
	tests := []struct {
		name string
		size int32
		want int
	}{
		{name: "default", size: 0, want: gartest.DefaultPageSize},
		{name: "small", size: 7, want: 7},
		{name: "max", size: 1000, want: 1000},
		{name: "coerced to max", size: 5000, want: gartest.MaxPageSize},
	}
	for _, tt := range tests {
		resp, err := list(t, c, parent, tt.size, "")
		require.NoError(t, err, tt.name)
		require.Len(t, resp.GetDockerImages(), tt.want, tt.name)
		require.NotEmpty(t, resp.GetNextPageToken(), tt.name)
	}

	_, err := list(t, c, parent, -1, "")
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}

func TestPagingAndShape(t *testing.T) {
	t.Parallel()
	s := gartest.Start(t)
	s.Add(parent, "sciplat-lab", digest(1), []string{"a", "b"}, 10)
	s.Add(parent, "x/sciplat-lab", digest(2), []string{"c"}, 20)
	s.Add(parent, "sciplat-lab", digest(3), []string{"d"}, 30)
	c := client(t, s)

	var got []*artifactregistrypb.DockerImage
	token := ""
	for {
		resp, err := list(t, c, parent, 2, token)
		require.NoError(t, err)
		got = append(got, resp.GetDockerImages()...)
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
	}
	require.Len(t, got, 3)
	require.Equal(t, "us-central1-docker.pkg.dev/p/sciplat/sciplat-lab@"+digest(1), got[0].GetUri())
	require.Equal(t, parent+"/dockerImages/sciplat-lab@"+digest(1), got[0].GetName())
	require.Equal(t, []string{"a", "b"}, got[0].GetTags())
	require.EqualValues(t, 10, got[0].GetImageSizeBytes())
	require.Equal(t, "us-central1-docker.pkg.dev/p/sciplat/x/sciplat-lab@"+digest(2), got[1].GetUri())
	require.Equal(t, parent+"/dockerImages/x%2Fsciplat-lab@"+digest(2), got[1].GetName())
	require.Equal(t, 2, s.Calls())
}

func TestTagMoves(t *testing.T) {
	t.Parallel()
	s := gartest.Start(t)
	s.Add(parent, "img", digest(1), []string{"recommended", "w_2024_01"}, 1)
	s.Add(parent, "img", digest(2), []string{"recommended", "w_2024_02"}, 1)
	s.Add(parent, "other", digest(3), []string{"recommended"}, 1) // another image keeps its own
	s.Add(parent, "img", digest(1), []string{"w_2024_01", "extra"}, 5)
	resp, err := list(t, client(t, s), parent, 0, "")
	require.NoError(t, err)
	imgs := resp.GetDockerImages()
	require.Len(t, imgs, 3)
	require.Equal(t, []string{"w_2024_01", "extra"}, imgs[0].GetTags())
	require.EqualValues(t, 5, imgs[0].GetImageSizeBytes())
	require.Equal(t, []string{"recommended", "w_2024_02"}, imgs[1].GetTags())
	require.Equal(t, []string{"recommended"}, imgs[2].GetTags())
}

func TestErrors(t *testing.T) {
	t.Parallel()
	s := gartest.Start(t)
	s.Add(parent, "img", digest(1), []string{"a"}, 1)
	s.Add("projects/p/locations/us-central1/repositories/other", "img", digest(1), []string{"a"}, 1)
	c := client(t, s)

	tests := []struct {
		name   string
		parent string
		token  string
		want   codes.Code
	}{
		{name: "unknown repository", parent: "projects/p/locations/us-central1/repositories/nope", want: codes.NotFound},
		{name: "unknown project", parent: "projects/q/locations/us-central1/repositories/sciplat", want: codes.NotFound},
		{name: "malformed parent", parent: "projects/p/repositories/sciplat", want: codes.InvalidArgument},
		{name: "upper case location", parent: "projects/p/locations/US/repositories/sciplat", want: codes.InvalidArgument},
		{name: "empty parent", parent: "", want: codes.InvalidArgument},
		{name: "garbage token", parent: parent, token: "not a token", want: codes.InvalidArgument},
	}
	for _, tt := range tests {
		_, err := list(t, c, tt.parent, 0, tt.token)
		require.Equal(t, tt.want, status.Code(err), tt.name)
	}

	// A token is bound to its parent.
	s2 := gartest.Start(t, gartest.WithPageSizes(1, 1))
	s2.Add(parent, "img", digest(1), []string{"a"}, 1)
	s2.Add(parent, "img", digest(2), []string{"b"}, 1)
	s2.Add("projects/p/locations/us-central1/repositories/other", "img", digest(1), []string{"a"}, 1)
	c2 := client(t, s2)
	resp, err := list(t, c2, parent, 0, "")
	require.NoError(t, err)
	_, err = list(t, c2, "projects/p/locations/us-central1/repositories/other", 0, resp.GetNextPageToken())
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}

func TestInjection(t *testing.T) {
	t.Parallel()
	s := gartest.Start(t)
	s.Add(parent, "img", digest(1), []string{"a"}, 1)
	c := client(t, s)

	s.FailNext(2, status.Error(codes.Unavailable, "x"))
	for _, want := range []codes.Code{codes.Unavailable, codes.Unavailable, codes.OK} {
		_, err := list(t, c, parent, 0, "")
		require.Equal(t, want, status.Code(err))
	}

	s.SetError(status.Error(codes.PermissionDenied, "no"))
	_, err := list(t, c, parent, 0, "")
	require.Equal(t, codes.PermissionDenied, status.Code(err))
	s.SetError(nil)
	_, err = list(t, c, parent, 0, "")
	require.NoError(t, err)

	s.SetLatency(time.Minute)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = c.ListDockerImages(ctx, &artifactregistrypb.ListDockerImagesRequest{Parent: parent})
	require.Equal(t, codes.DeadlineExceeded, status.Code(err))

	reqs := s.Requests()
	require.Equal(t, len(reqs), s.Calls())
	require.Equal(t, codes.Unavailable, reqs[0].Code)
	require.Equal(t, codes.PermissionDenied, reqs[3].Code)
	require.Equal(t, parent, reqs[0].Parent)
}

func TestCloseTwice(t *testing.T) {
	t.Parallel()
	s, err := gartest.NewServer()
	require.NoError(t, err)
	s.Close()
	s.Close()
}

func TestAddFromRegistry(t *testing.T) {
	t.Parallel()
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	addr := strings.TrimPrefix(reg.URL, "http://")

	repo, err := name.NewRepository(addr+"/p/sciplat/sciplat-lab", name.Insecure)
	require.NoError(t, err)
	want := map[string]string{} // tag → digest
	var sizes = map[string]int64{}
	for i, tags := range [][]string{{"w_2024_01", "recommended"}, {"w_2024_02"}} {
		img, err := random.Image(int64(100*(i+1)), 2)
		require.NoError(t, err)
		d, err := img.Digest()
		require.NoError(t, err)
		mf, err := img.Manifest()
		require.NoError(t, err)
		size := mf.Config.Size
		for _, l := range mf.Layers {
			size += l.Size
		}
		sizes[d.String()] = size
		for _, tag := range tags {
			require.NoError(t, remote.Write(repo.Tag(tag), img, remote.WithContext(t.Context())))
			want[tag] = d.String()
		}
	}

	s := gartest.Start(t)
	require.NoError(t, s.AddFromRegistry(t.Context(), addr, "p/sciplat/sciplat-lab", parent, "sciplat-lab"))

	l, err := gar.New(t.Context(), gar.Config{
		ProjectID: "p", Location: "us-central1", Repository: "sciplat", Image: "sciplat-lab",
		Endpoint: s.Addr(), Insecure: true,
	})
	require.NoError(t, err)
	defer l.Close()
	got, err := l.ListImages(t.Context())
	require.NoError(t, err)
	require.Len(t, got, 3)
	for _, img := range got {
		require.Equal(t, want[img.Tag()], img.Digest, img.Tag())
		require.EqualValues(t, sizes[img.Digest], img.Size, img.Tag())
	}
	// Pulling Repository():tag from the registry the fake was filled from gives that digest
	// (hosts.toml does this redirect for containerd).
	tags, err := l.ListImages(t.Context())
	require.NoError(t, err)
	for _, tg := range tags {
		ref := strings.Replace(l.Repository(), "us-central1-docker.pkg.dev", addr, 1) + ":" + tg.Tag()
		r, err := name.ParseReference(ref, name.Insecure)
		require.NoError(t, err)
		desc, err := remote.Head(r, remote.WithContext(t.Context()))
		require.NoError(t, err)
		require.Equal(t, tg.Digest, desc.Digest.String())
	}

	err = s.AddFromRegistry(t.Context(), addr, "p/sciplat/missing", parent, "sciplat-lab")
	require.Error(t, err)
	err = s.AddFromRegistry(t.Context(), addr, "p/sciplat/sciplat-lab", "bad/parent", "sciplat-lab")
	require.ErrorContains(t, err, "malformed parent")
}
