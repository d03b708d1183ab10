// Package leader is the leader's path: it lists the sources, publishes the desired list to
// the cluster when it changed, and serves the status API's input. It runs on every agent and
// acts only while the agent leads (always, for a standalone agent).
//
// Each source is listed by its own goroutine with its own deadline, so a hung or failing
// source delays nobody else; a failing source keeps its last good listing in force.
//
// Triggers (Artifact Registry's Pub/Sub messages, a registry's push notifications) tell the
// leader that a repository changed; the sources that list it are listed again after a short
// debounce. They are triggers only, never data: the listing decides. The periodic listing
// stays the backstop, so a broken trigger costs freshness, never correctness.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/sources"
	"github.com/cachemachine/cachemachine/status"
)

// repositoryOf is a Source that lists one repository (*sources.Rubin): a trigger's event for
// that repository asks for its listing. Repository is normalised as image.Ref.Repository
// ("us-central1-docker.pkg.dev/p/r/img", "127.0.0.1:5000/lsst/sciplat-lab").
type repositoryOf interface {
	Repository() string
}

// refsOf is a Source that is a fixed list of references (*sources.Simple).
type refsOf interface {
	Refs() []image.Ref
}

// Trigger watches for pushes and tells the leader which repositories changed, e.g. an
// Artifact Registry Pub/Sub subscription or a registry's notifications endpoint. Watch runs
// only while this node leads: it is started when the node becomes the leader and its context
// ends when the node stops leading or the leader stops.
//
// Watch receives events until ctx ends. It calls changed (Leader.Changed: safe for concurrent
// use, never blocks) for each repository an event concerns; changed reports whether a source
// lists it. It calls report with how it fares: nil once a call succeeded, the error when one
// failed; the error shows in the status of the sources the trigger serves. Watch should
// retry its own failures, with a deadline on every call, and return only when ctx ends; an
// error it returns is reported and Watch is called again after a backoff. The parameters are
// plain function types so that a trigger's package need not import this one.
type Trigger interface {
	// Name identifies the trigger in status and logs ("Pub/Sub projects/p/subscriptions/s").
	Name() string
	Watch(ctx context.Context, changed func(repository string) bool, report func(err error)) error
}

// Option configures New.
type Option func(*Leader)

// WithTrigger runs t while this node leads; sources are the indexes (into New's srcs) of the
// sources whose status shows t's name and errors. Which sources an event lists again is
// decided by repository (Leader.Changed), not by this binding.
func WithTrigger(t Trigger, sources ...int) Option {
	return func(l *Leader) { l.triggers = append(l.triggers, binding{t: t, sources: sources}) }
}

// binding is one trigger and the sources that show it.
type binding struct {
	t       Trigger
	sources []int
}

// Source is one configured repoman; *sources.Rubin and *sources.Simple implement it. List is
// called from one goroutine at a time and must honour ctx's deadline.
type Source interface {
	// Name identifies the source in status, logs and metrics ("repomen[0] RubinRepoGar …").
	Name() string
	List(ctx context.Context) (sources.Listing, error)
}

// Cluster is the membership as the leader needs it; *coordinator.Cluster and
// *coordinator.Standalone implement it. Its methods must not block for long.
type Cluster interface {
	// Leader returns the leader's name and status API address, and whether it is this node.
	Leader() (name, httpAddr string, self bool)
	// NodeStates returns the newest known state of every node.
	NodeStates() []coordinator.NodeState
	// PublishDesired makes images the cluster's desired list (leader only).
	PublishDesired(images []image.Image) (uint64, error)
	// LeaderChanges receives a value whenever the leader changed.
	LeaderChanges() <-chan struct{}
	// Superseded receives a value on the leader when a node holds a newer desired list than
	// the leader's (one that led its side of a healed partition published it).
	Superseded() <-chan struct{}
}

// Local is this node's agent as the leader needs it: the desired list in force.
type Local interface {
	Desired() agent.Desired
}

