package main

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/status"
)

// console prints the demo's own lines, each prefixed with the time since the demo started.
type console struct {
	w     io.Writer
	start time.Time
}

func (c *console) say(format string, args ...any) {
	fmt.Fprintf(c.w, "%6.1fs  %s\n", time.Since(c.start).Seconds(), fmt.Sprintf(format, args...))
}

// state is what one node is doing about one desired image, as the leader sees it.
type state int

const (
	stUnknown state = iota // the node has not reported on this image yet
	stQueued
	stPulling
	stHeld
	stFailed
	stCached
)

// cell is one node's state for one image, with the reason when held or failed and the
// progress (as the leader has it, in tenths) when pulling: its line, its phase and the
// percentage downloaded (-1 when unknown).
type cell struct {
	state    state
	reason   string
	attempts int
	progress string
	phase    string
	percent  int
}

// cellOf finds ref in a node's lists; cached wins, since a node's lists can briefly overlap.
func cellOf(nv status.NodeView, ref string) cell {
	has := func(refs []string) bool {
		for _, r := range refs {
			if r == ref {
				return true
			}
		}
		return false
	}
	switch {
	case has(nv.Cached):
		return cell{state: stCached}
	case has(nv.Pulling):
		c := cell{state: stPulling, percent: -1}
		for _, p := range nv.Progress {
			if p.ImageURL == ref {
				c.progress, c.phase, c.percent = progressText(p), p.Phase, percentOf(p)
			}
		}
		return c
	}
	for _, f := range nv.Failed {
		if f.ImageURL == ref {
			return cell{state: stFailed, reason: f.Error, attempts: f.Attempts}
		}
	}
	for _, h := range nv.Held {
		if h.ImageURL == ref {
			return cell{state: stHeld, reason: h.Reason}
		}
	}
	if has(nv.Missing) {
		return cell{state: stQueued}
	}
	return cell{state: stUnknown}
}

// progressText is "downloading 40% of 200.0 MiB at 95.0 MiB/s", "unpacking", or "".
func progressText(p status.Progress) string {
	if p.Phase == "" {
		return ""
	}
	out := p.Phase
	if pct := percentOf(p); pct >= 0 {
		out += fmt.Sprintf(" %d%% of %s", pct, mib(p.BytesTotal))
	}
	if p.BytesPerSecond > 0 {
		out += " at " + mib(p.BytesPerSecond) + "/s"
	}
	return out
}

