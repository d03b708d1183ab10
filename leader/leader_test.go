package leader_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/leader"
	"github.com/cachemachine/cachemachine/sources"
	"github.com/cachemachine/cachemachine/status"
)

func digest(n int) string { return fmt.Sprintf("sha256:%064x", n) }

// published counts the desired lists the agent took.
func published(a *coordinatortest.Agent) int {
	n := 0
	for _, c := range a.Calls() {
		if strings.HasPrefix(c, "set ") {
			n++
		}
	}
	return n
}

// scripted is a source whose answers are set by the test; hang makes List wait for ctx, slow
// makes it take that long.
type scripted struct {
	name string
	mu   sync.Mutex // guards the fields below
	l    sources.Listing
	err  error
	hang bool
	slow time.Duration
	n    int
}

func (s *scripted) Name() string { return s.name }
func (s *scripted) List(ctx context.Context) (sources.Listing, error) {
	s.mu.Lock()
	s.n++
	l, err, hang, slow := s.l, s.err, s.hang, s.slow
	s.mu.Unlock()
	if hang {
		<-ctx.Done()
		return sources.Listing{}, ctx.Err()
	}
	select {
	case <-ctx.Done():
		return sources.Listing{}, ctx.Err()
	case <-time.After(slow):
	}
	return l, err
}
func (s *scripted) set(l sources.Listing, err error, hang bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.l, s.err, s.hang = l, err, hang
}
func (s *scripted) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func img(ref, name string, n int) image.Image {
	return image.Image{Ref: image.MustParseRef(ref), Digest: digest(n), Name: name}
}

func refs(imgs []image.Image) []string {
	var out []string
	for _, i := range imgs {
		out = append(out, i.Ref.String())
	}
	return out
}

func start(t *testing.T, cfg leader.Config, srcs ...leader.Source) (*leader.Leader, *coordinatortest.Agent) {
	t.Helper()
	loc := coordinatortest.NewAgent("n1")
	return startOn(t, loc, cfg, srcs...), loc
}

// startOn runs a standalone leader over srcs on loc, the node's agent (with the list in force
// the test gave it).
func startOn(t *testing.T, loc *coordinatortest.Agent, cfg leader.Config, srcs ...leader.Source) *leader.Leader {
	t.Helper()
	l, err := leader.New(cfg, srcs, coordinator.NewStandalone("n1", "127.0.0.1:1", loc), loc, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return l
}

// complete reports whether every source has a listing in force (listed in this term).
func complete(r leader.Result) bool {
	for _, s := range r.Sources {
		if s.ListedAt.IsZero() {
			return false
		}
	}
	return true
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 10*time.Second, 5*time.Millisecond, what)
}

func TestFailingSourceKeepsItsLastGoodListing(t *testing.T) {
	t.Parallel()
	a := &scripted{name: "a", l: sources.Listing{All: []image.Image{img("r.example/a:1", "1", 1)}, Desired: []image.Image{img("r.example/a:1", "A", 1)}}}
	b := &scripted{name: "b", l: sources.Listing{Desired: []image.Image{img("r.example/b:1", "B", 2), img("r.example/a:1", "dup", 1)}}}
	l, loc := start(t, leader.Config{RefreshInterval: time.Hour}, a, b)

	eventually(t, "the first list", func() bool { return len(loc.Desired().Images) == 2 })
	res := l.Result()
	require.True(t, complete(res))
	got := loc.Desired().Images
	require.Equal(t, []string{"r.example/a:1", "r.example/b:1"}, refs(got), "config order, first source wins a duplicate")
	require.Equal(t, []int{0, 1}, []int{got[0].Priority, got[1].Priority})
	require.Empty(t, res.Sources[0].Error)

	a.set(sources.Listing{}, errors.New("list projects/p/locations/l/repositories/r: permission denied"), false)
	b.set(sources.Listing{Desired: []image.Image{img("r.example/b:2", "B2", 3)}}, nil, false)
	err := l.Refresh(t.Context())
	require.ErrorIs(t, err, leader.ErrSourceFailed)
	require.ErrorContains(t, err, "a: list projects/p/locations/l/repositories/r: permission denied", "reconcile names the failed source")
	res = l.Result()
	require.Contains(t, res.Sources[0].Error, "permission denied")
	require.False(t, res.Sources[0].ListedAt.IsZero())
	require.Empty(t, res.Sources[1].Error)
	eventually(t, "the new list published", func() bool { r := refs(loc.Desired().Images); return len(r) > 1 && r[1] == "r.example/b:2" })
	require.Equal(t, []string{"r.example/a:1", "r.example/b:2"}, refs(loc.Desired().Images), "a keeps its last good list, b moves on")
}