// Config holds the leader's settings; zero durations take the defaults.
type Config struct {
	// Name is the cache name, Labels its labels (echoed in status).
	Name   string
	Labels map[string]string
	// RefreshInterval is how often each source is listed (default 5m).
	RefreshInterval time.Duration
	// SourceTimeout bounds one listing of one source (default 2m, at most RefreshInterval).
	SourceTimeout time.Duration
	// FirstListingGrace is how long a new leader waits for every source's first listing
	// before it publishes what the others gave (default 10s, at most SourceTimeout): a hung
	// source delays the others' images by this much once, not by its timeout.
	FirstListingGrace time.Duration
	// ReconcileWait bounds how long Refresh waits for the sources (default 10s).
	ReconcileWait time.Duration
	// EventDebounce is how long a source waits after a trigger's first event before it is
	// listed (default 500ms): the events of one push (the digest, then each tag) and of a
	// burst of tags make one listing. Later events do not extend the wait.
	EventDebounce time.Duration
	// WarmupGrace is how long after its agent started a node that still misses desired
	// images is warming and left out of common_cache (0: never; see Leader.Snapshot).
	WarmupGrace time.Duration
}

// SourceStatus is one source's last listing as the status page shows it (ListedAt is zero
// until the source has listed in this node's current term as leader), and whether a listing
// is under way.
type SourceStatus struct {
	status.SourceStatus
	// Listing is set while a listing is under way, with its start time.
	Listing bool
	Started time.Time
}

// Result is the concatenation of every source's listing in force, in config order.
type Result struct {
	All     []image.Image
	Sources []SourceStatus
}

// source is one source and what the leader knows of it.
type source struct {
	src  Source
	repo string             // the repository it lists, normalised; "" for a fixed list
	refs map[image.Ref]bool // a fixed list's references; nil for others
	kick chan struct{}      // capacity 1: coalesces requests for a listing now
	// event is signalled by Changed (capacity 1); the source is listed EventDebounce
	// after the first event.
	event chan struct{}
}

// Leader runs the sources and publishes. Create it with New and start it with Run; Refresh,
// Result and Snapshot are safe for concurrent use.
type Leader struct {
	cfg     Config
	sources []source
	cluster Cluster
	local   Local
	log     *slog.Logger
	metrics *metrics
	changed chan struct{} // capacity 1: a listing finished
	// triggers run while this node leads.
	triggers []binding

	mu       sync.Mutex // guards the fields below
	last     []*sources.Listing
	status   []SourceStatus
	roundEnd chan struct{} // closed and replaced whenever a listing finishes
	leading  time.Time     // when this node became the leader; zero while it is not
	// inherited is the desired list in force when this node became the leader: a source that
	// has not listed in this term keeps its images of it (see selection).
	inherited []image.Image
	// force makes the next publish happen even when the selection did not change (Superseded).
	force bool
	// trigErr is each trigger's last reported error ("" while it works).
	trigErr []string
	// warm maps a node to the boot time (ns) of the agent run that once held every desired
	// image: that run is warm for good (see warming).
	warm map[string]int64
}

