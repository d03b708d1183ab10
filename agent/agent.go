// Package agent keeps one node's container image cache holding the desired images by calling
// the CRI ImageService directly: a level-triggered reconcile loop, a bounded pull queue with
// per-attempt deadlines, per-image backoff and a disk guard, and the node's debug socket.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachemachine/cachemachine/containerd"
	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// Runtime is the part of the CRI image service the agent calls; *cri.Client implements it.
type Runtime interface {
	ListImages(ctx context.Context) ([]cri.Image, error)
	ImageStatus(ctx context.Context, ref string) (*cri.Image, error)
	PullImage(ctx context.Context, ref string, auth *cri.Auth) (string, error)
	ImageFsInfo(ctx context.Context) ([]cri.FsUsage, error)
	Version(ctx context.Context) (cri.Version, error)
}

// Credentials returns the registry credentials to pull ref with, or nil for anonymous pulls.
// It is called once per pull attempt and must be safe for concurrent use.
type Credentials interface {
	AuthFor(ctx context.Context, ref string) (*cri.Auth, error)
}

// StatFS returns the total and available bytes of the filesystem holding path.
type StatFS func(path string) (total, avail uint64, err error)

// Config holds the agent's settings; zero values take the documented defaults.
type Config struct {
	Node               string
	MaxParallelPulls   int           // default 2
	PullTimeout        time.Duration // per attempt; default 10m
	BackoffInitial     time.Duration // default 10s
	BackoffMax         time.Duration // default 5m
	MinFreeDiskPercent float64       // 0 disables the disk guard
	ResyncInterval     time.Duration // full CRI snapshot at least this often; default 15s
	// StateDir keeps the last desired list across restarts; "" keeps nothing.
	StateDir string
	// PinImages pins the desired images the node holds (WithPins gives the means).
	PinImages bool
	// MaxPinnedPercent caps the pins at this share of the image filesystem; default 50.
	MaxPinnedPercent float64
}

// Pins is the part of containerd's images service the agent pins images with;
// *containerd.Client implements it.
type Pins interface {
	OwnPins(ctx context.Context) ([]containerd.Record, error)
	Pin(ctx context.Context, name string) (containerd.Record, error)
	Unpin(ctx context.Context, name string) error
}

// Downloads is the part of containerd's content service the agent measures pulls with;
// *containerd.Client implements it.
type Downloads interface {
	Downloads(ctx context.Context) ([]containerd.Download, error)
	ImageBlobs(ctx context.Context, digest string) ([]containerd.Blob, error)
	BlobSize(ctx context.Context, digest string) (int64, error)
}

// Agent is the node agent. Create it with New, start it with Run; its other methods are safe
// for concurrent use and never block on the runtime except PullNow.
type Agent struct {
	cfg     Config
	rt      Runtime
	creds   Credentials
	log     *slog.Logger
	statfs  StatFS
	metrics *metrics
	pins    Pins      // nil: no pinning (not containerd)
	dls     Downloads // nil: no byte progress

	trigger chan struct{} // capacity 1: coalesces bursts of requests for a pass
	changes chan struct{} // capacity 1: signals a new State version
	slots   chan struct{} // pull concurrency semaphore
	pulls   sync.WaitGroup

	saveMu sync.Mutex // serialises persist; guards saved
	saved  uint64     // version of the desired list last persisted

	pin pinMemory // only the pass uses it (passes never overlap): not guarded by mu

	mu       sync.Mutex // guards the fields below
	desired  Desired
	state    State
	images   map[string]*imageStatus  // by normalized ref
	reserved map[string]uint64        // bytes reserved by pulls in flight, by ref
	largest  uint64                   // largest image size seen, the disk guard's guess
	lastSeen time.Time                // last successful CRI inventory, or New's time
	everSeen bool                     // an inventory succeeded
	live     map[string]*liveProgress // progress of background pulls in flight, by ref
	ended    uint64                   // background pulls ended so far
}