// TestHungSourceDelaysNobody: a source that never answers neither stops the others' images
// from being published nor makes a reconcile hang.
func TestHungSourceDelaysNobody(t *testing.T) {
	t.Parallel()
	hung := &scripted{name: "repomen[0] RubinRepoMan 10.0.0.1:5000/hung", hang: true}
	good := &scripted{name: "repomen[1] SimpleRepoMan", l: sources.Listing{Desired: []image.Image{img("r.example/good:1", "Good", 1)}}}
	l, loc := start(t, leader.Config{RefreshInterval: time.Hour, SourceTimeout: 2 * time.Second, FirstListingGrace: 100 * time.Millisecond, ReconcileWait: 100 * time.Millisecond}, hung, good)

	eventually(t, "the healthy source's images published", func() bool { return len(loc.Desired().Images) == 1 })
	require.True(t, l.Result().Sources[0].Listing, "the hung source is still listing")

	started := time.Now()
	err := l.Refresh(t.Context())
	require.ErrorIs(t, err, leader.ErrLate)
	require.ErrorContains(t, err, "10.0.0.1:5000/hung", "the late source is named")
	require.NotContains(t, err.Error(), "SimpleRepoMan", "the healthy source answered")
	require.Less(t, time.Since(started), time.Second, "reconcile answers within its bound")

	eventually(t, "the hung listing timed out", func() bool { return l.Result().Sources[0].Error != "" })
	require.Contains(t, l.Result().Sources[0].Error, "no answer within 2s")
	require.False(t, complete(l.Result()))
	require.Len(t, loc.Desired().Images, 1, "the healthy source's images stay")
}

// TestSlowSourceAtAFailoverUnpinsNothing: a new leader whose second source (of neither known
// kind, so every image may be its) has not answered within the first-listing grace publishes
// the first source's list, keeping in the slow source's place every image it inherited, but
// not the first source's later drops; once every source has listed, what none selects leaves.
func TestSlowSourceAtAFailoverUnpinsNothing(t *testing.T) {
	t.Parallel()
	fast := &scripted{name: "fast", l: sources.Listing{Desired: []image.Image{img("r.example/a:2", "A2", 2)}}}
	slow := &scripted{name: "slow", l: sources.Listing{Desired: []image.Image{img("r.example/b:1", "B1", 11)}}, hang: true}
	loc := coordinatortest.NewAgent("n1")
	loc.SetDesired(agent.Desired{Version: 7, Images: []image.Image{img("r.example/a:1", "A1", 1), img("r.example/b:1", "B1", 11)}})
	l := startOn(t, loc, leader.Config{RefreshInterval: time.Hour, SourceTimeout: 300 * time.Millisecond, FirstListingGrace: 100 * time.Millisecond}, fast, slow)

	eventually(t, "the fast source's list published", func() bool { return loc.Desired().Version > 7 })
	got := loc.Desired().Images
	require.Equal(t, []string{"r.example/a:2", "r.example/a:1", "r.example/b:1"}, refs(got), "the listed source's images, then everything inherited")
	require.Equal(t, []int{0, 1, 2}, []int{got[0].Priority, got[1].Priority, got[2].Priority})
	require.False(t, complete(l.Result()))

	// What the fast source drops in this term leaves: only the inherited list is kept.
	fast.set(sources.Listing{Desired: []image.Image{img("r.example/a:3", "A3", 3)}}, nil, false)
	_ = l.Refresh(t.Context()) // the slow source is late
	eventually(t, "a:2 dropped, the inherited images kept", func() bool {
		return slices.Equal(refs(loc.Desired().Images), []string{"r.example/a:3", "r.example/a:1", "r.example/b:1"})
	})

	slow.set(slow.l, nil, false)
	require.NoError(t, l.Refresh(t.Context()))
	eventually(t, "every source listed: what none selects leaves", func() bool {
		return slices.Equal(refs(loc.Desired().Images), []string{"r.example/a:3", "r.example/b:1"})
	})
}

