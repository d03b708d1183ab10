package status

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
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

// cell is one node × image mark of the matrix.
type cell struct {
	Class, Mark, Title string
}

type row struct {
	Node     NodeView
	Leader   bool
	DiskUsed string
	Cells    []cell
}

type column struct {
	Image     Image
	Available bool
}

type page struct {
	Name           string
	Leader         string
	DesiredVersion uint64
	Dump           Dump
	Columns        []column
	Rows           []row
	Sources        []SourceStatus
}

// writeHTML renders the status page for a person: the node × desired image matrix, the
// sources and the common cache.
func writeHTML(w http.ResponseWriter, in Input) {
	d := Compute(in)
	avail := make(map[Image]bool, len(d.AvailableImages))
	for _, img := range d.AvailableImages {
		avail[img] = true
	}
	p := page{
		Name:           in.Name,
		Leader:         in.Leader,
		DesiredVersion: in.DesiredVersion,
		Dump:           d,
		Sources:        in.Sources,
	}
	for _, img := range d.DesiredImages {
		p.Columns = append(p.Columns, column{Image: img, Available: avail[img]})
	}
	inventories := make(map[string]map[string]string, len(in.Nodes))
	for _, n := range in.Nodes {
		inventories[n.Name] = n.Inventory
	}
	for _, n := range NodesView(in).Nodes {
		r := row{Node: n, Leader: n.Name == in.Leader, DiskUsed: diskUsed(n.Disk)}
		for _, img := range d.DesiredImages {
			r.Cells = append(r.Cells, markOf(n, inventories[n.Name], img))
		}
		p.Rows = append(p.Rows, r)
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
func markOf(n NodeView, inventory map[string]string, img Image) cell {
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
	case cached:
		return cell{"cached", "✓", "cached"}
	case has(n.Pulling):
		return cell{"pulling", "↻", "pulling"}
	}
	for _, h := range n.Held {
		if h.ImageURL == img.ImageURL {
			return cell{"held", "⏸", "held: " + h.Reason}
		}
	}
	for _, f := range n.Failed {
		if f.ImageURL == img.ImageURL {
			title := fmt.Sprintf("failed (%d attempts): %s", f.Attempts, f.Error)
			if !f.NextRetry.IsZero() {
				title += "; next retry " + f.NextRetry.UTC().Format(time.RFC3339)
			}
			return cell{"failed", "✗", title}
		}
	}
	if has(n.Missing) {
		return cell{"missing", "·", "missing"}
	}
	return cell{"unknown", "?", "not reported"}
}

func diskUsed(d Disk) string {
	if d.CapacityBytes == 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f%% of %.1f GiB", 100*float64(d.UsedBytes)/float64(d.CapacityBytes),
		float64(d.CapacityBytes)/(1<<30))
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
<title>cachemachine {{.Name}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th.img{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}
td.mark{text-align:center;font-weight:bold}
.cached{background:#d7f5d7;color:#186018}.pulling{background:#dde8fb;color:#1a4a9c}
.held{background:#fdf0c4;color:#7a5a00}.failed{background:#fbd9d9;color:#9c1a1a}
.missing{color:#888}.unknown{color:#bbb}.down{opacity:.5}.avail{color:#186018}
.err{color:#9c1a1a}code{font-size:.9em}
</style>
</head>
<body>
<h1>cachemachine <code>{{.Name}}</code></h1>
<p>Leader: <b>{{.Leader}}</b> · desired list version {{.DesiredVersion}} ·
{{len .Dump.AvailableImages}} of {{len .Dump.DesiredImages}} desired images cached on every alive node ·
JSON: <a href="/cachemachine/{{.Name}}/available">available</a>,
<a href="/cachemachine/{{.Name}}/desired">desired</a>,
<a href="/cachemachine/{{.Name}}/nodes">nodes</a></p>

<h2>Nodes × desired images</h2>
<table>
<tr><th>node</th><th>version</th><th>disk</th>
{{- range .Columns}}<th class="img" title="{{.Image.ImageURL}} {{.Image.ImageHash}}">{{.Image.Name}}{{if .Available}} <span class="avail">●</span>{{end}}</th>{{end}}</tr>
{{- range .Rows}}
<tr{{if not .Node.Alive}} class="down"{{end}}><td>{{.Node.Name}}{{if .Leader}} ★{{end}}{{if not .Node.Alive}} (down){{end}}{{if .Node.RuntimeError}} <span class="err" title="{{.Node.RuntimeError}}">runtime unavailable</span>{{end}}</td><td>{{.Node.Version}}</td><td>{{.DiskUsed}}</td>
{{- range .Cells}}<td class="mark {{.Class}}" title="{{.Title}}">{{.Mark}}</td>{{end}}</tr>
{{- end}}
</table>
<p>✓ cached · ↻ pulling · ⏸ held · ✗ failed · · missing · ? not reported · ● cached on every alive node · ★ leader</p>

<h2>Sources</h2>
<table>
<tr><th>source</th><th>last listed</th><th>images</th><th>error</th></tr>
{{- range .Sources}}
<tr><td>{{.Name}}</td><td>{{time .ListedAt}}</td><td>{{.Images}}</td><td class="err">{{.Error}}</td></tr>
{{- else}}
<tr><td colspan="4">no sources</td></tr>
{{- end}}
</table>

<h2>Common cache</h2>
<table>
<tr><th>image_url</th><th>image_hash</th><th>tags</th></tr>
{{- range .Dump.CommonCache}}
<tr><td><code>{{.ImageURL}}</code></td><td><code title="{{.ImageHash}}">{{short .ImageHash}}</code></td><td>{{join .Tags ", "}}</td></tr>
{{- else}}
<tr><td colspan="3">nothing is cached on every alive node</td></tr>
{{- end}}
</table>
</body>
</html>
`))
