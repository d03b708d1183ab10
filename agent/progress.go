package agent

import (
	"context"
	"errors"
	"time"

	"github.com/cachemachine/cachemachine/containerd"
)

const (
	// progressStep is the granularity of the progress that State carries: a pull's progress
	// reaches the leader when its phase changes or it crosses a tenth of its bytes, so a pull
	// costs about a dozen state messages however long it takes (the debug socket shows the
	// progress as measured, every progressInterval).
	progressStep = 10
	// progressInterval is how often a pull's download progress is measured (WithDownloads).
	progressInterval = time.Second
	// maxBlobChecks bounds the content Info calls of one measurement.
	maxBlobChecks = 32
	// rateWeight is the weight of the newest sample in the smoothed download rate.
	rateWeight = 0.3
)

// liveProgress is the measured progress of one background pull. The fields are guarded by
// Agent.mu; blobs is set once and then only read.
type liveProgress struct {
	digest   string            // the manifest digest pulled, "" when unknown
	blobs    []containerd.Blob // config and layers, nil until the manifest is in the store
	complete map[string]bool   // blobs in the content store
	offsets  map[string]int64  // bytes of blobs seen downloading, at the last measurement
	done     uint64
	total    uint64
	rate     float64 // bytes per second, smoothed
	at       time.Time
	phase    string
	// published is the coarse progress State carries.
	published Progress
}

func newLiveProgress(digest string, now time.Time) *liveProgress {
	return &liveProgress{digest: digest, complete: map[string]bool{}, offsets: map[string]int64{}, at: now}
}

// current is the progress as last measured.
func (lp *liveProgress) current() Progress {
	return Progress{Phase: lp.phase, BytesDone: lp.done, BytesTotal: lp.total, BytesPerSecond: uint64(lp.rate), At: lp.at}
}

// LiveProgress returns the measured progress of the background pull of ref, and whether
// there is one: finer than the progress in State (see progressStep).
func (a *Agent) LiveProgress(ref string) (Progress, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	lp := a.live[ref]
	if lp == nil {
		return Progress{}, false
	}
	return lp.current(), true
}

// progressLoop measures the pulls in flight every progressInterval until ctx ends. It makes
// no call while nothing is pulling.
func (a *Agent) progressLoop(ctx context.Context) {
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a.measure(ctx)
	}
}

// measurement is one pull's share of a measurement, taken outside the lock.
type measurement struct {
	ref      string
	lp       *liveProgress
	blobs    []containerd.Blob
	complete map[string]bool
	present  map[string]int64 // blobs found complete by this measurement
}