// imageStatus is the agent's memory of one desired reference between passes.
type imageStatus struct {
	pulling   bool
	started   time.Time
	attempts  int
	lastErr   string
	nextRetry time.Time
	held      string
	// ended is Agent.ended when its last pull ended: a pass whose snapshot is older than
	// that does not know the pull's outcome yet.
	ended uint64
}

// Option changes a default of New.
type Option func(*Agent)

// WithStatFS replaces the statfs used by the disk guard (tests).
func WithStatFS(f StatFS) Option { return func(a *Agent) { a.statfs = f } }

// WithPins gives the agent containerd's images service to pin images with (Config.PinImages).
func WithPins(p Pins) Option { return func(a *Agent) { a.pins = p } }

// WithDownloads gives the agent containerd's content service to measure pulls with.
func WithDownloads(d Downloads) Option { return func(a *Agent) { a.dls = d } }

// WithRegisterer registers the agent's metrics on r.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(a *Agent) { a.metrics = newMetrics(r) }
}

// New validates cfg and builds an agent; it starts nothing. creds may be nil (anonymous).
// A desired list persisted in cfg.StateDir is loaded so the agent resumes from it.
func New(cfg Config, rt Runtime, creds Credentials, logger *slog.Logger, opts ...Option) (*Agent, error) {
	if rt == nil {
		return nil, errors.New("agent: runtime is nil")
	}
	if cfg.MaxParallelPulls <= 0 {
		cfg.MaxParallelPulls = 2
	}
	if cfg.PullTimeout <= 0 {
		cfg.PullTimeout = 10 * time.Minute
	}
	if cfg.BackoffInitial <= 0 {
		cfg.BackoffInitial = 10 * time.Second
	}
	if cfg.BackoffMax < cfg.BackoffInitial {
		cfg.BackoffMax = max(5*time.Minute, cfg.BackoffInitial)
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = 15 * time.Second
	}
	if cfg.MaxPinnedPercent <= 0 || cfg.MaxPinnedPercent > 100 {
		cfg.MaxPinnedPercent = 50 // config validates agent.max_pinned_percent; tests leave it 0
	}
	if cfg.MinFreeDiskPercent < 0 || cfg.MinFreeDiskPercent >= 100 {
		return nil, fmt.Errorf("agent: min free disk percent %v: must be in [0, 100)", cfg.MinFreeDiskPercent)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:      cfg,
		rt:       rt,
		creds:    creds,
		log:      logger,
		statfs:   statfs,
		trigger:  make(chan struct{}, 1),
		changes:  make(chan struct{}, 1),
		slots:    make(chan struct{}, cfg.MaxParallelPulls),
		images:   map[string]*imageStatus{},
		reserved: map[string]uint64{},
		live:     map[string]*liveProgress{},
		pin:      newPinMemory(),
		lastSeen: time.Now(),
		state: State{
			Node:    cfg.Node,
			Version: uint64(time.Now().UnixNano()),
			Cached:  map[string]string{},
		},
	}
	for _, o := range opts {
		o(a)
	}
	if a.metrics == nil {
		a.metrics = newMetrics(nil)
	}
	if cfg.StateDir != "" {
		d, err := loadDesired(cfg.StateDir)
		switch {
		case err != nil:
			// A damaged file must not stop the node; the next list from a leader replaces it.
			a.log.Warn("ignoring persisted desired list", "err", err)
		case d != nil:
			a.desired = *d
			a.state.DesiredVersion = d.Version
			a.log.Info("resuming from persisted desired list", "version", d.Version, "images", len(d.Images))
		}
	}
	return a, nil
}

