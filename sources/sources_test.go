package sources_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/registry"
	"github.com/cachemachine/cachemachine/rubintag"
	"github.com/cachemachine/cachemachine/sources"
)

func digest(n int) string { return fmt.Sprintf("sha256:%064x", n) }

// flaky is a source whose next List answers are scripted.
type flaky struct {
	name string
	mu   sync.Mutex // guards the fields below
	l    sources.Listing
	err  error
}

func (f *flaky) Name() string { return f.name }
func (f *flaky) List(context.Context) (sources.Listing, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.l, f.err
}
func (f *flaky) set(l sources.Listing, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.l, f.err = l, err
}

func TestFailingSourceKeepsItsLastGoodListing(t *testing.T) {
	t.Parallel()
	a := &flaky{name: "a", l: sources.Listing{All: []sources.Image{{URL: "r/a:1"}}, Desired: []sources.Image{{URL: "r/a:1", Name: "A"}}}}
	b := &flaky{name: "b", l: sources.Listing{All: []sources.Image{{URL: "r/b:1"}}, Desired: []sources.Image{{URL: "r/b:1", Name: "B"}, {URL: "r/a:1", Name: "dup"}}}}
	set := sources.NewSet([]sources.Source{a, b}, nil, nil)

	res := set.Refresh(t.Context())
	require.True(t, res.Complete)
	require.Equal(t, []string{"r/a:1", "r/b:1"}, urls(res.Desired), "config order, first source wins a duplicate")
	require.Empty(t, res.Sources[0].Error)

	a.set(sources.Listing{}, errors.New("list projects/p/locations/l/repositories/r: permission denied"))
	b.set(sources.Listing{All: []sources.Image{{URL: "r/b:2"}}, Desired: []sources.Image{{URL: "r/b:2", Name: "B2"}}}, nil)
	res = set.Refresh(t.Context())
	require.Equal(t, []string{"r/a:1", "r/b:2"}, urls(res.Desired), "a keeps its last good list, b moves on")
	require.Contains(t, res.Sources[0].Error, "permission denied")
	require.False(t, res.Sources[0].ListedAt.IsZero())
	require.Empty(t, res.Sources[1].Error)

	// A source that never succeeded contributes nothing and marks the result incomplete.
	c := &flaky{name: "c", err: errors.New("down")}
	res = sources.NewSet([]sources.Source{c, b}, nil, nil).Refresh(t.Context())
	require.False(t, res.Complete)
	require.Equal(t, []string{"r/b:2"}, urls(res.Desired))
}

func TestRubinSourceOverFakeArtifactRegistry(t *testing.T) {
	t.Parallel()
	srv := gartest.Start(t)
	const parent = "projects/p/locations/us-central1/repositories/sciplat"
	srv.Add(parent, "sciplat-lab", digest(1), []string{"w_2024_10", "recommended"}, 100)
	srv.Add(parent, "sciplat-lab", digest(2), []string{"w_2024_09"}, 100)
	srv.Add(parent, "sciplat-lab", digest(3), []string{"d_2024_03_05"}, 100)
	srv.Add(parent, "sciplat-lab", digest(4), []string{"r27_0_0", "exp_thing"}, 100)
	srv.Add(parent, "other-image", digest(5), []string{"w_2024_11"}, 100)
	l, err := gar.New(t.Context(), gar.Config{ProjectID: "p", Location: "us-central1", Repository: "sciplat", Image: "sciplat-lab", Endpoint: srv.Addr(), Insecure: true})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })

	src := sources.NewRubin("gar", l, rubintag.Policy{RecommendedTag: "recommended", NumReleases: 1, NumWeeklies: 1, NumDailies: 1})
	got, err := src.List(t.Context())
	require.NoError(t, err)
	const repo = "us-central1-docker.pkg.dev/p/sciplat/sciplat-lab"
	require.Equal(t, []sources.Image{
		{URL: repo + ":recommended", Digest: digest(1), Name: "Recommended (Weekly 2024_10)"},
		{URL: repo + ":r27_0_0", Digest: digest(4), Name: "Release r27.0.0"},
		{URL: repo + ":w_2024_10", Digest: digest(1), Name: "Weekly 2024_10"},
		{URL: repo + ":d_2024_03_05", Digest: digest(3), Name: "Daily 2024_03_05"},
	}, got.Desired)
	require.Len(t, got.All, 6, "every tag of the image, none of other-image")
	for _, img := range got.All {
		require.NotEmpty(t, img.Digest)
		require.Equal(t, img.URL, repo+":"+img.Name, "all_images are named by the raw tag")
	}
}

func TestRubinSourceResolvesOnlyTheTagsItNeeds(t *testing.T) {
	t.Parallel()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	weekly, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_10", "recommended"}, 32<<10, 1, nil)
	require.NoError(t, err)
	for i := 1; i <= 9; i++ {
		_, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{fmt.Sprintf("w_2024_0%d", i)}, 16<<10, 1, nil)
		require.NoError(t, err)
	}
	l, err := registry.New(registry.Config{RegistryURL: reg.Addr, Repo: "lsst/lab"})
	require.NoError(t, err)
	src := sources.NewRubin("reg", l, rubintag.Policy{RecommendedTag: "recommended", NumWeeklies: 2})
	got, err := src.List(t.Context())
	require.NoError(t, err)
	require.Equal(t, []string{"Recommended (Weekly 2024_10)", "Weekly 2024_10", "Weekly 2024_09"}, names(got.Desired))
	require.Equal(t, weekly, got.Desired[0].Digest)
	require.Equal(t, weekly, got.Desired[1].Digest)
	resolved := 0
	for _, img := range got.All {
		if img.Digest != "" {
			resolved++
		}
	}
	require.Equal(t, 3, resolved, "only recommended and the two selected weeklies are resolved, not all 11 tags")
}

func TestSimpleSourceResolvesDigestsWhenItCan(t *testing.T) {
	t.Parallel()
	src := sources.NewSimple("simple", []sources.Image{
		{URL: "ghcr.io/a/b:1", Name: "One"},
		{URL: "ghcr.io/a/c:2"},
		{URL: "ghcr.io/a/d:3", Digest: digest(9), Name: "pinned"},
	}, func(_ context.Context, ref string) (string, error) {
		if ref == "ghcr.io/a/b:1" {
			return digest(1), nil
		}
		return "", errors.New("registry down")
	}, nil)
	got, err := src.List(t.Context())
	require.NoError(t, err)
	require.Equal(t, []sources.Image{
		{URL: "ghcr.io/a/b:1", Digest: digest(1), Name: "One"},
		{URL: "ghcr.io/a/c:2", Name: "2"},
		{URL: "ghcr.io/a/d:3", Digest: digest(9), Name: "pinned"},
	}, got.Desired)
	require.Equal(t, []string{"1", "2", "3"}, names(got.All))
}

func urls(imgs []sources.Image) []string {
	var out []string
	for _, i := range imgs {
		out = append(out, i.URL)
	}
	return out
}

func names(imgs []sources.Image) []string {
	var out []string
	for _, i := range imgs {
		out = append(out, i.Name)
	}
	return out
}
