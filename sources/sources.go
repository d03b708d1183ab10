// Package sources runs the configured repomen: it lists each source, applies the Rubin tag
// policy, keeps the last good listing of a failing source in force, and concatenates the
// results in config order into all_images and desired_images.
package sources

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/rubintag"
)

// Image is one listed or selected image.
type Image struct {
	// URL is the pull reference "host/repo:tag".
	URL string
	// Digest is the manifest digest, "" when the source could not tell.
	Digest string
	// Name is the raw tag in all_images and the display name in desired_images.
	Name string
}

// Listing is what one source yields.
type Listing struct {
	All     []Image
	Desired []Image
}

// Source is one configured repoman. List is called from one goroutine at a time.
type Source interface {
	// Name identifies the source in status, logs and metrics ("repomen[0] RubinRepoGar …").
	Name() string
	List(ctx context.Context) (Listing, error)
}

// Status is one source's last refresh.
type Status struct {
	Name string
	// ListedAt is when the listing in force was made (zero: never succeeded).
	ListedAt time.Time
	// Error is the last refresh's error, "" when it succeeded.
	Error  string
	Images int
}

// Result is the concatenation of every source's listing in force, in config order.
type Result struct {
	All      []Image
	Desired  []Image
	Sources  []Status
	Complete bool // every source has a listing in force
}

// Set runs a list of sources. Its methods are safe for concurrent use; Refresh calls are
// serialized.
type Set struct {
	sources []Source
	log     *slog.Logger
	metrics *metrics
	refresh sync.Mutex // serializes Refresh

	mu     sync.Mutex // guards the fields below
	last   []*Listing // by source index; nil until the first success
	status []Status
}

// NewSet builds a Set over sources in config order; reg may be nil.
func NewSet(sources []Source, logger *slog.Logger, reg prometheus.Registerer) *Set {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Set{sources: sources, log: logger, metrics: newMetrics(reg), last: make([]*Listing, len(sources)), status: make([]Status, len(sources))}
	for i, src := range sources {
		s.status[i].Name = src.Name()
	}
	return s
}

// Refresh lists every source concurrently, each within timeout of ctx. A failing source
// keeps its last good listing in force and records the error; the others go on. It returns
// the new Result.
func (s *Set) Refresh(ctx context.Context) Result {
	s.refresh.Lock()
	defer s.refresh.Unlock()
	var g errgroup.Group
	for i, src := range s.sources {
		g.Go(func() error {
			start := time.Now()
			l, err := src.List(ctx)
			elapsed := time.Since(start)
			s.metrics.duration.WithLabelValues(src.Name()).Observe(elapsed.Seconds())
			s.mu.Lock()
			defer s.mu.Unlock()
			if err != nil {
				s.metrics.errors.WithLabelValues(src.Name()).Inc()
				s.status[i].Error = err.Error()
				s.log.Warn("listing source failed; keeping its last good listing", "source", src.Name(), "err", err, "has_listing", s.last[i] != nil)
				return nil
			}
			s.last[i] = &l
			s.status[i] = Status{Name: src.Name(), ListedAt: time.Now(), Images: len(l.All)}
			s.metrics.images.WithLabelValues(src.Name()).Set(float64(len(l.All)))
			s.log.Debug("listed source", "source", src.Name(), "images", len(l.All), "desired", len(l.Desired), "seconds", elapsed.Seconds())
			return nil
		})
	}
	_ = g.Wait() // the goroutines record errors; they never return one
	return s.Snapshot()
}

// Snapshot returns the listings in force without listing anything.
func (s *Set) Snapshot() Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := Result{All: []Image{}, Desired: []Image{}, Sources: slices.Clone(s.status), Complete: true}
	seen := map[string]bool{}
	for _, l := range s.last {
		if l == nil {
			r.Complete = false
			continue
		}
		r.All = append(r.All, l.All...)
		for _, d := range l.Desired {
			// Two sources may select one reference; the first (higher priority) wins.
			if !seen[d.URL] {
				seen[d.URL] = true
				r.Desired = append(r.Desired, d)
			}
		}
	}
	return r
}

// Lister lists the tags of one repository; digests may be "" when the listing does not carry
// them (OCI registries), in which case the Lister should also be a DigestResolver.
type Lister interface {
	Repository() string
	ListTags(ctx context.Context) ([]rubintag.Image, error)
}

// DigestResolver resolves tags to manifest digests; tags that do not exist are left out.
type DigestResolver interface {
	ResolveDigests(ctx context.Context, tags []string) (map[string]string, error)
}

// Rubin is a source that applies the Rubin tag policy to a Lister's tags.
type Rubin struct {
	name   string
	lister Lister
	policy rubintag.Policy
}

// NewRubin builds a Rubin policy source.
func NewRubin(name string, l Lister, p rubintag.Policy) *Rubin {
	return &Rubin{name: name, lister: l, policy: p}
}

// Name implements Source.
func (r *Rubin) Name() string { return r.name }

