package leader_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/leader"
	"github.com/cachemachine/cachemachine/sources"
)

// repoSource is a scripted source that lists one repository.
type repoSource struct {
	*scripted
	repo string
}

func (r repoSource) Repository() string { return r.repo }

// fakeTrigger records its Watch calls and hands the test what the running one was given.
type fakeTrigger struct {
	name string
	fail error // Watch returns it at once when set

	mu      sync.Mutex // guards the fields below
	ev      *events
	running bool
	starts  int
}

// events is what a running Watch was given.
type events struct {
	changed func(string) bool
	report  func(error)
}

func (e *events) Changed(repo string) bool { return e.changed(repo) }
func (e *events) Report(err error)         { e.report(err) }

func (f *fakeTrigger) Name() string { return f.name }

func (f *fakeTrigger) Watch(ctx context.Context, changed func(string) bool, report func(error)) error {
	ev := &events{changed: changed, report: report}
	f.mu.Lock()
	f.starts++
	if f.fail != nil {
		f.mu.Unlock()
		return f.fail
	}
	f.ev, f.running = ev, true
	f.mu.Unlock()
	<-ctx.Done()
	f.mu.Lock()
	f.ev, f.running = nil, false
	f.mu.Unlock()
	return nil
}

func (f *fakeTrigger) events() *events {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ev
}

func (f *fakeTrigger) state() (running bool, starts int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running, f.starts
}

// switchable is a cluster whose leadership the test switches.
type switchable struct {
	mu         sync.Mutex // guards self
	self       bool
	changes    chan struct{}
	superseded chan struct{} // nil: never
	local      *coordinatortest.Agent
}

func (s *switchable) Leader() (string, string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.self {
		return "n1", "127.0.0.1:1", true
	}
	return "n0", "127.0.0.1:2", false
}
func (s *switchable) NodeStates() []coordinator.NodeState { return nil }
func (s *switchable) PublishDesired(imgs []image.Image) (uint64, error) {
	v := s.local.Desired().Version + 1
	s.local.SetDesired(agent.Desired{Version: v, Images: imgs})
	return v, nil
}
func (s *switchable) LeaderChanges() <-chan struct{} { return s.changes }
func (s *switchable) Superseded() <-chan struct{}    { return s.superseded }
func (s *switchable) set(self bool) {
	s.mu.Lock()
	s.self = self
	s.mu.Unlock()
	s.changes <- struct{}{}
}

func run(t *testing.T, l *leader.Leader) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
}

// TestEventListsItsSourceOnceAfterTheDebounce: a burst of events for one repository makes one
// listing of the sources that list it, within the debounce; other sources and other
// repositories are left alone.
func TestEventListsItsSourceOnceAfterTheDebounce(t *testing.T) {
	t.Parallel()
	a := repoSource{&scripted{name: "a", l: sources.Listing{Desired: []image.Image{img("r.example/a:1", "A", 1)}}}, "r.example/a"}
	b := repoSource{&scripted{name: "b", l: sources.Listing{Desired: []image.Image{img("r.example/b:1", "B", 2)}}}, "r.example/b"}
	trig := &fakeTrigger{name: "pushes"}
	loc := coordinatortest.NewAgent("n1")
	l, err := leader.New(leader.Config{RefreshInterval: time.Hour, EventDebounce: 200 * time.Millisecond}, []leader.Source{a, b},
		coordinator.NewStandalone("n1", "127.0.0.1:1", loc), loc, nil, nil, leader.WithTrigger(trig, 0))
	require.NoError(t, err)
	run(t, l)
	eventually(t, "the first listing and the trigger running", func() bool {
		return a.calls() == 1 && b.calls() == 1 && trig.events() != nil
	})
	require.Equal(t, "pushes", l.Result().Sources[0].Triggers)
	require.Empty(t, l.Result().Sources[1].Triggers)

	ev := trig.events()
	a.set(sources.Listing{Desired: []image.Image{img("r.example/a:2", "A2", 3)}}, nil, false)
	sent := time.Now()
	for range 5 { // one push: the digest, then each tag
		require.True(t, ev.Changed("r.example/a"))
	}
	require.False(t, ev.Changed("r.example/other"), "no source lists it")
	eventually(t, "the new list published", func() bool { r := refs(loc.Desired().Images); return len(r) > 0 && r[0] == "r.example/a:2" })
	require.GreaterOrEqual(t, time.Since(sent), 200*time.Millisecond, "listed after the debounce")
	time.Sleep(400 * time.Millisecond) // nothing else is pending: no second listing comes
	require.Equal(t, 2, a.calls(), "a burst of events is one listing")
	require.Equal(t, 1, b.calls(), "the other source is not listed")
	require.False(t, l.Result().Sources[0].EventAt.IsZero())
	require.True(t, l.Result().Sources[1].EventAt.IsZero())
}