// measure takes one look at containerd's downloads and attributes their bytes to the pulls
// through their manifests.
func (a *Agent) measure(ctx context.Context) {
	a.mu.Lock()
	var ms []*measurement
	for ref, lp := range a.live {
		m := &measurement{ref: ref, lp: lp, blobs: lp.blobs, complete: make(map[string]bool, len(lp.complete)), present: map[string]int64{}}
		for d := range lp.complete {
			m.complete[d] = true
		}
		ms = append(ms, m)
	}
	a.mu.Unlock()
	if len(ms) == 0 {
		return
	}
	dls, err := a.dls.Downloads(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Debug("measuring pulls", "err", err)
		}
		return
	}
	inFlight := make(map[string]containerd.Download, len(dls))
	for _, d := range dls {
		inFlight[d.Digest] = d
	}
	checks := 0
	for _, m := range ms {
		if m.blobs == nil && m.lp.digest != "" {
			blobs, err := a.dls.ImageBlobs(ctx, m.lp.digest)
			switch {
			case err == nil:
				m.blobs = blobs
			case !errors.Is(err, containerd.ErrNotFound) && ctx.Err() == nil:
				a.log.Debug("reading the manifest of a pull", "image", m.ref, "digest", m.lp.digest, "err", err)
			}
		}
		for _, b := range m.blobs {
			if m.complete[b.Digest] || checks >= maxBlobChecks {
				continue
			}
			if _, downloading := inFlight[b.Digest]; downloading {
				continue
			}
			checks++
			if size, err := a.dls.BlobSize(ctx, b.Digest); err == nil {
				m.present[b.Digest] = size
			}
		}
	}

	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	attributed := map[string]bool{}
	for _, m := range ms {
		for _, b := range m.blobs {
			attributed[b.Digest] = true
		}
	}
	changed := false
	for _, m := range ms {
		lp := a.live[m.ref]
		if lp != m.lp {
			continue // the pull ended meanwhile
		}
		if lp.blobs == nil {
			lp.blobs = m.blobs
		}
		var done, total, downloaded uint64
		if lp.blobs != nil {
			for _, b := range lp.blobs {
				total += uint64(max(0, b.Size))
				switch dl, downloading := inFlight[b.Digest]; {
				case lp.complete[b.Digest]:
					done += uint64(max(0, b.Size))
				case hasKey(m.present, b.Digest):
					lp.complete[b.Digest] = true
					done += uint64(max(0, b.Size))
					if last, seen := lp.offsets[b.Digest]; seen {
						downloaded += uint64(max(0, b.Size-last)) // finished since the last look
						delete(lp.offsets, b.Digest)
					}
				case downloading:
					done += uint64(max(0, dl.Offset))
					downloaded += uint64(max(0, dl.Offset-lp.offsets[b.Digest]))
					lp.offsets[b.Digest] = dl.Offset
				}
			}
		} else if lp.digest == "" && unknownPulls(a.live) == 1 {
			// The only pull without a known manifest: the downloads nobody else claims are its.
			for d, dl := range inFlight {
				if !attributed[d] {
					done += uint64(max(0, dl.Offset))
					downloaded += uint64(max(0, dl.Offset-lp.offsets[d]))
					lp.offsets[d] = dl.Offset
				}
			}
		}
		a.metrics.pullBytes.Add(float64(downloaded))
		if dt := now.Sub(lp.at).Seconds(); dt > 0 {
			sample := float64(downloaded) / dt
			if lp.rate == 0 {
				lp.rate = sample
			} else {
				lp.rate = rateWeight*sample + (1-rateWeight)*lp.rate
			}
		}
		lp.done, lp.total, lp.at = done, total, now
		switch {
		case lp.blobs == nil && done == 0:
			lp.phase = PhaseResolving
		case total > 0 && done >= total:
			lp.phase, lp.rate = PhaseUnpacking, 0
		default:
			lp.phase = PhaseDownloading
		}
		if coarse(lp.current()) != coarse(lp.published) {
			lp.published = lp.current()
			changed = true
		}
	}
	if changed {
		a.publishProgressLocked()
	}
}

func hasKey(m map[string]int64, k string) bool { _, ok := m[k]; return ok }

// unknownPulls counts the pulls whose manifest digest is not known.
func unknownPulls(live map[string]*liveProgress) int {
	n := 0
	for _, lp := range live {
		if lp.digest == "" {
			n++
		}
	}
	return n
}

// coarseProgress is what decides whether State's progress moves.
type coarseProgress struct {
	phase string
	step  uint64
	known bool
}

func coarse(p Progress) coarseProgress {
	c := coarseProgress{phase: p.Phase, known: p.BytesTotal > 0}
	if p.BytesTotal > 0 {
		c.step = min(p.BytesDone, p.BytesTotal) * progressStep / p.BytesTotal
	}
	return c
}

// publishProgressLocked publishes the state with the pulls' coarse progress. Callers hold a.mu.
func (a *Agent) publishProgressLocked() {
	next := a.state.Clone()
	a.progressLocked(next.Pulling)
	a.publishLocked(next)
}

// progressLocked sets the coarse progress of each pull in ps. Callers hold a.mu.
func (a *Agent) progressLocked(ps []Pulling) {
	for i := range ps {
		if lp := a.live[ps[i].Ref]; lp != nil {
			ps[i].Progress = lp.published
		}
	}
}