// TestSlowRepositorySourceKeepsOnlyItsImages: while a source that lists one repository, first
// in config order, has not answered, its inherited images keep their place at the top and the
// other source's removals happen.
func TestSlowRepositorySourceKeepsOnlyItsImages(t *testing.T) {
	t.Parallel()
	slow := repoSource{&scripted{name: "slow", l: sources.Listing{Desired: []image.Image{img("r.example/b:2", "B2", 12)}}, hang: true}, "r.example/b"}
	fast := repoSource{&scripted{name: "fast", l: sources.Listing{Desired: []image.Image{img("r.example/a:2", "A2", 2)}}}, "r.example/a"}
	loc := coordinatortest.NewAgent("n1")
	loc.SetDesired(agent.Desired{Version: 7, Images: []image.Image{img("r.example/b:1", "B1", 11), img("r.example/a:1", "A1", 1)}})
	l := startOn(t, loc, leader.Config{RefreshInterval: time.Hour, SourceTimeout: 300 * time.Millisecond, FirstListingGrace: 100 * time.Millisecond}, slow, fast)

	eventually(t, "the fast source's list published", func() bool { return loc.Desired().Version > 7 })
	require.Equal(t, []string{"r.example/b:1", "r.example/a:2"}, refs(loc.Desired().Images), "b:1 stays first (its source did not list), a:1 leaves (its source listed)")

	slow.set(slow.l, nil, false)
	require.NoError(t, l.Refresh(t.Context()))
	eventually(t, "every source listed", func() bool {
		return slices.Equal(refs(loc.Desired().Images), []string{"r.example/b:2", "r.example/a:2"})
	})
}

// hangingResolver answers no lookup until ctx ends.
type hangingResolver struct{}

func (hangingResolver) Resolve(ctx context.Context, _ image.Ref) (image.Image, error) {
	<-ctx.Done()
	return image.Image{}, ctx.Err()
}

// TestSlowFixedListKeepsOnlyItsImages: a SimpleRepoMan still looking its digests up after the
// grace keeps its own inherited images, in its place; an inherited image no source can have
// selected leaves.
func TestSlowFixedListKeepsOnlyItsImages(t *testing.T) {
	t.Parallel()
	fixed := image.Image{Ref: image.MustParseRef("s.example/fixed:1"), Name: "Fixed"}
	simple := sources.NewSimple("simple", []image.Image{fixed}, hangingResolver{})
	fast := repoSource{&scripted{name: "fast", l: sources.Listing{Desired: []image.Image{img("r.example/a:2", "A2", 2)}}}, "r.example/a"}
	loc := coordinatortest.NewAgent("n1")
	loc.SetDesired(agent.Desired{Version: 7, Images: []image.Image{img("r.example/gone:1", "Gone", 9), img("s.example/fixed:1", "Fixed", 8)}})
	startOn(t, loc, leader.Config{RefreshInterval: time.Hour, SourceTimeout: time.Minute, FirstListingGrace: 100 * time.Millisecond}, simple, fast)
	eventually(t, "published after the grace", func() bool { return loc.Desired().Version > 7 })
	got := loc.Desired().Images
	require.Equal(t, []string{"s.example/fixed:1", "r.example/a:2"}, refs(got))
	require.Equal(t, digest(8), got[0].Digest, "the fixed image keeps its inherited digest")
}