// New builds a Leader over srcs in config order; reg may be nil. It starts nothing.
func New(cfg Config, srcs []Source, cluster Cluster, local Local, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Leader, error) {
	if cluster == nil || local == nil {
		return nil, errors.New("leader: cluster and local agent are required")
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 5 * time.Minute
	}
	if cfg.SourceTimeout <= 0 {
		cfg.SourceTimeout = 2 * time.Minute
	}
	cfg.SourceTimeout = min(cfg.SourceTimeout, cfg.RefreshInterval)
	if cfg.FirstListingGrace <= 0 {
		cfg.FirstListingGrace = 10 * time.Second
	}
	cfg.FirstListingGrace = min(cfg.FirstListingGrace, cfg.SourceTimeout)
	if cfg.ReconcileWait <= 0 {
		cfg.ReconcileWait = 10 * time.Second
	}
	if cfg.EventDebounce <= 0 {
		cfg.EventDebounce = DefaultEventDebounce
	}
	cfg.WarmupGrace = max(cfg.WarmupGrace, 0)
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Leader{
		cfg: cfg, cluster: cluster, local: local, log: logger, metrics: newMetrics(reg),
		changed:  make(chan struct{}, 1),
		last:     make([]*sources.Listing, len(srcs)),
		status:   make([]SourceStatus, len(srcs)),
		roundEnd: make(chan struct{}),
		warm:     map[string]int64{},
	}
	for i, s := range srcs {
		src := source{src: s, kick: make(chan struct{}, 1), event: make(chan struct{}, 1)}
		if r, ok := s.(repositoryOf); ok {
			src.repo = normalRepository(r.Repository())
		}
		if r, ok := s.(refsOf); ok {
			src.refs = map[image.Ref]bool{}
			for _, ref := range r.Refs() {
				src.refs[ref] = true
			}
		}
		l.sources = append(l.sources, src)
		l.status[i].Name = s.Name()
	}
	for _, o := range opts {
		o(l)
	}
	l.trigErr = make([]string, len(l.triggers))
	for _, b := range l.triggers {
		for _, i := range b.sources {
			if i < 0 || i >= len(l.sources) {
				return nil, fmt.Errorf("leader: trigger %s: no source %d", b.t.Name(), i)
			}
			l.status[i].Triggers = strings.TrimPrefix(l.status[i].Triggers+", "+b.t.Name(), ", ")
		}
	}
	return l, nil
}

// DefaultEventDebounce is Config.EventDebounce's default.
const DefaultEventDebounce = 500 * time.Millisecond

// normalRepository normalises a repository name as image.Ref does ("index.docker.io/x" is
// "docker.io/x"); a name that does not parse is compared as written.
func normalRepository(repo string) string {
	if r, err := image.ParseRef(repo); err == nil {
		return r.Repository()
	}
	return repo
}

// Run lists every source at once, every RefreshInterval and on Refresh, while this node
// leads, and publishes after each listing. It returns when ctx ends, after its goroutines.
func (l *Leader) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range l.sources {
		wg.Go(func() { l.runSource(ctx, i) })
	}
	// The triggers run while this node leads; stopWatch ends them and waits for them.
	var watchWG sync.WaitGroup
	stopWatch := func() {}
	defer func() { stopWatch() }()
	follow := func() (became bool) {
		became, lost := l.leadershipChanged()
		switch {
		case became:
			stopWatch()
			wctx, cancel := context.WithCancel(ctx)
			for i := range l.triggers {
				watchWG.Go(func() { l.runTrigger(wctx, i) })
			}
			stopWatch = func() { cancel(); watchWG.Wait() }
		case lost:
			stopWatch()
			stopWatch = func() {}
		}
		return became
	}
	follow()
	grace := time.NewTimer(l.cfg.FirstListingGrace)
	defer grace.Stop()
	warmth := time.NewTicker(warmthInterval)
	defer warmth.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.cluster.LeaderChanges():
			if follow() {
				grace.Reset(l.cfg.FirstListingGrace)
			}
		case <-l.changed:
		case <-grace.C:
			// A source still on its first listing: publish what the others gave.
		case <-l.cluster.Superseded():
			// Publish again, above the other list, once the sources have listed anew.
			l.mu.Lock()
			l.force = !l.leading.IsZero()
			l.mu.Unlock()
			l.kickAll()
			continue
		case <-warmth.C:
			l.observeWarmth()
			continue
		}
		l.publish()
	}
}

