package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cachemachine/cachemachine/image"
	"github.com/prometheus/client_golang/prometheus"
)

// A registry (docker-registry, distribution, Harbor, …) can POST an envelope of events to an
// HTTP endpoint on every push (its config's notifications.endpoints). Notifications is that
// endpoint for cachemachine: an event is only a trigger to list the matching RubinRepoMan
// source again, never data.

// EventsMediaType is the media type of a notification envelope.
const EventsMediaType = "application/vnd.docker.distribution.events.v1+json"

// MaxNotificationBytes bounds an envelope (a registry batches a few events; each is about
// 1 KiB).
const MaxNotificationBytes = 1 << 20

// tokenRereadEvery bounds how often the token file is read again, so a rotated Secret takes
// effect within a second.
const tokenRereadEvery = time.Second

// Envelope is a notification envelope: the events of one delivery.
type Envelope struct {
	Events []Event `json:"events"`
}

// Event is one registry event, with the fields cachemachine reads.
type Event struct {
	ID     string `json:"id"`
	Action string `json:"action"` // push, pull, delete, mount
	Target struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host string `json:"host"`
	} `json:"request"`
}

// Repositories returns the repositories ("host/path") a push or delete of a manifest
// concerns: target.repository under the host of target.url (the registry's http.host, or
// the host the client pushed to) and under request.host, each normalised as
// image.Ref.Repository does (so they compare with the sources' repositories); a candidate
// that does not parse is left out. Other events (blob pushes, pulls, mounts) concern none.
func (e Event) Repositories() []string {
	if e.Action != "push" && e.Action != "delete" || e.Target.Repository == "" {
		return nil
	}
	if e.Target.Tag == "" && !isManifest(e.Target.MediaType) && e.Action == "push" {
		return nil // a layer or config blob
	}
	var out []string
	add := func(host string) {
		if host == "" || strings.Contains(host, "/") {
			return
		}
		ref, err := image.ParseRef(host + "/" + e.Target.Repository)
		if err != nil {
			return
		}
		r := ref.Repository()
		for _, o := range out {
			if o == r {
				return
			}
		}
		out = append(out, r)
	}
	if u, err := url.Parse(e.Target.URL); err == nil {
		add(u.Host)
	}
	add(e.Request.Host)
	return out
}

func isManifest(mediaType string) bool {
	return strings.Contains(mediaType, "manifest") || strings.Contains(mediaType, "image.index")
}

// Notifications receives a registry's notification envelopes on the leader: it implements
// leader.Trigger (Watch marks the time this node leads) and http.Handler (the status server
// mounts it on POST /cachemachine/{name}/notifications). Requests must carry
// "Authorization: Bearer <token>", the token read from a file. Its methods are safe for
// concurrent use.
type Notifications struct {
	path    string // token file
	log     *slog.Logger
	metrics *notifyMetrics

	tokenMu   sync.Mutex // guards the fields below
	tokenHash [sha256.Size]byte
	readAt    time.Time
	readErr   string // the last failed re-read, logged once

	mu      sync.Mutex                   // guards changed and the malformed log
	changed func(repository string) bool // set while Watch runs: this node leads
	logged  time.Time
	dropped int
}

// NewNotifications reads the bearer token from tokenFile (surrounding white space is
// ignored; an empty token is an error) and returns the endpoint. logger and reg may be nil.
func NewNotifications(tokenFile string, logger *slog.Logger, reg prometheus.Registerer) (*Notifications, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &Notifications{path: tokenFile, log: logger, metrics: newNotifyMetrics(reg)}
	h, err := readToken(tokenFile)
	if err != nil {
		return nil, err
	}
	n.tokenHash, n.readAt = h, time.Now()
	return n, nil
}

func readToken(path string) ([sha256.Size]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("read notifications token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return [sha256.Size]byte{}, fmt.Errorf("notifications token file %s is empty", path)
	}
	return sha256.Sum256([]byte(tok)), nil
}

// Name identifies the trigger in status and logs.
func (n *Notifications) Name() string { return "registry notifications" }

// Watch makes this node act on notifications until ctx ends (it runs while the node leads);
// it reports nil and returns nil.
func (n *Notifications) Watch(ctx context.Context, changed func(repository string) bool, report func(error)) error {
	n.mu.Lock()
	n.changed = changed
	n.mu.Unlock()
	report(nil)
	<-ctx.Done()
	n.mu.Lock()
	n.changed = nil
	n.mu.Unlock()
	return nil
}