// Run reconciles until ctx ends, then waits for the pulls it started. It takes a full CRI
// snapshot every ResyncInterval, whenever Trigger is called, and when the first failed
// image's backoff ends, so a retry starts on time rather than at the next resync.
func (a *Agent) Run(ctx context.Context) error {
	defer a.pulls.Wait()
	if a.dls != nil {
		var progress sync.WaitGroup
		progress.Go(func() { a.progressLoop(ctx) })
		defer progress.Wait()
	}

	tick := time.NewTicker(a.cfg.ResyncInterval)
	defer tick.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		a.pass(ctx)
		if d, ok := a.untilRetry(); ok {
			retry.Reset(d)
		} else {
			retry.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-a.trigger:
		case <-retry.C:
		}
	}
}

// untilRetry returns how long until the earliest backoff of a failed image ends.
func (a *Agent) untilRetry() (time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	var next time.Time
	for _, st := range a.images {
		// A backoff that ended already is due: the pass just made started it, or could not
		// (no free slot, the runtime down), and then a freed slot, a trigger or the resync
		// tick will. Waiting on it again would spin.
		if st.attempts > 0 && !st.pulling && st.nextRetry.After(now) && (next.IsZero() || st.nextRetry.Before(next)) {
			next = st.nextRetry
		}
	}
	if next.IsZero() {
		return 0, false
	}
	return next.Sub(now), true
}

// Close releases nothing today; it exists so every component has the same three verbs.
func (a *Agent) Close() error { return nil }

// Trigger asks for a reconcile pass soon; bursts coalesce into one pass.
func (a *Agent) Trigger() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

// Changes receives a value (coalesced) whenever State's version grows.
func (a *Agent) Changes() <-chan struct{} { return a.changes }

// State returns a copy of the node's state as of the last pass or pull.
func (a *Agent) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.Clone()
}

// Healthy reports an error when no CRI inventory succeeded for a long time (4 resync
// intervals, at least 2 minutes). A liveness probe built on it restarts an agent whose
// runtime socket went stale: a hostPath socket mount keeps pointing at the old socket after
// containerd restarts, and only a new container sees the new one.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	limit := max(2*time.Minute, 4*a.cfg.ResyncInterval)
	if since := time.Since(a.lastSeen); since > limit {
		return fmt.Errorf("no CRI inventory for %s (last error: %s)", since.Round(time.Second), a.state.LastError)
	}
	return nil
}

// Desired returns the desired list in force.
func (a *Agent) Desired() Desired {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Desired{Version: a.desired.Version, Images: slices.Clone(a.desired.Images)}
}

// SetDesired replaces the desired list unless d is older than the list in force (a lower
// version) and reports whether it did. An image without a reference is dropped and
// logged; a reference listed twice keeps its first entry. The list is persisted in StateDir
// before it takes effect.
func (a *Agent) SetDesired(d Desired) bool {
	clean := Desired{Version: d.Version, Images: make([]image.Image, 0, len(d.Images))}
	seen := map[image.Ref]bool{}
	for _, img := range d.Images {
		if img.Ref.IsZero() {
			a.log.Warn("dropping desired image without a reference", "name", img.Name)
			continue
		}
		if seen[img.Ref] {
			continue
		}
		seen[img.Ref] = true
		clean.Images = append(clean.Images, img)
	}
	a.mu.Lock()
	if d.Version < a.desired.Version || (d.Version == a.desired.Version && reflect.DeepEqual(clean.Images, a.desired.Images)) {
		a.mu.Unlock()
		return false
	}
	a.desired = clean
	a.mu.Unlock()
	a.persist(clean)
	a.metrics.desired.Set(float64(len(clean.Images)))
	a.Trigger()
	return true
}

// persist saves d in StateDir unless a newer list was saved already: SetDesired may run on
// the leader's and the gossip's goroutines at once, and the older list must not land last.
func (a *Agent) persist(d Desired) {
	if a.cfg.StateDir == "" {
		return
	}
	a.saveMu.Lock()
	defer a.saveMu.Unlock()
	if d.Version < a.saved {
		return
	}
	if err := saveDesired(a.cfg.StateDir, d); err != nil {
		a.log.Warn("persisting desired list", "err", err)
		return
	}
	a.saved = d.Version
}