// leadershipChanged notes whether this node leads now and, when it just became the leader,
// asks every source for a listing. It reports whether the node just became the leader or
// just stopped leading.
func (l *Leader) leadershipChanged() (became, lost bool) {
	_, _, self := l.cluster.Leader()
	l.mu.Lock()
	became = self && l.leading.IsZero()
	lost = !self && !l.leading.IsZero()
	switch {
	case became:
		l.leading = time.Now()
		l.inherited = slices.Clone(l.local.Desired().Images)
	case lost:
		// Another leader published meanwhile; this node's listings of its earlier term are
		// history and must not come back as the list of a later one.
		l.leading, l.inherited, l.force = time.Time{}, nil, false
		clear(l.last)
		for i := range l.status {
			l.status[i].ListedAt, l.status[i].Images = time.Time{}, 0
		}
	}
	l.mu.Unlock()
	if became {
		l.log.Info("leading: listing the sources")
		l.kickAll()
	}
	if lost {
		l.log.Info("no longer leading")
	}
	return became, lost
}

func (l *Leader) kickAll() {
	for i := range l.sources {
		l.kick(i)
	}
}

// kick asks for a listing of source i now; requests coalesce.
func (l *Leader) kick(i int) {
	select {
	case l.sources[i].kick <- struct{}{}:
	default:
	}
}

// runSource lists source i while this node leads: on a kick, EventDebounce after a trigger's
// event, and every RefreshInterval.
func (l *Leader) runSource(ctx context.Context, i int) {
	t := time.NewTicker(l.cfg.RefreshInterval)
	defer t.Stop()
	debounce := time.NewTimer(l.cfg.EventDebounce)
	debounce.Stop()
	armed := false // debounce runs: an event is waiting for its listing
	for {
		select {
		case <-ctx.Done():
			debounce.Stop()
			return
		case <-t.C:
		case <-l.sources[i].kick:
		case <-l.sources[i].event:
			if !armed {
				debounce.Reset(l.cfg.EventDebounce)
				armed = true
			}
			continue
		case <-debounce.C:
		}
		afterEvent := armed
		if armed {
			// This listing answers the waiting event too.
			debounce.Stop()
			armed = false
		}
		if _, _, self := l.cluster.Leader(); self {
			l.list(ctx, i, afterEvent)
		}
	}
}

// Changed says that repository changed (a push, a new tag, a delete): every source that
// lists it is listed again EventDebounce later. It reports whether a source lists it; on a
// node that does not lead it does nothing and reports false. It never blocks.
func (l *Leader) Changed(repository string) bool {
	if _, _, self := l.cluster.Leader(); !self {
		return false
	}
	repo := normalRepository(repository)
	matched := false
	now := time.Now()
	for i, s := range l.sources {
		if s.repo == "" || s.repo != repo {
			continue
		}
		matched = true
		l.mu.Lock()
		l.status[i].EventAt = now
		l.mu.Unlock()
		l.metrics.events.WithLabelValues(s.src.Name()).Inc()
		select {
		case s.event <- struct{}{}:
		default:
		}
	}
	return matched
}

// report records how trigger i fares (nil: it works) in the status of its sources.
func (l *Leader) report(i int, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	b := l.triggers[i]
	l.mu.Lock()
	prev := l.trigErr[i]
	l.trigErr[i] = msg
	for _, si := range b.sources {
		var errs []string
		for j, o := range l.triggers {
			if l.trigErr[j] != "" && slices.Contains(o.sources, si) {
				errs = append(errs, o.t.Name()+": "+l.trigErr[j])
			}
		}
		l.status[si].TriggerError = strings.Join(errs, "; ")
	}
	l.mu.Unlock()
	switch {
	case msg != "" && msg != prev:
		l.metrics.triggerErrors.WithLabelValues(b.t.Name()).Inc()
		l.log.Warn("trigger failing; the periodic listing goes on", "trigger", b.t.Name(), "err", err)
	case msg != "":
		l.metrics.triggerErrors.WithLabelValues(b.t.Name()).Inc()
	case prev != "":
		l.log.Info("trigger works again", "trigger", b.t.Name())
	}
}

// Trigger restart backoff: a Watch that returned is called again after this, doubling.
const (
	triggerBackoffMin = time.Second
	triggerBackoffMax = 30 * time.Second
)