// List implements Source. When the listing lacks digests it resolves only the tags the
// policy needs (aliases, pins and a first selection), then selects again with them, so alias
// names and the cycle filter see the digests that matter.
func (r *Rubin) List(ctx context.Context) (Listing, error) {
	imgs, err := r.lister.ListTags(ctx)
	if err != nil {
		return Listing{}, err
	}
	if res, ok := r.lister.(DigestResolver); ok && slices.ContainsFunc(imgs, func(i rubintag.Image) bool { return i.Digest == "" }) {
		need := map[string]bool{}
		for _, sel := range r.policy.Select(imgs) {
			need[sel.Tag] = true
		}
		for _, t := range append(append([]string{r.policy.RecommendedTag}, r.policy.AliasTags...), r.policy.Pin...) {
			if t != "" {
				need[t] = true
			}
		}
		tags := slices.Sorted(func(yield func(string) bool) {
			for t := range need {
				if !yield(t) {
					return
				}
			}
		})
		digests, err := res.ResolveDigests(ctx, tags)
		if err != nil {
			return Listing{}, err
		}
		for i := range imgs {
			if d, ok := digests[imgs[i].Tag]; ok {
				imgs[i].Digest = d
			}
		}
	}
	repo := r.lister.Repository()
	l := Listing{All: make([]Image, 0, len(imgs)), Desired: []Image{}}
	for _, img := range imgs {
		l.All = append(l.All, Image{URL: repo + ":" + tagOrLatest(img.Tag), Digest: img.Digest, Name: tagOrLatest(img.Tag)})
	}
	for _, sel := range r.policy.Select(imgs) {
		l.Desired = append(l.Desired, Image{URL: repo + ":" + sel.Tag, Digest: sel.Digest, Name: sel.Name})
	}
	return l, nil
}

func tagOrLatest(t string) string {
	if t == "" {
		return rubintag.DefaultTag
	}
	return t
}

// Simple is the SimpleRepoMan source: a fixed list, with digests resolved when the registry
// answers (an unresolved digest stays "": the agent then accepts what the tag resolves to).
type Simple struct {
	name    string
	images  []Image
	resolve func(ctx context.Context, ref string) (string, error) // may be nil
	log     *slog.Logger
}

// NewSimple builds a fixed-list source. An image with a digest given in the config keeps it;
// resolve (may be nil) looks up the others.
func NewSimple(name string, images []Image, resolve func(ctx context.Context, ref string) (string, error), logger *slog.Logger) *Simple {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Simple{name: name, images: slices.Clone(images), resolve: resolve, log: logger}
}

// Name implements Source.
func (s *Simple) Name() string { return s.name }

// List implements Source; it never fails: a registry that does not answer only leaves the
// digest unknown.
func (s *Simple) List(ctx context.Context) (Listing, error) {
	out := make([]Image, len(s.images))
	copy(out, s.images)
	for i := range out {
		if out[i].Digest != "" || s.resolve == nil {
			continue
		}
		d, err := s.resolve(ctx, out[i].URL)
		if err != nil {
			s.log.Debug("digest unresolved", "source", s.name, "image", out[i].URL, "err", err)
			continue
		}
		out[i].Digest = d
	}
	all := make([]Image, len(out))
	for i, img := range out {
		all[i] = Image{URL: img.URL, Digest: img.Digest, Name: rawTag(img.URL)}
		if out[i].Name == "" {
			out[i].Name = rawTag(img.URL)
		}
	}
	return Listing{All: all, Desired: out}, nil
}

// rawTag returns the tag of ref ("latest" when it has none).
func rawTag(ref string) string {
	if i := strings.LastIndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref[i+1:]
	}
	return rubintag.DefaultTag
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
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
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

// Describe names a source for names: "repomen[0] RubinRepoGar us-central1-docker.pkg.dev/…".
func Describe(index int, typ, repository string) string {
	if repository == "" {
		return fmt.Sprintf("repomen[%d] %s", index, typ)
	}
	return fmt.Sprintf("repomen[%d] %s %s", index, typ, repository)
}

// Runner refreshes a Set every interval and on Kick, while active() holds (a standalone
// agent: always; in a cluster: while this node leads), and hands each Result to publish.
type Runner struct {
	set      *Set
	interval time.Duration
	active   func() bool
	publish  func(Result)
	kick     chan struct{} // capacity 1: coalesces requests for a refresh
}

// NewRunner builds a Runner; active nil means always active.
func NewRunner(set *Set, interval time.Duration, active func() bool, publish func(Result)) *Runner {
	if active == nil {
		active = func() bool { return true }
	}
	return &Runner{set: set, interval: interval, active: active, publish: publish, kick: make(chan struct{}, 1)}
}

// Kick asks for a refresh soon (a new leader, an operator's reconcile); it never blocks.
func (r *Runner) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// RefreshNow lists the sources at once and publishes the result; for POST /v1/reconcile.
func (r *Runner) RefreshNow(ctx context.Context) error {
	if !r.active() {
		return nil
	}
	r.publish(r.set.Refresh(ctx))
	return nil
}

// Run refreshes at start, every interval and on Kick until ctx ends.
func (r *Runner) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		if r.active() {
			r.publish(r.set.Refresh(ctx))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.kick:
		}
	}
}