// percentOf is the percentage downloaded, -1 when the pull is not downloading a known size.
func percentOf(p status.Progress) int {
	if p.BytesTotal == 0 || p.Phase != "downloading" {
		return -1
	}
	return int(min(p.BytesDone, p.BytesTotal) * 100 / p.BytesTotal)
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// text is the table cell: a symbol, a word and, where known, the pull's time.
func (c cell) text(t *pullTiming, now time.Time) string {
	switch c.state {
	case stCached:
		if t != nil && t.took > 0 {
			return fmt.Sprintf("✓ cached %.1fs", t.took.Seconds())
		}
		return "✓ cached"
	case stPulling:
		pct := ""
		if c.percent >= 0 {
			pct = fmt.Sprintf(" %d%%", c.percent)
		} else if c.phase == "unpacking" {
			pct = " unpacking"
		}
		if t != nil {
			return fmt.Sprintf("↻ pulling%s %.1fs", pct, now.Sub(t.started).Seconds())
		}
		return "↻ pulling" + pct
	case stQueued:
		return "· queued"
	case stHeld:
		return "⏸ held"
	case stFailed:
		return fmt.Sprintf("✗ failed (%d)", c.attempts)
	default:
		return "…"
	}
}

// display shows the views as they come.
type display interface {
	show(v view, tr tracker)
}

// tagOf is the tag of a reference, the short name the plain output uses.
func tagOf(ref string) string {
	_, tag := image.SplitTagRef(ref)
	return tag
}

// lineDisplay prints one line per change, for logs and pipes.
type lineDisplay struct {
	out       *console
	cells     map[key]state
	progress  map[key]string // the progress line last printed per pull
	desired   string         // the desired tags last announced
	available int
	logs      *logWatcher // when set, the leader's push events and listings are shown too
	fresh     *freshness  // when set, a push to follow
}

func newLineDisplay(out *console) *lineDisplay {
	return &lineDisplay{out: out, cells: map[key]state{}, progress: map[key]string{}, available: -1}
}

func (d *lineDisplay) show(v view, tr tracker) { d.update(v, tr, true) }

// prime takes v as the state already shown, so that only later changes are printed.
func (d *lineDisplay) prime(v view) { d.update(v, nil, false) }

func (d *lineDisplay) update(v view, tr tracker, print bool) {
	if v.dump == nil || v.nodes == nil || len(v.dump.DesiredImages) == 0 {
		return
	}
	say := func(format string, args ...any) {
		if print {
			d.out.say(format, args...)
		}
	}
	if d.logs != nil && print {
		for _, l := range d.logs.poll() {
			say("%s", l)
		}
	}
	var tags []string
	for _, img := range v.dump.DesiredImages {
		tags = append(tags, tagOf(img.ImageURL))
	}
	if desired := strings.Join(tags, ", "); desired != d.desired {
		d.desired = desired
		say("leader %s published %d desired images: %s", v.leader, len(tags), desired)
	}
	for _, nv := range v.nodes.Nodes {
		for _, img := range v.dump.DesiredImages {
			k := key{nv.Name, img.ImageURL}
			c := cellOf(nv, img.ImageURL)
			if c.state == stPulling && c.progress != "" && c.progress != d.progress[k] {
				d.progress[k] = c.progress
				if d.cells[k] == stPulling {
					say("%s %s %s", nv.Name, tagOf(img.ImageURL), c.progress)
				}
			}
			if d.cells[k] == c.state {
				continue
			}
			d.cells[k] = c.state
			if msg := c.change(tr[k]); msg != "" {
				say("%s %s %s", nv.Name, tagOf(img.ImageURL), msg)
			}
		}
	}
	if n := len(v.dump.AvailableImages); n != d.available {
		d.available = n
		say("common_cache: %d/%d desired images on every node", n, len(v.dump.DesiredImages))
	}
	if print {
		d.fresh.check(v, d.out)
	}
}

// change is the plain-output message for entering c's state; queued and unknown are not news.
func (c cell) change(t *pullTiming) string {
	switch c.state {
	case stCached:
		if t != nil && t.took > 0 {
			return fmt.Sprintf("cached (%.1fs)", t.took.Seconds())
		}
		return "cached"
	case stPulling:
		return "pulling"
	case stHeld:
		return "held: " + c.reason
	case stFailed:
		return fmt.Sprintf("failed (attempt %d): %s", c.attempts, c.reason)
	default:
		return ""
	}
}

// tableDisplay redraws a table in place on a terminal: one row per desired image, one column
// per node.
type tableDisplay struct {
	w         io.Writer
	start     time.Time
	statusURL string
	nodes     []string
	drawn     int // lines drawn last time, to move the cursor back over
}

func (d *tableDisplay) show(v view, tr tracker) {
	d.draw(d.lines(v, tr))
}

// lines renders the table and the lines under it.
func (d *tableDisplay) lines(v view, tr tracker) []string {
	title := fmt.Sprintf("cachemachine demo · %d nodes · %.0fs", len(d.nodes), v.at.Sub(d.start).Seconds())
	if v.dump == nil || v.nodes == nil || len(v.dump.DesiredImages) == 0 {
		why := "no desired list yet"
		if v.statusErr != "" {
			why = v.statusErr
		}
		return []string{title, "waiting for the leader's desired list (" + why + ")"}
	}
	title += fmt.Sprintf(" · leader %s · %d desired images", v.leader, len(v.dump.DesiredImages))
	byName := map[string]status.NodeView{}
	for _, nv := range v.nodes.Nodes {
		byName[nv.Name] = nv
	}
	rows := [][]string{{"IMAGE"}}
	for _, n := range d.nodes {
		h := n
		if n == v.leader {
			h += " (leader)"
		}
		if nv, ok := byName[n]; ok && !nv.Alive {
			h += " (down)"
		}
		rows[0] = append(rows[0], h)
	}
	var notes []string
	for _, img := range v.dump.DesiredImages {
		row := []string{img.Name}
		for _, n := range d.nodes {
			c := cellOf(byName[n], img.ImageURL)
			row = append(row, c.text(tr[key{n, img.ImageURL}], v.at))
			if c.state == stFailed || c.state == stHeld {
				notes = append(notes, fmt.Sprintf("  %s %s: %s", n, tagOf(img.ImageURL), c.reason))
			}
		}
		rows = append(rows, row)
	}
	disk := []string{"disk used"}
	for _, n := range d.nodes {
		disk = append(disk, fmt.Sprintf("%d MB", byName[n].Disk.UsedBytes/1e6))
	}
	rows = append(rows, disk)
	out := append([]string{title, ""}, formatRows(rows)...)
	out = append(out, "✓ cached  ↻ pulling  · queued  ⏸ held (disk)  ✗ failed  … not reported yet", "",
		fmt.Sprintf("common_cache: %d/%d desired images on every node", len(v.dump.AvailableImages), len(v.dump.DesiredImages)),
		"status: "+d.statusURL)
	return append(out, notes...)
}

// draw moves the cursor back over the previous frame and writes this one. Line wrapping is
// off while drawing, so a line wider than the terminal is cut instead of breaking the count.
func (d *tableDisplay) draw(lines []string) {
	var b strings.Builder
	b.WriteString("\x1b[?7l")
	if d.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", d.drawn)
	}
	for _, l := range lines {
		b.WriteString("\r\x1b[2K")
		b.WriteString(l)
		b.WriteString("\n")
	}
	b.WriteString("\x1b[J\x1b[?7h")
	d.drawn = len(lines)
	_, _ = io.WriteString(d.w, b.String()) // a closed terminal: nothing to do
}