// runTrigger runs trigger i until ctx ends (this node stops leading), calling Watch again
// after a backoff when it returns early.
func (l *Leader) runTrigger(ctx context.Context, i int) {
	t := l.triggers[i].t
	report := func(err error) { l.report(i, err) }
	backoff := triggerBackoffMin
	for {
		l.log.Info("watching for pushes", "trigger", t.Name())
		started := time.Now()
		err := t.Watch(ctx, l.Changed, report)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("stopped watching")
		}
		report(err)
		if time.Since(started) > triggerBackoffMax {
			backoff = triggerBackoffMin
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, triggerBackoffMax)
	}
}

// list lists source i once within SourceTimeout and records the outcome. afterEvent says a
// trigger's event asked for it: that listing is logged at info level, the periodic ones at
// debug level.
func (l *Leader) list(ctx context.Context, i int, afterEvent bool) {
	src := l.sources[i].src
	start := time.Now()
	l.mu.Lock()
	l.status[i].Listing, l.status[i].Started = true, start
	l.mu.Unlock()

	lctx, cancel := context.WithTimeout(ctx, l.cfg.SourceTimeout)
	listing, err := src.List(lctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	elapsed := time.Since(start)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("no answer within %s: %w", l.cfg.SourceTimeout, err)
	}
	l.metrics.duration.WithLabelValues(src.Name()).Observe(elapsed.Seconds())

	l.mu.Lock()
	st := &l.status[i]
	st.Listing = false
	if (err == nil || listing.Partial) && !l.leading.IsZero() && !start.Before(l.leading) {
		// Only a listing made while this term lasts counts: one that ends after the
		// leadership was lost, or began in an earlier term, might be older than what the
		// leader in between published.
		l.last[i] = &listing
		st.ListedAt = time.Now()
		st.Images = max(len(listing.All), len(listing.Desired)) // a fixed list lists nothing in all_images
		l.metrics.images.WithLabelValues(src.Name()).Set(float64(st.Images))
	}
	st.Error = ""
	if err != nil {
		st.Error = err.Error()
		l.metrics.errors.WithLabelValues(src.Name()).Inc()
	}
	close(l.roundEnd)
	l.roundEnd = make(chan struct{})
	hasListing := l.last[i] != nil
	l.mu.Unlock()

	switch {
	case err != nil:
		l.log.Warn("listing source failed; keeping its last good listing", "source", src.Name(), "err", err, "has_listing", hasListing, "partial", listing.Partial)
	case afterEvent:
		l.log.Info("listed source after a push event", "source", src.Name(), "images", len(listing.All), "desired", len(listing.Desired), "seconds", elapsed.Seconds())
	default:
		l.log.Debug("listed source", "source", src.Name(), "images", len(listing.All), "desired", len(listing.Desired), "seconds", elapsed.Seconds())
	}
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// Result returns the listings in force without listing anything.
func (l *Leader) Result() Result {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := Result{All: []image.Image{}, Sources: slices.Clone(l.status)}
	for _, ls := range l.last {
		if ls != nil {
			r.All = append(r.All, ls.All...)
		}
	}
	return r
}

// publish is the one publish rule: while this node leads, publish the selection when it
// differs from the list in force (or Superseded asked for a new version), once every source
// has listed in this term or the first listings' grace has passed, and never before one has.
func (l *Leader) publish() {
	if _, _, self := l.cluster.Leader(); !self {
		return
	}
	desired, listed, complete, force := l.selection()
	switch {
	case !listed:
		return // nothing listed in this term: the list in force stays
	case !complete && time.Since(l.since()) < l.cfg.FirstListingGrace:
		return // a source is still on its first listing
	case !force && slices.Equal(desired, l.local.Desired().Images):
		return // nothing changed: no new version
	}
	if _, err := l.cluster.PublishDesired(desired); err != nil {
		l.log.Warn("publishing desired list", "err", err)
		return
	}
	l.mu.Lock()
	l.force = false
	l.mu.Unlock()
}

// since is when this node became the leader.
func (l *Leader) since() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading
}

