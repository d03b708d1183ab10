package sources_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/registry"
	"github.com/cachemachine/cachemachine/rubintag"
	"github.com/cachemachine/cachemachine/sources"
)

func digest(n int) string { return fmt.Sprintf("sha256:%064x", n) }

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
	ref := func(tag string) image.Ref { return image.MustParseRef(repo + ":" + tag) }
	require.Equal(t, []image.Image{
		{Ref: ref("recommended"), Digest: digest(1), Name: "Recommended (Weekly 2024_10)", Size: 100, Priority: 0},
		{Ref: ref("r27_0_0"), Digest: digest(4), Name: "Release r27.0.0", Size: 100, Priority: 1},
		{Ref: ref("w_2024_10"), Digest: digest(1), Name: "Weekly 2024_10", Size: 100, Priority: 2},
		{Ref: ref("d_2024_03_05"), Digest: digest(3), Name: "Daily 2024_03_05", Size: 100, Priority: 3},
	}, got.Desired, "sizes come with the Artifact Registry listing")
	require.Len(t, got.All, 6, "every tag of the image, none of other-image")
	for _, img := range got.All {
		require.NotEmpty(t, img.Digest)
		require.Equal(t, img.Ref, ref(img.Name), "all_images are named by the raw tag")
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
	for _, img := range got.Desired {
		require.Positive(t, img.Size, "%s: size read from the manifest", img.Ref)
	}
	require.Greater(t, got.Desired[0].Size, uint64(32<<10), "the weekly's size: its 32 KiB layer and config")
}

// resolver answers from a table and fails for the rest; it counts its calls.
type resolver struct {
	mu    sync.Mutex // guards the fields below
	known map[string]image.Image
	down  bool
	calls int
}

func (r *resolver) Resolve(_ context.Context, ref image.Ref) (image.Image, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if img, ok := r.known[ref.String()]; ok && !r.down {
		return img, nil
	}
	return image.Image{}, fmt.Errorf("resolve %s: registry down", ref)
}

func (r *resolver) setDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
}

func TestSimpleSourceResolvesDigestsWhenItCan(t *testing.T) {
	t.Parallel()
	b, c, d := image.MustParseRef("ghcr.io/a/b:1"), image.MustParseRef("ghcr.io/a/c:2"), image.MustParseRef("ghcr.io/a/d:3")
	res := &resolver{known: map[string]image.Image{
		b.String():                       {Ref: b, Digest: digest(1), Size: 10},
		d.WithDigest(digest(9)).String(): {Ref: d, Digest: digest(9), Size: 30}, // pinned: asked by digest
	}}
	src := sources.NewSimple("simple", []image.Image{
		{Ref: b, Name: "One"},
		{Ref: c},
		{Ref: d, Digest: digest(9), Name: "pinned"},
	}, res)
	got, err := src.List(t.Context())
	require.ErrorContains(t, err, "resolve ghcr.io/a/c:2: registry down", "a failed lookup is the source's error")
	require.True(t, got.Partial, "the list is used despite the error")
	want := []image.Image{
		{Ref: b, Digest: digest(1), Name: "One", Size: 10, Priority: 0},
		{Ref: c, Name: "2", Priority: 1},
		{Ref: d, Digest: digest(9), Name: "pinned", Size: 30, Priority: 2},
	}
	require.Equal(t, want, got.Desired)
	require.Empty(t, got.All, "a fixed list adds nothing to all_images, as in the Python cachemachine")

	// During an outage the last resolved digests stay in force.
	res.setDown(true)
	got, err = src.List(t.Context())
	require.ErrorContains(t, err, "resolve ghcr.io/a/b:1: registry down")
	require.Equal(t, want, got.Desired, "the last known digests and sizes are kept")
}

// TestSimplePinnedImagesNeedNoHEAD: an image whose digest the config pins is resolved by
// digest, so its size is read once and a registry that is down later does not make the list
// Partial.
func TestSimplePinnedImagesNeedNoHEAD(t *testing.T) {
	t.Parallel()
	reg := lab.NewRegistry(t, lab.RegistryOptions{})
	d, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_10"}, 16<<10, 1, nil)
	require.NoError(t, err)
	ref := image.MustParseRef(reg.Addr + "/lsst/lab:w_2024_10")
	src := sources.NewSimple("simple", []image.Image{{Ref: ref, Digest: d}}, registry.NewResolver(nil))
	got, err := src.List(t.Context())
	require.NoError(t, err)
	require.Equal(t, d, got.Desired[0].Digest)
	require.Greater(t, got.Desired[0].Size, uint64(16<<10))
	size := got.Desired[0].Size

	require.NoError(t, reg.Stop())
	got, err = src.List(t.Context())
	require.NoError(t, err, "nothing to ask the registry: the digest is pinned and the size known")
	require.False(t, got.Partial)
	require.Equal(t, []image.Image{{Ref: ref, Digest: d, Name: "w_2024_10", Size: size}}, got.Desired)
}