// TestTriggersRunOnlyWhileLeading: a trigger starts when the node becomes the leader, stops
// when it loses leadership and starts again (a new leader takes the subscription over).
func TestTriggersRunOnlyWhileLeading(t *testing.T) {
	t.Parallel()
	src := repoSource{&scripted{name: "a", l: sources.Listing{Desired: []image.Image{img("r.example/a:1", "A", 1)}}}, "r.example/a"}
	trig := &fakeTrigger{name: "pushes"}
	loc := coordinatortest.NewAgent("n1")
	cl := &switchable{changes: make(chan struct{}), local: loc}
	l, err := leader.New(leader.Config{RefreshInterval: time.Hour}, []leader.Source{src}, cl, loc, nil, nil, leader.WithTrigger(trig, 0))
	require.NoError(t, err)
	run(t, l)

	time.Sleep(100 * time.Millisecond)
	running, starts := trig.state()
	require.False(t, running)
	require.Zero(t, starts, "a follower does not watch")
	require.False(t, l.Changed("r.example/a"), "a follower does not act on events")

	cl.set(true)
	eventually(t, "the trigger to run on the new leader", func() bool { r, _ := trig.state(); return r })
	cl.set(false)
	eventually(t, "the trigger to stop with leadership", func() bool { r, _ := trig.state(); return !r })
	cl.set(true)
	eventually(t, "the trigger to run again", func() bool { r, n := trig.state(); return r && n == 2 })
}

// TestTriggerErrorIsASourceError: what a trigger reports shows in the status of its sources,
// a Watch that fails is called again, and the listing goes on meanwhile.
func TestTriggerErrorIsASourceError(t *testing.T) {
	t.Parallel()
	a := repoSource{&scripted{name: "a", l: sources.Listing{Desired: []image.Image{img("r.example/a:1", "A", 1)}}}, "r.example/a"}
	working := &fakeTrigger{name: "Pub/Sub projects/p/subscriptions/s"}
	broken := &fakeTrigger{name: "Pub/Sub projects/p/subscriptions/gone", fail: errors.New("subscription not found")}
	loc := coordinatortest.NewAgent("n1")
	l, err := leader.New(leader.Config{RefreshInterval: time.Hour}, []leader.Source{a},
		coordinator.NewStandalone("n1", "127.0.0.1:1", loc), loc, nil, nil, leader.WithTrigger(working, 0), leader.WithTrigger(broken, 0))
	require.NoError(t, err)
	run(t, l)

	eventually(t, "the broken trigger's error in the source's status", func() bool {
		return l.Result().Sources[0].TriggerError == "Pub/Sub projects/p/subscriptions/gone: subscription not found"
	})
	require.Equal(t, "Pub/Sub projects/p/subscriptions/s, Pub/Sub projects/p/subscriptions/gone", l.Result().Sources[0].Triggers)
	require.Empty(t, l.Result().Sources[0].Error, "the listing itself works")
	eventually(t, "the listing to go on and be published", func() bool { return len(loc.Desired().Images) == 1 })
	eventually(t, "the failed Watch to be called again", func() bool { _, n := broken.state(); return n >= 2 })

	eventually(t, "the working trigger to run", func() bool { return working.events() != nil })
	working.events().Report(errors.New("pull: connection refused"))
	require.Contains(t, l.Result().Sources[0].TriggerError, "Pub/Sub projects/p/subscriptions/s: pull: connection refused")
	working.events().Report(nil)
	require.NotContains(t, l.Result().Sources[0].TriggerError, "connection refused", "a trigger that works again clears its error")
}

func TestTriggerBoundToAMissingSource(t *testing.T) {
	t.Parallel()
	loc := coordinatortest.NewAgent("n1")
	_, err := leader.New(leader.Config{}, nil, coordinator.NewStandalone("n1", "", loc), loc, nil, nil, leader.WithTrigger(&fakeTrigger{name: "x"}, 3))
	require.ErrorContains(t, err, "trigger x: no source 3")
}
