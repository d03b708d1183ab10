package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/cachemachine/cachemachine/containerd"
)

// pinSettle is how long a pin must have been set before the runtime's CRI answer about it
// counts: containerd 1.6.25+ picks a label up from an event, a moment after the update.
const pinSettle = time.Second

// pinMemory is what the agent remembers about its pins between passes. Only the pass uses it
// (passes never overlap), so it needs no lock of its own.
type pinMemory struct {
	since   map[string]time.Time // record name -> when this agent saw its own pin on it first
	verdict string               // PinHonoured or PinUnsupported once judged; "" before
	warned  bool                 // the unsupported runtime was logged
	failing string               // the last pin error logged, so a lasting one is logged once
	// cleaned is set once pinning is off and the pins of an earlier run are all removed:
	// nothing sets new ones (Config.PinImages does not change while the agent runs).
	cleaned bool
}

func newPinMemory() pinMemory { return pinMemory{since: map[string]time.Time{}} }

// pinResult is what a pass learnt about pins.
type pinResult struct {
	pinned  []string
	pinning Pinning
}

// reconcilePins makes the agent's pins match the desired list: the manifest-digest and
// image-ID records of every desired image the node holds (never the tag record: a re-pull of
// the tag replaces it and drops its labels), in priority order until the budget is spent;
// every other record carrying the agent's own label is unpinned (a tag that moved, an image
// that left the list, an image beyond the budget). Records pinned by anybody else are never
// touched. It also judges whether the runtime reports the pins to the kubelet at all.
func (a *Agent) reconcilePins(ctx context.Context, desired Desired, inv inventory, disk Disk, runtime string) pinResult {
	// One pass's pin work is bounded as a whole, not only per call: a slow images service
	// must not hold up the pulls of this pass for pins × the call deadline.
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ResyncInterval)
	defer cancel()
	var res pinResult
	held := make([]*CachedImage, len(desired.Images)) // the image holding each desired one
	for i, d := range desired.Images {
		held[i] = inv.Of(d)
		// What the kubelet sees, whoever pinned: the desired references whose image is pinned.
		if held[i] != nil && held[i].Pinned {
			res.pinned = append(res.pinned, d.Ref.String())
		}
	}
	switch {
	case a.pins == nil:
		res.pinning = Pinning{Status: PinOff, Detail: "the runtime is not containerd: nothing to pin with"}
		return res
	case !a.cfg.PinImages:
		res.pinning = Pinning{Status: PinOff, Detail: "agent.pin_images is false"}
		a.unpinAll(ctx) // pins left by an earlier run with pinning on
		return res
	}

	budget := uint64(0)
	if disk.CapacityBytes > 0 {
		budget = uint64(float64(disk.CapacityBytes) * a.cfg.MaxPinnedPercent / 100)
	}
	res.pinning.BudgetBytes = budget
	want := map[string]bool{}
	counted := map[string]bool{} // image IDs already in the budget (one image, several tags)
	full := false
	for i, d := range desired.Images {
		img := held[i]
		if img == nil {
			continue
		}
		if !counted[img.ID] {
			if full || (budget > 0 && res.pinning.PinnedBytes+img.Size > budget) {
				// Strictly by priority: once an image does not fit, no later one is pinned.
				full = true
				res.pinning.OverBudget = append(res.pinning.OverBudget, d.Ref.String())
				continue
			}
			counted[img.ID] = true
			res.pinning.PinnedBytes += img.Size
		}
		if img.ID != "" {
			want[img.ID] = true
		}
		if digest := digestFor(img.Digests, d.Ref.Repository()); digest != "" {
			want[d.Ref.Repository()+"@"+digest] = true
		}
	}

	ours, err := a.pins.OwnPins(ctx)
	if err != nil {
		return a.pinFailed(ctx, res, err)
	}
	have := map[string]bool{}
	var errs []error
	for _, r := range ours {
		have[r.Name] = r.Pinned // our label without the pin (someone removed it): pin again
		if want[r.Name] {
			continue
		}
		if desired.Version == 0 {
			// No desired list yet (a fresh agent before the leader's first list): unpinning
			// now would hand every image to the kubelet's GC for nothing.
			continue
		}
		if err := a.pins.Unpin(ctx, r.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(a.pin.since, r.Name)
		a.log.Info("unpinned image", "image", r.Name)
	}
	now := time.Now()
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if have[name] {
			if _, ok := a.pin.since[name]; !ok {
				a.pin.since[name] = now // pinned by an earlier run of the agent
			}
			continue
		}
		r, err := a.pins.Pin(ctx, name)
		switch {
		case errors.Is(err, containerd.ErrNotFound):
			// Removed since the inventory (image GC, a moved tag): the next pass sees it.
		case err != nil:
			errs = append(errs, err)
		case r.Ours:
			a.pin.since[name] = now
			a.log.Info("pinned image", "image", name)
		}
	}
	for name := range a.pin.since {
		if !want[name] {
			delete(a.pin.since, name)
		}
	}
	if len(errs) > 0 {
		return a.pinFailed(ctx, res, errors.Join(errs...))
	}
	a.pin.failing = ""

	// Judge the runtime by records pinned long enough ago: does CRI say their image is pinned?
	honoured, ignored := 0, 0
	for name, since := range a.pin.since {
		if now.Sub(since) < pinSettle {
			continue
		}
		if img := inv.imageOfRecord(name); img != nil {
			if img.Pinned {
				honoured++
			} else {
				ignored++
			}
		}
	}
	switch {
	case honoured > 0:
		a.pin.verdict = PinHonoured
	case ignored > 0:
		a.pin.verdict = PinUnsupported
		if !a.pin.warned {
			a.pin.warned = true
			a.log.Warn("the runtime does not report pinned images to the kubelet: images its image GC removes are pulled again (pins need containerd 1.6.25, 1.7.10 or 2.x)", "runtime", runtime)
		}
	}
	switch a.pin.verdict {
	case PinHonoured:
		res.pinning.Status = PinHonoured
		res.pinning.Detail = fmt.Sprintf("%s reports the pins: the kubelet's image GC skips them", runtime)
	case PinUnsupported:
		res.pinning.Status = PinUnsupported
		res.pinning.Detail = fmt.Sprintf("%s does not report pins to the kubelet (needs containerd 1.6.25, 1.7.10 or 2.x): images removed by image GC are pulled again", runtime)
	default:
		res.pinning.Status = PinPending
		if len(want) == 0 {
			res.pinning.Detail = "nothing cached to pin yet"
		} else {
			res.pinning.Detail = "pins set; waiting for the runtime to report them"
		}
	}
	if len(res.pinning.OverBudget) > 0 {
		res.pinning.Detail += fmt.Sprintf("; %d image(s) beyond agent.max_pinned_percent (%g%% of the image filesystem) left unpinned", len(res.pinning.OverBudget), a.cfg.MaxPinnedPercent)
	}
	return res
}

// pinFailed records a failed pin pass: the error is shown, and logged when it is new.
func (a *Agent) pinFailed(ctx context.Context, res pinResult, err error) pinResult {
	msg := err.Error()
	if msg != a.pin.failing && ctx.Err() == nil {
		a.pin.failing = msg
		a.log.Warn("pinning images", "err", err)
	}
	res.pinning.Status = PinError
	res.pinning.Detail = clipText(msg, 512)
	return res
}

// unpinAll removes every pin of the agent's own (pinning was turned off).
func (a *Agent) unpinAll(ctx context.Context) {
	if a.pin.cleaned {
		return
	}
	ours, err := a.pins.OwnPins(ctx)
	if err != nil {
		return
	}
	failed := false
	for _, r := range ours {
		if err := a.pins.Unpin(ctx, r.Name); err != nil {
			a.log.Warn("unpinning image", "image", r.Name, "err", err)
			failed = true
			continue
		}
		a.log.Info("unpinned image: agent.pin_images is false", "image", r.Name)
	}
	clear(a.pin.since)
	a.pin.cleaned = !failed
}

// clipText cuts s to at most n bytes and marks the cut, never inside a UTF-8 character.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