func names(imgs []image.Image) []string {
	var out []string
	for _, i := range imgs {
		out = append(out, i.Name)
	}
	return out
}

// TestRubinAllImagesNewestNameFirst lists all_images as the Python cachemachine did: tag names
// in reverse order (its rubinrepoman_test data), for registry and Artifact Registry alike.
func TestRubinAllImagesNewestNameFirst(t *testing.T) {
	t.Parallel()
	python := []string{"w_2021_22", "w_2021_21_c0021.003", "w_2021_19_c0020.001", "w_2021_03", "recommended",
		"r22_0_0_rc1", "r21_0_0", "prepuller_pulled_recommended", "d_2021_01_13", "d_2021_01_12"}
	shuffled := []string{"d_2021_01_12", "recommended", "w_2021_03", "r21_0_0", "w_2021_22", "prepuller_pulled_recommended",
		"w_2021_19_c0020.001", "d_2021_01_13", "r22_0_0_rc1", "w_2021_21_c0021.003"}

	t.Run("artifact registry", func(t *testing.T) {
		t.Parallel()
		srv := gartest.Start(t)
		const parent = "projects/p/locations/us-central1/repositories/sciplat"
		for i, tag := range shuffled {
			srv.Add(parent, "sciplat-lab", digest(i), []string{tag}, 1)
		}
		l, err := gar.New(t.Context(), gar.Config{ProjectID: "p", Location: "us-central1", Repository: "sciplat", Image: "sciplat-lab", Endpoint: srv.Addr(), Insecure: true})
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		got, err := sources.NewRubin("gar", l, rubintag.Policy{RecommendedTag: "recommended"}).List(t.Context())
		require.NoError(t, err)
		require.Equal(t, python, names(got.All))
	})
	t.Run("registry", func(t *testing.T) {
		t.Parallel()
		reg := lab.NewRegistry(t, lab.RegistryOptions{})
		_, err := lab.PushRandomImage(t.Context(), reg.Addr, "lsst/lab", shuffled, 1<<10, 1, nil)
		require.NoError(t, err)
		l, err := registry.New(registry.Config{RegistryURL: reg.Addr, Repo: "lsst/lab"})
		require.NoError(t, err)
		got, err := sources.NewRubin("reg", l, rubintag.Policy{RecommendedTag: "recommended"}).List(t.Context())
		require.NoError(t, err)
		require.Equal(t, python, names(got.All))
	})
}

// sizedLister lists fixed images without sizes; its Size hangs for the digests in hang until
// ctx ends and answers 7 for the others.
type sizedLister struct {
	imgs []image.Image
	hang map[string]bool
}

func (l *sizedLister) Repository() string { return "registry.example.org/lsst/lab" }

func (l *sizedLister) ListImages(context.Context) ([]image.Image, error) {
	return slices.Clone(l.imgs), nil
}

func (l *sizedLister) Size(ctx context.Context, digest string) (uint64, error) {
	if l.hang[digest] {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return 7, nil
}

// TestRubinSizeReadsAreBounded: a size read that stalls costs LookupTimeout and leaves that
// size out; it neither uses the source's whole deadline nor discards the listing.
func TestRubinSizeReadsAreBounded(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ref := func(tag string) image.Ref { return image.MustParseRef("registry.example.org/lsst/lab:" + tag) }
		l := &sizedLister{
			imgs: []image.Image{{Ref: ref("w_2024_10"), Digest: digest(1)}, {Ref: ref("w_2024_09"), Digest: digest(2)}},
			hang: map[string]bool{digest(1): true},
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2*sources.LookupTimeout)
		defer cancel()
		start := time.Now()
		got, err := sources.NewRubin("reg", l, rubintag.Policy{NumWeeklies: 2}).List(ctx)
		require.NoError(t, err)
		require.Equal(t, sources.LookupTimeout, time.Since(start), "one stalled read, bounded")
		require.Equal(t, []string{"w_2024_10", "w_2024_09"}, tags(got.Desired))
		require.Equal(t, []uint64{0, 7}, []uint64{got.Desired[0].Size, got.Desired[1].Size}, "the stalled size is left out")
	})
}

func tags(imgs []image.Image) []string {
	var out []string
	for _, img := range imgs {
		out = append(out, img.Tag())
	}
	return out
}