// Authorized reports whether r carries the bearer token, compared in constant time. The
// token file is read again when a second has passed since the last read; a failed re-read
// keeps the last good token (and is logged once).
func (n *Notifications) Authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || got == "" {
		got = "\x00" // compare anyway: the time taken tells nothing
	}
	gotHash := sha256.Sum256([]byte(strings.TrimSpace(got)))
	want := n.token()
	return subtle.ConstantTimeCompare(gotHash[:], want[:]) == 1 && ok
}

func (n *Notifications) token() [sha256.Size]byte {
	n.tokenMu.Lock()
	defer n.tokenMu.Unlock()
	if time.Since(n.readAt) >= tokenRereadEvery {
		n.readAt = time.Now()
		h, err := readToken(n.path)
		switch {
		case err == nil:
			n.tokenHash, n.readErr = h, ""
		case err.Error() != n.readErr:
			n.readErr = err.Error()
			n.log.Warn("notifications token not re-read; keeping the last good one", "err", err)
		}
	}
	return n.tokenHash
}

// ServeHTTP accepts one envelope: 401 without the token, 415 for another content type, 413
// above MaxNotificationBytes, 400 when malformed, 503 while this node does not lead (the
// registry retries), else 200 with how many events matched a source.
func (n *Notifications) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		n.answer(w, http.StatusMethodNotAllowed, "method_not_allowed", map[string]any{"error": "POST a notification envelope"})
		return
	}
	if !n.Authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cachemachine notifications"`)
		n.answer(w, http.StatusUnauthorized, "unauthorized", map[string]any{"error": "missing or wrong bearer token"})
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != EventsMediaType && mt != "application/json" {
		n.answer(w, http.StatusUnsupportedMediaType, "malformed", map[string]any{"error": "want Content-Type " + EventsMediaType})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxNotificationBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			n.answer(w, http.StatusRequestEntityTooLarge, "too_large", map[string]any{"error": fmt.Sprintf("envelope larger than %d bytes", MaxNotificationBytes)})
			return
		}
		n.answer(w, http.StatusBadRequest, "malformed", map[string]any{"error": "read envelope: " + err.Error()})
		return
	}
	var env Envelope
	if err := json.Unmarshal(body, &env); err != nil {
		n.malformed(r, err)
		n.answer(w, http.StatusBadRequest, "malformed", map[string]any{"error": "malformed envelope: " + err.Error()})
		return
	}
	n.mu.Lock()
	changed := n.changed
	n.mu.Unlock()
	if changed == nil {
		n.answer(w, http.StatusServiceUnavailable, "not_leader", map[string]any{"error": "this node does not lead (yet): try again"})
		return
	}
	matched := 0
	for _, e := range env.Events {
		repos := e.Repositories()
		if len(repos) == 0 {
			n.metrics.events.WithLabelValues("skipped").Inc()
			continue
		}
		hit := false
		for _, repo := range repos {
			if changed(repo) {
				hit = true
				n.log.Info("push event", "action", e.Action, "repository", repo, "tag", e.Target.Tag, "digest", e.Target.Digest)
				break
			}
		}
		if hit {
			matched++
			n.metrics.events.WithLabelValues("matched").Inc()
		} else {
			n.metrics.events.WithLabelValues("ignored").Inc()
			n.log.Debug("push event for a repository no source lists", "repositories", repos)
		}
	}
	n.answer(w, http.StatusOK, "accepted", map[string]any{"events": len(env.Events), "matched": matched})
}

func (n *Notifications) answer(w http.ResponseWriter, code int, result string, v map[string]any) {
	n.metrics.requests.WithLabelValues(result).Inc()
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// malformed logs a malformed envelope at most once a minute.
func (n *Notifications) malformed(r *http.Request, err error) {
	n.mu.Lock()
	if !n.logged.IsZero() && time.Since(n.logged) < time.Minute {
		n.dropped++
		n.mu.Unlock()
		return
	}
	dropped := n.dropped
	n.logged, n.dropped = time.Now(), 0
	n.mu.Unlock()
	peer, _, _ := net.SplitHostPort(r.RemoteAddr)
	n.log.Warn("malformed registry notification", "peer", peer, "err", err, "suppressed", dropped)
}

type notifyMetrics struct {
	requests *prometheus.CounterVec
	events   *prometheus.CounterVec
}

func newNotifyMetrics(reg prometheus.Registerer) *notifyMetrics {
	m := &notifyMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_registry_notifications_total",
			Help: "Registry notification requests by result: accepted, unauthorized, malformed, too_large, not_leader, method_not_allowed.",
		}, []string{"result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_registry_notification_events_total",
			Help: "Registry notification events by result: matched (a source lists the repository), ignored, skipped (not a manifest push or delete).",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.events)
	}
	return m
}