// pass takes a CRI snapshot, diffs it against the desired list, starts the pulls that may
// start, and publishes the new state when anything changed.
func (a *Agent) pass(ctx context.Context) {
	a.mu.Lock()
	snapshot := a.ended
	a.mu.Unlock()
	imgs, err := a.rt.ListImages(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("listing images", "err", err)
		a.mu.Lock()
		a.publishLocked(a.unavailableLocked(err))
		a.mu.Unlock()
		a.metrics.passes.WithLabelValues("runtime_unavailable").Inc()
		return
	}
	fs, err := a.rt.ImageFsInfo(ctx)
	if err != nil && ctx.Err() == nil {
		a.log.Warn("image filesystem info", "err", err)
	}
	disk := a.measureDisk(fs)
	runtime := a.State().Runtime
	if runtime == "" {
		if v, err := a.rt.Version(ctx); err == nil {
			runtime = v.RuntimeName + " " + v.RuntimeVersion
		}
	}

	a.mu.Lock()
	a.lastSeen, a.everSeen = time.Now(), true
	inv := newInventory(imgs)
	a.largest = max(a.largest, inv.largest)
	next := State{
		Node:           a.cfg.Node,
		Version:        a.state.Version,
		DesiredVersion: a.desired.Version,
		Runtime:        runtime,
		Ready:          true,
		Images:         inv.images,
		Cached:         map[string]string{},
		Disk:           disk,
	}
	pullDigests := map[string]bool{} // digests with a pull in flight or starting
	for ref, st := range a.images {
		if st.pulling {
			if d := a.desiredDigest(ref); d != "" {
				pullDigests[d] = true
			}
		}
	}
	now := time.Now()
	wanted := map[string]bool{}
	for _, d := range a.desired.Images {
		ref := d.Ref.String()
		wanted[ref] = true
		st := a.images[ref]
		if st == nil {
			st = &imageStatus{}
			a.images[ref] = st
		}
		if digest, ok := inv.Has(d); ok && !st.pulling {
			next.Cached[ref] = digest
			st.attempts, st.lastErr, st.held = 0, "", ""
			continue
		}
		next.Missing = append(next.Missing, ref)
		switch {
		case st.pulling:
			next.Pulling = append(next.Pulling, Pulling{Ref: ref, Started: st.started})
			continue
		case st.attempts > 0 && now.Before(st.nextRetry):
			next.Failed = append(next.Failed, Failed{Ref: ref, Error: st.lastErr, Attempts: st.attempts, NextRetry: st.nextRetry})
			continue
		case st.ended > snapshot:
			// Its pull ended after this pass listed the images: the pass its end triggered
			// decides, or this one would pull it twice.
			next.Queued = append(next.Queued, ref)
			continue
		case d.WantDigest() != "" && pullDigests[d.WantDigest()]:
			// Another tag of this digest is being pulled; this one follows in a moment
			// without downloading anything twice.
			next.Queued = append(next.Queued, ref)
			continue
		}
		if reason := a.diskGuardLocked(d, disk); reason != "" {
			if st.held == "" { // log when the hold starts, not on every pass (free space moves)
				a.log.Warn("holding pull", "image", ref, "reason", reason)
			}
			st.held = reason
			next.Held = append(next.Held, Held{Ref: ref, Reason: reason})
			continue
		}
		st.held = ""
		select {
		case a.slots <- struct{}{}:
		default:
			next.Queued = append(next.Queued, ref)
			continue
		}
		st.pulling, st.started = true, now
		a.reserved[ref] = a.sizeGuess(d)
		if d.WantDigest() != "" {
			pullDigests[d.WantDigest()] = true
		}
		next.Pulling = append(next.Pulling, Pulling{Ref: ref, Started: now})
		a.live[ref] = newLiveProgress(d.WantDigest(), now)
		a.pulls.Add(1)
		go a.pullInBackground(ctx, d)
	}
	for ref, st := range a.images {
		if !wanted[ref] && !st.pulling {
			delete(a.images, ref)
		}
	}
	a.metrics.cached.Set(float64(len(next.Cached)))
	a.metrics.held.Set(float64(len(next.Held)))
	a.metrics.fsUsed.Set(float64(disk.UsedBytes))
	a.metrics.fsCapacity.Set(float64(disk.CapacityBytes))
	desired := a.desired
	a.mu.Unlock()

	// Pins after the pulls started: the images service calls must not delay a pull.
	pins := a.reconcilePins(ctx, desired, inv, disk, runtime)
	a.mu.Lock()
	defer a.mu.Unlock()
	next.Pinned, next.Pinning = pins.pinned, pins.pinning
	a.progressLocked(next.Pulling)
	a.publishLocked(next)
	a.metrics.passes.WithLabelValues("ok").Inc()
}