// formatRows pads columns to their widest cell, counting runes (the symbols are multi-byte).
func formatRows(rows [][]string) []string {
	var widths []int
	for _, r := range rows {
		for i, c := range r {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2))
			}
		}
		out = append(out, b.String())
	}
	return out
}

// key names one node's copy of one desired image.
type key struct{ node, ref string }

// pullTiming is the current or last pull of one image on one node.
type pullTiming struct {
	started time.Time
	took    time.Duration // 0 until the pull ended with the image cached
}

// tracker times pulls from what the nodes' debug sockets say: the start of each pull, and its
// end when the image first shows as cached there. It is used from one goroutine.
type tracker map[key]*pullTiming

func (t tracker) observe(v view) {
	for node, pv := range v.pulls {
		for _, p := range pv.Pulling {
			k := key{node, p.Ref}
			if pt := t[k]; pt == nil || !pt.started.Equal(p.Started) {
				t[k] = &pullTiming{started: p.Started}
			}
		}
		for _, ref := range pv.Cached {
			if pt := t[key{node, ref}]; pt != nil && pt.took == 0 {
				pt.took = v.at.Sub(pt.started)
			}
		}
	}
	if v.nodes == nil {
		return
	}
	// A pull the leader reports before the node's socket showed it: time it from now.
	for _, nv := range v.nodes.Nodes {
		for _, ref := range nv.Pulling {
			if k := (key{nv.Name, ref}); t[k] == nil {
				t[k] = &pullTiming{started: v.at}
			}
		}
	}
}