// TestNothingListedKeepsTheListInForce: when no source has listed by the end of the grace,
// nothing is published, even though no source claims the images in force.
func TestNothingListedKeepsTheListInForce(t *testing.T) {
	t.Parallel()
	src := repoSource{&scripted{name: "s", hang: true}, "r.example/new"}
	loc := coordinatortest.NewAgent("n1")
	loc.SetDesired(agent.Desired{Version: 7, Images: []image.Image{img("r.example/old:1", "Old", 1)}})
	l := startOn(t, loc, leader.Config{RefreshInterval: time.Hour, SourceTimeout: 200 * time.Millisecond, FirstListingGrace: 50 * time.Millisecond}, src)
	eventually(t, "the listing timed out", func() bool { return l.Result().Sources[0].Error != "" })
	require.Equal(t, uint64(7), loc.Desired().Version, "nothing published")
}

// TestSupersededPublishesAfterListing: told that a node holds a newer list than its own, the
// leader lists its sources again and publishes its selection under a new version, although
// it did not change.
func TestSupersededPublishesAfterListing(t *testing.T) {
	t.Parallel()
	src := &scripted{name: "s", l: sources.Listing{Desired: []image.Image{img("r.example/lab:w10", "Weekly 10", 10)}}}
	loc := coordinatortest.NewAgent("n1")
	cl := &switchable{self: true, changes: make(chan struct{}), superseded: make(chan struct{}, 1), local: loc}
	l, err := leader.New(leader.Config{RefreshInterval: time.Hour, FirstListingGrace: 100 * time.Millisecond}, []leader.Source{src}, cl, loc, nil, nil)
	require.NoError(t, err)
	run(t, l)
	eventually(t, "w10 published", func() bool { return len(loc.Desired().Images) == 1 })
	v, calls := loc.Desired().Version, src.calls()

	cl.superseded <- struct{}{}
	eventually(t, "published again after a new listing", func() bool { return loc.Desired().Version > v })
	require.Greater(t, src.calls(), calls, "listed again first")
	require.Equal(t, []string{"r.example/lab:w10"}, refs(loc.Desired().Images))
}

// TestPublishesOnlyChanges: refreshing an unchanged listing publishes no new version.
func TestPublishesOnlyChanges(t *testing.T) {
	t.Parallel()
	src := &scripted{name: "s", l: sources.Listing{Desired: []image.Image{img("r.example/a:1", "A", 1)}}}
	l, loc := start(t, leader.Config{RefreshInterval: time.Hour}, src)
	eventually(t, "the first list", func() bool { return published(loc) == 1 })
	v := loc.Desired().Version
	for range 3 {
		require.NoError(t, l.Refresh(t.Context()))
	}
	require.Equal(t, 4, src.calls())
	require.Equal(t, 1, published(loc), "an unchanged list is not published again")
	require.Equal(t, v, loc.Desired().Version)

	src.set(sources.Listing{Desired: []image.Image{img("r.example/a:2", "A2", 2)}}, nil, false)
	require.NoError(t, l.Refresh(t.Context()))
	eventually(t, "the changed list published", func() bool { return published(loc) == 2 })
	require.Greater(t, loc.Desired().Version, v)
}

// TestShortNameBecomesAvailable: a SimpleRepoMan image given as a Docker Hub short name
// without a resolvable digest is pulled as docker.io/…; the status matches it as such.
func TestShortNameBecomesAvailable(t *testing.T) {
	t.Parallel()
	cfg := config.Default()
	cfg.Cluster.Enabled = false
	cfg.Repomen = []config.Repoman{{Type: config.TypeSimpleRepoMan, Images: []config.Image{{ImageURL: "lsstsqre/sciplat-lab:recommended", Name: "Recommended"}}}}
	require.NoError(t, cfg.Validate())
	ref := cfg.Repomen[0].Images[0].Ref
	require.Equal(t, "docker.io/lsstsqre/sciplat-lab:recommended", ref.String(), "normalised where it enters")

	src := sources.NewSimple("simple", []image.Image{{Ref: ref, Name: "Recommended"}}, nil)
	l, loc := start(t, leader.Config{RefreshInterval: time.Hour}, src)
	eventually(t, "the list published", func() bool { return len(loc.Desired().Images) == 1 })
	loc.Update(func(st *agent.State) {
		st.Images = []agent.CachedImage{{ID: "sha256:c", Tags: []string{"docker.io/lsstsqre/sciplat-lab:recommended"}, Digests: []string{"docker.io/lsstsqre/sciplat-lab@" + digest(7)}}}
	})

	in, _, _, self := l.Snapshot()
	require.True(t, self)
	d := status.Compute(in)
	require.Len(t, d.AvailableImages, 1, "available under its normal name")
	require.Empty(t, d.ImagesToCache)
	require.Equal(t, "docker.io/lsstsqre/sciplat-lab:recommended", d.AvailableImages[0].ImageURL)
	require.Empty(t, d.AllImages, "a fixed list adds nothing to all_images")
}