// unavailableLocked is the state while the runtime does not answer: not ready, the error
// said, the inventory as last seen (the images are still on disk), and the pulls as they
// really are: a pull that failed with the runtime is failed, not "pulling". Callers hold a.mu.
func (a *Agent) unavailableLocked(err error) State {
	next := a.state.Clone()
	next.Ready = false
	next.LastError = fmt.Sprintf("container runtime unavailable: list images: %v", err)
	next.Pulling, next.Failed, next.Queued, next.Held = nil, nil, nil, nil
	for _, d := range a.desired.Images {
		ref := d.Ref.String()
		switch st := a.images[ref]; {
		case st == nil:
		case st.pulling:
			next.Pulling = append(next.Pulling, Pulling{Ref: ref, Started: st.started})
		case st.attempts > 0:
			next.Failed = append(next.Failed, Failed{Ref: ref, Error: st.lastErr, Attempts: st.attempts, NextRetry: st.nextRetry})
		}
	}
	a.progressLocked(next.Pulling)
	return next
}

// Ready reports whether a CRI inventory succeeded recently (within 2 resync intervals, at
// least 30 s): a node whose runtime stopped answering goes unready after a bounded time,
// not at the first failed call of a containerd restart.
func (a *Agent) Ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.everSeen && time.Since(a.lastSeen) <= max(30*time.Second, 2*a.cfg.ResyncInterval)
}

// desiredDigest returns the desired digest of ref, "" if unknown. Callers hold a.mu.
func (a *Agent) desiredDigest(ref string) string {
	for _, d := range a.desired.Images {
		if d.Ref.String() == ref {
			return d.WantDigest()
		}
	}
	return ""
}

// publishLocked installs next as the state and bumps the version if anything but the version
// changed. Callers hold a.mu.
func (a *Agent) publishLocked(next State) {
	next.Version = a.state.Version
	if reflect.DeepEqual(next, a.state) {
		return
	}
	next.Version++
	a.state = next
	select {
	case a.changes <- struct{}{}:
	default:
	}
}

// pullInBackground runs one pull attempt started by a pass and records its outcome.
func (a *Agent) pullInBackground(ctx context.Context, d image.Image) {
	defer a.pulls.Done()
	_, err := a.pullOnce(ctx, d)
	<-a.slots // free the slot before the pass that Trigger asks for, so it can reuse it
	a.mu.Lock()
	ref := d.Ref.String()
	delete(a.reserved, ref)
	delete(a.live, ref)
	a.ended++
	if st := a.images[ref]; st != nil {
		st.pulling = false
		st.ended = a.ended
		if err != nil && ctx.Err() == nil {
			st.attempts++
			st.lastErr = err.Error()
			st.nextRetry = time.Now().Add(backoff(a.cfg.BackoffInitial, a.cfg.BackoffMax, st.attempts))
		} else if err == nil {
			st.attempts, st.lastErr = 0, ""
		}
	}
	a.mu.Unlock()
	a.Trigger()
}

