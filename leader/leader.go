// Package leader is the leader's path: it lists the sources, publishes the desired list to
// the cluster when it changed, and serves the status API's input. It runs on every agent and
// acts only while the agent leads (always, for a standalone agent).
//
// Each source is listed by its own goroutine with its own deadline, so a hung or failing
// source delays nobody else; a failing source keeps its last good listing in force.
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
)

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
}

// SourceStatus is one source's last listing.
type SourceStatus struct {
	Name string
	// ListedAt is when the listing in force was made (zero: never succeeded).
	ListedAt time.Time
	// Error is the last listing's error, "" when it succeeded.
	Error string
	// Images is how many images the listing in force lists (a fixed list: names).
	Images int
	// Listing is set while a listing is under way, with its start time.
	Listing bool
	Started time.Time
}

// Result is the concatenation of every source's listing in force, in config order.
type Result struct {
	All     []image.Image
	Desired []image.Image // priority order, each reference once
	Sources []SourceStatus
	// Complete is set when every source has a listing in force.
	Complete bool
}

// source is one source and what the leader knows of it.
type source struct {
	src  Source
	kick chan struct{} // capacity 1: coalesces requests for a listing
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

	mu       sync.Mutex // guards the fields below
	last     []*sources.Listing
	status   []SourceStatus
	rounds   []uint64      // finished listings per source
	roundEnd chan struct{} // closed and replaced whenever a listing finishes
	leading  time.Time     // when this node became the leader; zero while it is not
}

// New builds a Leader over srcs in config order; reg may be nil. It starts nothing.
func New(cfg Config, srcs []Source, cluster Cluster, local Local, logger *slog.Logger, reg prometheus.Registerer) (*Leader, error) {
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
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Leader{
		cfg: cfg, cluster: cluster, local: local, log: logger, metrics: newMetrics(reg),
		changed:  make(chan struct{}, 1),
		last:     make([]*sources.Listing, len(srcs)),
		status:   make([]SourceStatus, len(srcs)),
		rounds:   make([]uint64, len(srcs)),
		roundEnd: make(chan struct{}),
	}
	for i, s := range srcs {
		l.sources = append(l.sources, source{src: s, kick: make(chan struct{}, 1)})
		l.status[i].Name = s.Name()
	}
	return l, nil
}

// Run lists every source at once, every RefreshInterval and on Refresh, while this node
// leads, and publishes after each listing. It returns when ctx ends, after its goroutines.
func (l *Leader) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range l.sources {
		wg.Go(func() { l.runSource(ctx, i) })
	}
	l.leadershipChanged()
	grace := time.NewTimer(l.cfg.FirstListingGrace)
	defer grace.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.cluster.LeaderChanges():
			if l.leadershipChanged() {
				grace.Reset(l.cfg.FirstListingGrace)
			}
		case <-l.changed:
		case <-grace.C:
			// A source still on its first listing: publish what the others gave.
		}
		l.publish()
	}
}

// leadershipChanged notes whether this node leads now and, when it just became the leader,
// asks every source for a listing. It reports whether the node just became the leader.
func (l *Leader) leadershipChanged() bool {
	_, _, self := l.cluster.Leader()
	l.mu.Lock()
	became := self && l.leading.IsZero()
	switch {
	case became:
		l.leading = time.Now()
	case !self:
		l.leading = time.Time{}
	}
	l.mu.Unlock()
	if became {
		l.log.Info("leading: listing the sources")
		l.kickAll()
	}
	return became
}

func (l *Leader) kickAll() {
	for _, s := range l.sources {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// runSource lists source i while this node leads: on a kick, and every RefreshInterval.
func (l *Leader) runSource(ctx context.Context, i int) {
	t := time.NewTicker(l.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.sources[i].kick:
		}
		if _, _, self := l.cluster.Leader(); self {
			l.list(ctx, i)
		}
	}
}

// list lists source i once within SourceTimeout and records the outcome.
func (l *Leader) list(ctx context.Context, i int) {
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
	if err == nil || listing.Partial {
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
	l.rounds[i]++
	close(l.roundEnd)
	l.roundEnd = make(chan struct{})
	hasListing := l.last[i] != nil
	l.mu.Unlock()

	if err != nil {
		l.log.Warn("listing source failed; keeping its last good listing", "source", src.Name(), "err", err, "has_listing", hasListing, "partial", listing.Partial)
	} else {
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
	r := Result{All: []image.Image{}, Desired: []image.Image{}, Sources: slices.Clone(l.status), Complete: true}
	seen := map[image.Ref]bool{}
	for _, ls := range l.last {
		if ls == nil {
			r.Complete = false
			continue
		}
		r.All = append(r.All, ls.All...)
		for _, d := range ls.Desired {
			// Two sources may select one reference; the first (higher priority) wins.
			if !seen[d.Ref] {
				seen[d.Ref] = true
				d.Priority = len(r.Desired)
				r.Desired = append(r.Desired, d)
			}
		}
	}
	return r
}

// publish is the one publish rule: while this node leads, publish the sources' desired list
// when it differs from the list in force, once every source has listed or the first
// listings' grace has passed, and never an empty list made only of missing listings.
func (l *Leader) publish() {
	if _, _, self := l.cluster.Leader(); !self {
		return
	}
	l.mu.Lock()
	since := l.leading
	l.mu.Unlock()
	r := l.Result()
	switch {
	case !r.Complete && time.Since(since) < l.cfg.FirstListingGrace:
		return // a source is still on its first listing
	case !r.Complete && len(r.Desired) == 0:
		return // nothing listed yet: keep the list in force rather than empty every node
	case slices.Equal(r.Desired, l.local.Desired().Images):
		return // nothing changed: no new version
	}
	if _, err := l.cluster.PublishDesired(r.Desired); err != nil {
		l.log.Warn("publishing desired list", "err", err)
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
// the listings to end; the new list is published as they do. On a node that does not lead
// it does nothing. The error names the sources that are late, or else those that failed.
func (l *Leader) Refresh(ctx context.Context) error {
	if _, _, self := l.cluster.Leader(); !self {
		return nil
	}
	l.mu.Lock()
	before := slices.Clone(l.rounds)
	l.mu.Unlock()
	l.kickAll()
	timer := time.NewTimer(l.cfg.ReconcileWait)
	defer timer.Stop()
	for {
		l.mu.Lock()
		var late []string
		for i, n := range l.rounds {
			if n == before[i] {
				late = append(late, l.status[i].Name)
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
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	images   *prometheus.GaugeVec
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
	}
	if reg != nil {
		reg.MustRegister(m.duration, m.errors, m.images)
	}
	return m
}
