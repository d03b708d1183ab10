package status

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/image"
)

// prefersHTML reports whether an Accept header ranks text/html (or XHTML) strictly above
// application/json, as browsers do; "*/*" (curl, aiohttp) and no header get JSON.
func prefersHTML(accept []string) bool {
	if len(accept) == 0 {
		return false
	}
	ranges := parseAccept(strings.Join(accept, ","))
	html := max(quality(ranges, "text/html"), quality(ranges, "application/xhtml+xml"))
	return html > quality(ranges, "application/json")
}

type mediaRange struct {
	typ, sub string
	q        float64
}

func parseAccept(s string) []mediaRange {
	var out []mediaRange
	for part := range strings.SplitSeq(s, ",") {
		fields := strings.Split(part, ";")
		typ, sub, ok := strings.Cut(strings.ToLower(strings.TrimSpace(fields[0])), "/")
		if !ok {
			continue
		}
		q := 1.0
		for _, p := range fields[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(strings.TrimSpace(k), "q") {
				if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && f >= 0 && f <= 1 {
					q = f
				}
			}
		}
		out = append(out, mediaRange{strings.TrimSpace(typ), strings.TrimSpace(sub), q})
	}
	return out
}

// quality is the q of the most specific range matching the media type mt (RFC 9110 §12.5.1).
func quality(ranges []mediaRange, mt string) float64 {
	typ, sub, _ := strings.Cut(mt, "/")
	best, q := 0, 0.0
	for _, r := range ranges {
		spec := 0
		switch {
		case r.typ == typ && r.sub == sub:
			spec = 3
		case r.typ == typ && r.sub == "*":
			spec = 2
		case r.typ == "*" && r.sub == "*":
			spec = 1
		}
		if spec > best {
			best, q = spec, r.q
		}
	}
	return q
}

// cell is one node × image mark of the matrix. Every mark is ASCII, Latin-1 or drawn with CSS,
// so that it renders in any browser's default fonts.
type cell struct {
	Class, Mark, Title string
	// Pinned adds the pin dot to a cached cell.
	Pinned bool
	// Percent is a pull's progress bar (-1: no bar).
	Percent int
}

type row struct {
	Node     NodeView
	Leader   bool
	Updated  string
	DiskUsed string
	DiskPct  int
	Pins     string
	PinsNote string
	// WarmingNote is the warming badge's title: until when, and what the node still misses.
	WarmingNote string
	Cells       []cell
}

type column struct {
	Image     Image
	Available bool
}

// pullRow is one pull in flight, for the progress bars.
type pullRow struct {
	Node, Image, Phase, Detail string
	Percent                    int // -1: unknown
}

type page struct {
	Name        string
	Leader      string
	Published   string // "5 min ago" or the version
	VersionText string
	Dump        Dump
	Columns     []column
	Rows        []row
	Pulls       []pullRow
	Alive       int
	Sources     []SourceStatus
	Refresh     bool
	// Counted names the nodes common_cache is computed over: warming nodes are left out
	// unless every alive node is warming.
	Counted string
}