// PullResult is the outcome of one pull attempt.
type PullResult struct {
	Ref      string        `json:"image_url"`
	ImageID  string        `json:"image_id,omitempty"`
	Digest   string        `json:"image_hash,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	Error    string        `json:"error,omitempty"`
}

// PullNow pulls ref at once for an operator, waiting for a free pull slot, and blocks until
// the pull ends. The disk guard applies. The image does not become desired.
func (a *Agent) PullNow(ctx context.Context, ref string) (PullResult, error) {
	r, err := image.ParseRef(ref)
	if err != nil {
		return PullResult{Ref: ref}, err
	}
	norm := r.String()
	d := image.Image{Ref: r}
	fs, err := a.rt.ImageFsInfo(ctx)
	if err != nil {
		a.log.Warn("image filesystem info", "err", err)
	}
	disk := a.measureDisk(fs)
	a.mu.Lock()
	reason := a.diskGuardLocked(d, disk)
	a.mu.Unlock()
	if reason != "" {
		return PullResult{Ref: norm}, fmt.Errorf("pull %s held: %s", norm, reason)
	}
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		return PullResult{Ref: norm}, ctx.Err()
	}
	res, err := a.pullOnce(ctx, d)
	<-a.slots
	a.Trigger()
	return res, err
}

// pullOnce pulls d by tag within the pull timeout and checks the digest the tag now has on
// the node against the desired digest.
func (a *Agent) pullOnce(ctx context.Context, d image.Image) (res PullResult, err error) {
	ref := d.Ref.String()
	res = PullResult{Ref: ref}
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()
	var auth *cri.Auth
	if a.creds != nil {
		var err error
		if auth, err = a.creds.AuthFor(ctx, ref); err != nil {
			a.metrics.pulls.WithLabelValues("error").Inc()
			err = fmt.Errorf("credentials for %s: %w", ref, err)
			res.Error = err.Error()
			return res, err
		}
	}
	a.log.Info("pulling", "image", ref, "digest", d.Digest)
	pctx, cancel := context.WithTimeout(ctx, a.cfg.PullTimeout)
	id, err := a.rt.PullImage(pctx, ref, auth)
	if err == nil {
		var img *cri.Image
		img, err = a.rt.ImageStatus(pctx, ref)
		if err == nil && img == nil {
			err = fmt.Errorf("pull %s: image absent right after the pull", ref)
		}
		if err == nil {
			res.ImageID = id
			res.Digest = digestFor(img.Digests, d.Ref.Repository())
			if want := d.WantDigest(); want != "" && !slices.Contains(digestsOf(img.Digests), want) {
				err = fmt.Errorf("pull %s: tag moved: registry serves %s, desired %s", ref, res.Digest, want)
			}
		}
	}
	cancel()
	elapsed := time.Since(start)
	switch {
	case err == nil:
		a.metrics.pulls.WithLabelValues("success").Inc()
		a.metrics.pullSeconds.Observe(elapsed.Seconds())
		a.log.Info("pulled", "image", ref, "digest", res.Digest, "seconds", elapsed.Seconds())
	case ctx.Err() != nil:
		a.metrics.pulls.WithLabelValues("canceled").Inc()
	case errors.Is(err, cri.ErrDeadline) || errors.Is(err, context.DeadlineExceeded):
		a.metrics.pulls.WithLabelValues("timeout").Inc()
		a.log.Warn("pull timed out", "image", ref, "timeout", a.cfg.PullTimeout, "err", err)
	default:
		a.metrics.pulls.WithLabelValues("error").Inc()
		a.log.Warn("pull failed", "image", ref, "err", err)
	}
	if err != nil {
		res.Error = err.Error()
	}
	return res, err
}

// backoff is the delay before attempt n+1 after n failures: initial doubling per failure up to
// max, with "equal jitter" (a uniform draw from the upper half) so that nodes that failed
// together do not retry together.
func backoff(initial, maxDelay time.Duration, failures int) time.Duration {
	d := initial
	for i := 1; i < failures && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	half := d / 2
	return half + rand.N(half+1)
}