// selection is the list to publish: the sources' desired images in config order, the first
// source to select a reference winning, priorities by position. A source that has not listed
// in this term removes nothing: in its place stand its images of the inherited list (those
// of its repository, or of its fixed list; all of them for a source of neither kind). listed
// reports whether any source has listed in this term, complete whether all have.
func (l *Leader) selection() (out []image.Image, listed, complete, force bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[image.Ref]bool{}
	add := func(d image.Image) {
		if !seen[d.Ref] {
			seen[d.Ref] = true
			d.Priority = len(out)
			out = append(out, d)
		}
	}
	complete = true
	for i, ls := range l.last {
		if ls != nil {
			listed = true
			for _, d := range ls.Desired {
				add(d)
			}
			continue
		}
		complete = false
		for _, d := range l.inherited {
			if l.sources[i].owns(d.Ref) {
				add(d)
			}
		}
	}
	return out, listed, complete, l.force
}

// owns reports whether ref may be one of the source's images.
func (s source) owns(ref image.Ref) bool {
	switch {
	case s.repo != "":
		return ref.Repository() == s.repo
	case s.refs != nil:
		return s.refs[ref]
	default:
		return true
	}
}

// Refresh's errors wrap one of these.
var (
	// ErrLate: a source did not finish in time; its listing goes on.
	ErrLate = errors.New("sources still listing")
	// ErrSourceFailed: a source's listing failed; its last good listing stays in force.
	ErrSourceFailed = errors.New("source listing failed")
)

// Refresh lists every source now and waits, at most ReconcileWait (or until ctx ends), for
// listings started after the call to end; the new list is published as they do. On a node that does not lead
// it does nothing. The error names the sources that are late, or else those that failed.
func (l *Leader) Refresh(ctx context.Context) error {
	if _, _, self := l.cluster.Leader(); !self {
		return nil
	}
	// Only a listing that started after the request answers it: one in flight may have
	// begun before the registry was fixed.
	asked := time.Now()
	l.kickAll()
	timer := time.NewTimer(l.cfg.ReconcileWait)
	defer timer.Stop()
	for {
		l.mu.Lock()
		var late []string
		for _, st := range l.status {
			if st.Listing || st.Started.Before(asked) {
				late = append(late, st.Name)
			}
		}
		wait := l.roundEnd
		var failed []error
		for _, st := range l.status {
			if st.Error != "" {
				failed = append(failed, fmt.Errorf("%s: %s", st.Name, st.Error))
			}
		}
		l.mu.Unlock()
		if len(late) == 0 {
			if len(failed) > 0 {
				return fmt.Errorf("%w: %w", ErrSourceFailed, errors.Join(failed...))
			}
			return nil
		}
		select {
		case <-wait:
		case <-timer.C:
			return fmt.Errorf("%w after %s: %s", ErrLate, l.cfg.ReconcileWait, strings.Join(late, "; "))
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %w", ErrLate, strings.Join(late, "; "), ctx.Err())
		}
	}
}

type metrics struct {
	duration      *prometheus.HistogramVec
	errors        *prometheus.CounterVec
	images        *prometheus.GaugeVec
	events        *prometheus.CounterVec
	triggerErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cachemachine_source_listing_duration_seconds", Help: "Duration of one listing of a source.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120},
		}, []string{"source"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_source_errors_total", Help: "Failed listings of a source.",
		}, []string{"source"}),
		images: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cachemachine_source_images", Help: "Images the last good listing of a source holds.",
		}, []string{"source"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_source_events_total", Help: "Trigger events (pushes) that asked for a listing of a source.",
		}, []string{"source"}),
		triggerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_trigger_errors_total", Help: "Failures a trigger (a Pub/Sub subscription, registry notifications) reported.",
		}, []string{"trigger"}),
	}
	if reg != nil {
		reg.MustRegister(m.duration, m.errors, m.images, m.events, m.triggerErrors)
	}
	return m
}