// writeHTML renders the status page for a person at now: summary, pulls in flight with
// progress bars, the node × desired image matrix, the sources and the common cache. While a
// pull runs, the page reloads itself every few seconds.
func writeHTML(w http.ResponseWriter, in Input, now time.Time) {
	d := Compute(in)
	avail := make(map[Image]bool, len(d.AvailableImages))
	for _, img := range d.AvailableImages {
		avail[img] = true
	}
	published, versionText := versionTime(in.DesiredVersion, now)
	p := page{
		Name:        in.Name,
		Leader:      in.Leader,
		Published:   published,
		VersionText: versionText,
		Dump:        d,
		Sources:     in.Sources,
		Counted:     "every alive node",
	}
	if slices.ContainsFunc(in.Nodes, func(n Node) bool { return n.Alive && n.Warming }) &&
		slices.ContainsFunc(in.Nodes, func(n Node) bool { return n.Alive && !n.Warming }) {
		p.Counted = "every alive node that is not warming"
	}
	for _, img := range d.DesiredImages {
		p.Columns = append(p.Columns, column{Image: img, Available: avail[img]})
	}
	inventories := make(map[string]map[string]string, len(in.Nodes))
	for _, n := range in.Nodes {
		inventories[n.Name] = n.Inventory
	}
	names := make(map[string]string, len(d.DesiredImages))
	for _, img := range d.DesiredImages {
		names[img.ImageURL] = img.Name
	}
	for _, n := range NodesView(in).Nodes {
		if n.Alive {
			p.Alive++
		}
		r := row{Node: n, Leader: n.Name == in.Leader, Updated: "unknown", DiskUsed: diskUsed(n.Disk), DiskPct: diskPct(n.Disk)}
		if n.Updated != nil {
			r.Updated = ago(now, *n.Updated)
		}
		r.Pins, r.PinsNote = pinsText(n.Pinning)
		if n.Warming {
			r.WarmingNote = warmingNote(n, names, now)
		}
		for _, img := range d.DesiredImages {
			r.Cells = append(r.Cells, markOf(n, inventories[n.Name], img, now))
		}
		p.Rows = append(p.Rows, r)
		for _, ref := range n.Pulling {
			pr := Progress{ImageURL: ref}
			for _, x := range n.Progress {
				if x.ImageURL == ref {
					pr = x
				}
			}
			name := names[ref]
			if name == "" {
				name = ref
			}
			p.Pulls = append(p.Pulls, pullRow{Node: n.Name, Image: name, Phase: phaseWord(pr.Phase), Detail: progressDetail(pr, now), Percent: percent(pr)})
		}
		if len(n.Pulling) > 0 && n.Alive {
			p.Refresh = true
		}
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, p); err != nil {
		http.Error(w, "render status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}

// markOf says where img stands on node n. The node's own cached list decides, and so does its
// inventory holding the image's digest under any name.
func markOf(n NodeView, inventory map[string]string, img Image, now time.Time) cell {
	has := func(list []string) bool {
		for _, s := range list {
			if s == img.ImageURL {
				return true
			}
		}
		return false
	}
	cached := has(n.Cached)
	if !cached && img.ImageHash != "" {
		for _, digest := range inventory {
			if digest == img.ImageHash {
				cached = true
				break
			}
		}
	}
	switch {
	case cached && has(n.Pinned):
		return cell{Class: "cached", Title: "cached, pinned: the kubelet's image GC skips it", Pinned: true, Percent: -1}
	case cached:
		return cell{Class: "cached", Title: "cached", Percent: -1}
	case has(n.Pulling):
		for _, pr := range n.Progress {
			if pr.ImageURL == img.ImageURL {
				pct := percent(pr)
				mark := phaseWord(pr.Phase)
				if pct >= 0 {
					mark = fmt.Sprintf("%d%%", pct)
				}
				return cell{Class: "pulling", Mark: mark, Title: "pulling: " + progressDetail(pr, now), Percent: pct}
			}
		}
		return cell{Class: "pulling", Mark: "pulling", Title: "pulling", Percent: -1}
	}
	for _, h := range n.Held {
		if h.ImageURL == img.ImageURL {
			return cell{Class: "held", Title: "held: " + h.Reason, Percent: -1}
		}
	}
	for _, f := range n.Failed {
		if f.ImageURL == img.ImageURL {
			title := fmt.Sprintf("failed (%d attempts): %s", f.Attempts, f.Error)
			if !f.NextRetry.IsZero() {
				title += "; next retry " + f.NextRetry.UTC().Format(time.RFC3339)
			}
			return cell{Class: "failed", Mark: "\u00d7", Title: title, Percent: -1}
		}
	}
	if has(n.Missing) {
		return cell{Class: "missing", Mark: "\u00b7", Title: "missing", Percent: -1}
	}
	return cell{Class: "unknown", Mark: "?", Title: "not reported", Percent: -1}
}

// warmingNote says why a warming node is not counted for the common cache, until when at
// most, and which desired images it still misses (by their names where the list has one).
func warmingNote(n NodeView, names map[string]string, now time.Time) string {
	note := "started recently and still filling its cache: not counted for the common cache until it holds every desired image"
	if n.WarmingUntil != nil {
		note += " or until " + formatTime(*n.WarmingUntil)
		if n.WarmingUntil.After(now) {
			note += " (in " + duration(n.WarmingUntil.Sub(now)) + ")"
		}
	}
	missing := make([]string, 0, len(n.WarmingMissing))
	for _, ref := range n.WarmingMissing {
		if name := names[ref]; name != "" && name != ref {
			ref = name + " (" + ref + ")"
		}
		missing = append(missing, ref)
	}
	if len(missing) > 0 {
		note += "; still misses: " + strings.Join(missing, ", ")
	}
	return note
}

// percent is a pull's progress in percent, -1 when its total is unknown.
func percent(p Progress) int {
	if p.BytesTotal == 0 {
		return -1
	}
	return int(min(p.BytesDone, p.BytesTotal) * 100 / p.BytesTotal)
}

func phaseWord(phase string) string {
	if phase == "" {
		return "pulling"
	}
	return phase
}

// progressDetail is "1.2 GiB of 4.0 GiB, 80 MiB/s, about 30 s left (as of 2 s ago)".
func progressDetail(p Progress, now time.Time) string {
	var parts []string
	switch {
	case p.BytesTotal > 0:
		parts = append(parts, fmt.Sprintf("%s of %s", image.FormatSize(p.BytesDone), image.FormatSize(p.BytesTotal)))
	case p.BytesDone > 0:
		parts = append(parts, image.FormatSize(p.BytesDone))
	}
	if p.BytesPerSecond > 0 {
		parts = append(parts, image.FormatSize(p.BytesPerSecond)+"/s")
	}
	if p.ETASeconds != nil && p.MeasuredAt != nil && p.Phase == "downloading" {
		left := time.Duration(*p.ETASeconds*float64(time.Second)) - now.Sub(*p.MeasuredAt)
		parts = append(parts, "about "+duration(max(0, left))+" left")
	}
	if p.Phase == "unpacking" {
		parts = append(parts, "all bytes downloaded, unpacking")
	}
	if p.MeasuredAt != nil {
		parts = append(parts, "as of "+ago(now, *p.MeasuredAt))
	}
	if len(parts) == 0 {
		return phaseWord(p.Phase)
	}
	return strings.Join(parts, ", ")
}

// pinsText is a node's pinning in a word or two, and the sentence behind it.
func pinsText(p Pinning) (string, string) {
	note := p.Detail
	switch p.Status {
	case "":
		return "not reported", "this node's agent does not report pins (an older version, or a cluster mid-upgrade)"
	case "honoured":
		text := image.FormatSize(p.PinnedBytes) + " pinned"
		if p.BudgetBytes > 0 {
			text += " of " + image.FormatSize(p.BudgetBytes)
		}
		if len(p.OverBudget) > 0 {
			text += fmt.Sprintf(", %d over budget", len(p.OverBudget))
		}
		return text, note
	case "unsupported":
		return "not honoured", note
	}
	return p.Status, note
}

func diskUsed(d Disk) string {
	if d.CapacityBytes == 0 {
		return "?"
	}
	return fmt.Sprintf("%d%% of %s", diskPct(d), image.FormatSize(d.CapacityBytes))
}

func diskPct(d Disk) int {
	if d.CapacityBytes == 0 {
		return 0
	}
	return int(min(100, d.UsedBytes*100/d.CapacityBytes))
}

// ago is how long before now t was, as a person says it ("3 s ago", "5 min ago").
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return duration(d) + " ago"
}

// duration is d rounded to what a person reads: "3 s", "5 min", "2 h", "3 d".
func duration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Round(time.Second)/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h", int(d/time.Hour))
	}
	return fmt.Sprintf("%d d", int(d/(24*time.Hour)))
}

