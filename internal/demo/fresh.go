package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// freshTag is the weekly the demo pushes once the cluster has converged.
const freshTag = "w_2024_11"

// pusher pushes a new weekly the way Artifact Registry would make it known: the image goes
// to the registry, the (fake) Artifact Registry API lists it, and Pub/Sub gets the messages
// Artifact Registry publishes on the topic gcr.
type pusher struct {
	regAddr string
	fake    *gartest.Server
	ps      *lab.PubSub
	size    int64
}

// push pushes freshTag and returns its GAR reference and when the push ended.
func (p *pusher) push(ctx context.Context, out *console) (string, time.Time, error) {
	digest, err := lab.PushRandomImage(ctx, p.regAddr, registryRepo, []string{freshTag}, p.size, 2, nil)
	if err != nil {
		return "", time.Time{}, err
	}
	pushed := time.Now()
	p.fake.Add(garParent, garImage, digest, []string{freshTag}, p.size)
	repo := garHost + "/" + registryRepo
	if err := p.ps.PublishARPush(ctx, repo, digest, freshTag); err != nil {
		return "", time.Time{}, err
	}
	out.say("pushed %s:%s (%s, %d MiB); Artifact Registry's messages published on Pub/Sub topic gcr", garImage, freshTag, shortDigest(digest), p.size>>20)
	return repo + ":" + freshTag, pushed, nil
}

// freshness follows one push to the status API: it says when the image is available.
type freshness struct {
	ref      string
	pushed   time.Time
	reported bool
}

// check says, once, when v's available images hold the pushed image.
func (f *freshness) check(v view, out *console) bool {
	if f == nil || f.reported || v.dump == nil {
		return f != nil && f.reported
	}
	for _, img := range v.dump.AvailableImages {
		if img.ImageURL == f.ref {
			f.reported = true
			out.say("%s is cached on every node and in /available %.1fs after the push (refresh_interval is 1m: the Pub/Sub event did it)",
				tagOf(f.ref), v.at.Sub(f.pushed).Seconds())
			return true
		}
	}
	return false
}

// logWatcher follows the agents' JSON logs for the lines that tell the freshness story: the
// leader's push event and the listing it asked for.
type logWatcher struct {
	paths   map[string]string // node -> log file
	offsets map[string]int64
}

func newLogWatcher(agents []*lab.Agent) *logWatcher {
	w := &logWatcher{paths: map[string]string{}, offsets: map[string]int64{}}
	for _, a := range agents {
		w.paths[a.Node()] = a.LogPath()
	}
	return w
}

// skip moves every log to its end: what is there is old news.
func (w *logWatcher) skip() {
	for node, path := range w.paths {
		if fi, err := os.Stat(path); err == nil {
			w.offsets[node] = fi.Size()
		}
	}
}

// poll returns the new interesting lines, formatted, in node order.
func (w *logWatcher) poll() []string {
	var out []string
	nodes := make([]string, 0, len(w.paths))
	for n := range w.paths {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	for _, node := range nodes {
		f, err := os.Open(w.paths[node])
		if err != nil {
			continue
		}
		if _, err := f.Seek(w.offsets[node], io.SeekStart); err != nil {
			f.Close()
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
		f.Close()
		end := bytes.LastIndexByte(b, '\n')
		if end < 0 {
			continue // no complete line yet
		}
		w.offsets[node] += int64(end + 1)
		sc := bufio.NewScanner(bytes.NewReader(b[:end+1]))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			if l := describe(node, sc.Bytes()); l != "" {
				out = append(out, l)
			}
		}
	}
	return out
}

// describe turns an agent's log line into a demo line, or "" when it is not part of the story.
func describe(node string, line []byte) string {
	var l struct {
		Msg        string  `json:"msg"`
		Component  string  `json:"component"`
		Action     string  `json:"action"`
		Repository string  `json:"repository"`
		Tag        string  `json:"tag"`
		Source     string  `json:"source"`
		Desired    int     `json:"desired"`
		Seconds    float64 `json:"seconds"`
	}
	if json.Unmarshal(line, &l) != nil {
		return ""
	}
	switch l.Msg {
	case "push event":
		via := "Pub/Sub message"
		if l.Component == "notifications" {
			via = "registry notification"
		}
		what := l.Repository
		if l.Tag != "" {
			what += ":" + l.Tag
		}
		return fmt.Sprintf("%s (leader) %s: %s %s", node, via, l.Action, what)
	case "listed source after a push event":
		return fmt.Sprintf("%s (leader) listed %s in %.2fs: %d images selected", node, strings.TrimPrefix(l.Source, "repomen[0] "), l.Seconds, l.Desired)
	}
	return ""
}