// TestRefreshListsAfterItWasAsked: a reconcile asked for while a listing is in flight used to
// answer with that listing's outcome; after the registry was fixed, `debug reconcile` still
// said the source had failed. Refresh now waits for a listing that started after it was asked.
func TestRefreshListsAfterItWasAsked(t *testing.T) {
	t.Parallel()
	src := &scripted{name: "repomen[0] RubinRepoMan 10.0.0.1:5000/lab", hang: true}
	l, loc := start(t, leader.Config{RefreshInterval: time.Hour, SourceTimeout: 500 * time.Millisecond, FirstListingGrace: 100 * time.Millisecond, ReconcileWait: 5 * time.Second}, src)
	eventually(t, "the first listing in flight", func() bool { return l.Result().Sources[0].Listing })

	src.set(sources.Listing{Desired: []image.Image{img("r.example/lab:1", "Lab", 1)}}, nil, false) // the registry is fixed
	src.mu.Lock()
	src.slow = 200 * time.Millisecond // a listing takes a moment, as over a network
	src.mu.Unlock()
	require.NoError(t, l.Refresh(t.Context()), "the reconcile's own listing succeeded")
	require.Empty(t, l.Result().Sources[0].Error)
	require.Equal(t, 2, src.calls(), "the hung listing, then the reconcile's")
	eventually(t, "the list published", func() bool { return len(loc.Desired().Images) == 1 })
}

// TestLeadingAgainDoesNotRepublishOldListings: a node that led, lost the lead while another
// leader published a newer list, and leads again while its source fails must not bring its
// old listing back as the desired list.
func TestLeadingAgainDoesNotRepublishOldListings(t *testing.T) {
	t.Parallel()
	src := &scripted{name: "s", l: sources.Listing{Desired: []image.Image{img("r.example/lab:w10", "Weekly 10", 10)}}}
	loc := coordinatortest.NewAgent("n1")
	cl := &switchable{self: true, changes: make(chan struct{}), local: loc}
	l, err := leader.New(leader.Config{RefreshInterval: time.Hour, FirstListingGrace: 100 * time.Millisecond}, []leader.Source{src}, cl, loc, nil, nil)
	require.NoError(t, err)
	run(t, l)
	eventually(t, "w10 published", func() bool { return len(loc.Desired().Images) == 1 })

	cl.set(false)
	eventually(t, "the lead lost: the old term's listing forgotten", func() bool { return l.Result().Sources[0].ListedAt.IsZero() })
	// The other leader publishes w11; then the registry breaks.
	loc.SetDesired(agent.Desired{Version: loc.Desired().Version + 1_000_000, Images: []image.Image{img("r.example/lab:w11", "Weekly 11", 11)}})
	src.set(sources.Listing{}, errors.New("registry down"), false)
	cl.set(true)
	eventually(t, "the failed listing of the new term", func() bool { return l.Result().Sources[0].Error != "" })
	time.Sleep(300 * time.Millisecond) // past the first-listing grace: nothing more to wait for
	require.Equal(t, []string{"r.example/lab:w11"}, refs(loc.Desired().Images), "the list in force stays; the old listing does not come back")
	require.False(t, complete(l.Result()))
}