// versionTime reads a desired-list version as the time the leader published it: versions
// are publication times in ns (or one more than the list before). Anything else is shown as
// the number.
func versionTime(v uint64, now time.Time) (string, string) {
	if v == 0 {
		return "not yet", "no desired list published yet"
	}
	t := time.Unix(0, int64(min(v, 1<<63-1)))
	if t.Before(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)) || t.After(now.Add(time.Hour)) {
		return fmt.Sprintf("version %d", v), fmt.Sprintf("desired list version %d", v)
	}
	return ago(now, t), fmt.Sprintf("desired list version %d, published %s", v, t.UTC().Format(time.RFC3339))
}

func shortDigest(d string) string {
	if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return d[:len(d)-len(hex)] + hex[:12]
	}
	return d
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

var pageTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"short": shortDigest,
	"time":  formatTime,
	"join":  strings.Join,
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{{- if .Refresh}}
<meta http-equiv="refresh" content="3">
{{- end}}
<title>cachemachine {{.Name}}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:1.5em;color:#1f2328;background:#f6f8fa}
h1{font-size:1.5em;margin:0 0 .6em}h2{font-size:1.1em;margin:1.6em 0 .5em}
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:.6em 1em;min-width:10em}
.card b{display:block;font-size:1.5em}.card span{color:#57606a}
.good b{color:#1a7f37}.warn b{color:#9a6700}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #d0d7de;padding:.3em .55em;text-align:left;vertical-align:middle}
th{background:#f0f3f6;font-weight:600}
th.img{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;padding:.5em .3em}
td.mark{text-align:center;min-width:3.2em;position:relative;font-weight:600}
.cached{background:#dafbe1}.pulling{background:#ddf4ff;color:#0550ae}
.held{background:#fff8c5}.failed{background:#ffebe9;color:#cf222e}
.missing{color:#8c959f}.unknown{color:#afb8c1}.down{opacity:.55}
.err{color:#cf222e}.note{color:#57606a;font-size:.9em}code{font-size:.9em}
.check{display:inline-block;width:.45em;height:.85em;border:solid #1a7f37;border-width:0 .2em .2em 0;transform:rotate(45deg);margin-bottom:.2em}
.pause{display:inline-block;width:.25em;height:.9em;border-left:.22em solid #9a6700;border-right:.22em solid #9a6700}
.pin{position:absolute;top:.25em;right:.25em;width:.45em;height:.45em;border-radius:50%;background:#8250df}
.dot{display:inline-block;width:.6em;height:.6em;border-radius:50%;background:#1a7f37;vertical-align:middle}
.badge{display:inline-block;font-size:.75em;padding:0 .45em;border-radius:1em;background:#eaeef2;color:#57606a;margin-left:.3em}
.badge.lead{background:#fbefff;color:#8250df}.badge.warm{background:#fff8c5;color:#9a6700}
.bar{height:.55em;background:#eaeef2;border-radius:.3em;overflow:hidden;min-width:6em}
.bar i{display:block;height:100%;background:#0969da}
.bar.disk i{background:#8c959f}.bar.full i{background:#cf222e}
.bar.tall{height:1em;min-width:16em}
.legend span{margin-right:1.2em;white-space:nowrap}
.legend .mark{display:inline-block;min-width:2.4em;text-align:center;position:relative;border:1px solid #d0d7de;padding:0 .2em}
</style>
</head>
<body>
<h1>cachemachine <code>{{.Name}}</code></h1>
<div class="cards">
<div class="card {{if eq (len .Dump.AvailableImages) (len .Dump.DesiredImages)}}good{{else}}warn{{end}}"><b>{{len .Dump.AvailableImages}} of {{len .Dump.DesiredImages}}</b><span>desired images cached on {{.Counted}}</span></div>
<div class="card"><b>{{.Alive}} of {{len .Rows}}</b><span>nodes alive</span></div>
<div class="card"><b>{{len .Pulls}}</b><span>pulls in flight</span></div>
<div class="card"><b>{{.Published}}</b><span title="{{.VersionText}}">desired list published</span></div>
<div class="card"><b>{{.Leader}}</b><span>leader</span></div>
</div>
<p class="note">JSON: <a href="/cachemachine/{{.Name}}/available">available</a>,
<a href="/cachemachine/{{.Name}}/desired">desired</a>,
<a href="/cachemachine/{{.Name}}/nodes">nodes</a>{{if .Refresh}} &middot; this page reloads every 3 s while pulls run{{end}}</p>

{{- if .Pulls}}
<h2>Pulls in flight</h2>
<table>
<tr><th>node</th><th>image</th><th>progress</th><th>phase</th><th>detail</th></tr>
{{- range .Pulls}}
<tr><td>{{.Node}}</td><td>{{.Image}}</td><td>{{if ge .Percent 0}}<div class="bar tall" role="progressbar" aria-valuenow="{{.Percent}}" aria-valuemin="0" aria-valuemax="100"><i style="width:{{.Percent}}%"></i></div>{{else}}<span class="note">size unknown</span>{{end}}</td><td>{{if ge .Percent 0}}{{.Percent}}% {{end}}{{.Phase}}</td><td class="note">{{.Detail}}</td></tr>
{{- end}}
</table>
{{- end}}

<h2>Nodes &times; desired images</h2>
<table>
<tr><th>node</th><th>state</th><th>disk</th><th>pins</th>
{{- range .Columns}}<th class="img" title="{{.Image.ImageURL}} {{.Image.ImageHash}}">{{.Image.Name}}{{if .Available}} <span class="dot" title="cached on {{$.Counted}}"></span>{{end}}</th>{{end}}</tr>
{{- range .Rows}}
<tr{{if not .Node.Alive}} class="down"{{end}}><td>{{.Node.Name}}{{if .Leader}}<span class="badge lead">leader</span>{{end}}{{if not .Node.Alive}}<span class="badge">down</span>{{end}}{{if .Node.RuntimeError}} <span class="err" title="{{.Node.RuntimeError}}">runtime unavailable</span>{{end}}{{if .Node.Warming}}<span class="badge warm" title="{{.WarmingNote}}">warming, {{len .Node.WarmingMissing}} missing</span>{{end}}</td>
<td title="state version {{.Node.Version}}">updated {{.Updated}}</td>
<td title="{{.DiskUsed}}"><div class="bar disk{{if ge .DiskPct 85}} full{{end}}"><i style="width:{{.DiskPct}}%"></i></div><span class="note">{{.DiskUsed}}</span></td>
<td title="{{.PinsNote}}">{{.Pins}}</td>
{{- range .Cells}}<td class="mark {{.Class}}" title="{{.Title}}">{{if eq .Class "cached"}}<span class="check"></span>{{if .Pinned}}<span class="pin"></span>{{end}}{{else if eq .Class "held"}}<span class="pause"></span>{{else if eq .Class "pulling"}}{{if ge .Percent 0}}<div class="bar"><i style="width:{{.Percent}}%"></i></div>{{end}}{{.Mark}}{{else}}{{.Mark}}{{end}}</td>{{end}}</tr>
{{- end}}
</table>
<p class="legend"><span><span class="mark cached"><span class="check"></span></span> cached</span><span><span class="mark cached"><span class="check"></span><span class="pin"></span></span> cached and pinned</span><span><span class="mark pulling">42%</span> pulling</span><span><span class="mark held"><span class="pause"></span></span> held</span><span><span class="mark failed">&times;</span> failed</span><span><span class="mark missing">&middot;</span> missing</span><span><span class="mark unknown">?</span> not reported</span><span><span class="dot"></span> cached on {{.Counted}}</span><span><span class="badge warm">warming</span> started recently, still filling its cache: not counted until it holds every desired image or its grace ends</span></p>

<h2>Sources</h2>
<table>
<tr><th>source</th><th>last listed</th><th>images</th><th>error</th><th>push events</th><th>last event</th></tr>
{{- range .Sources}}
<tr><td>{{.Name}}</td><td>{{time .ListedAt}}</td><td>{{.Images}}</td><td class="err">{{.Error}}{{if and .Error .TriggerError}}; {{end}}{{.TriggerError}}</td><td>{{if .Triggers}}{{.Triggers}}{{else}}polling only{{end}}</td><td>{{if .Triggers}}{{time .EventAt}}{{end}}</td></tr>
{{- else}}
<tr><td colspan="6">no sources</td></tr>
{{- end}}
</table>

<h2>Common cache</h2>
<table>
<tr><th>image_url</th><th>image_hash</th><th>tags</th></tr>
{{- range .Dump.CommonCache}}
<tr><td><code>{{.ImageURL}}</code></td><td><code title="{{.ImageHash}}">{{short .ImageHash}}</code></td><td>{{join .Tags ", "}}</td></tr>
{{- else}}
<tr><td colspan="3">nothing is cached on {{.Counted}}</td></tr>
{{- end}}
</table>
</body>
</html>
`))
