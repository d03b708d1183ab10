package status

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"
)

// Backend gives the handler the cluster's view at the time of a request.
type Backend interface {
	// Snapshot returns the status input when this node is the leader (self=true);
	// otherwise self=false and the leader's name and status API address ("ip:port", "" if
	// unknown). It is called once per request, from the request's goroutine, and must not
	// block on the network.
	Snapshot() (in Input, leader string, leaderAddr string, self bool)
}

const (
	// LeaderHeader names the leader on every answer under /cachemachine/, served locally or
	// proxied.
	LeaderHeader = "X-Cachemachine-Leader"
	// ProxiedHeader marks a request a non-leader forwarded; its value is the leader it was
	// forwarded to. A marked request reaching a non-leader is answered 503, not forwarded
	// again, so two nodes that disagree about the leader cannot bounce a request forever.
	ProxiedHeader = "X-Cachemachine-Proxied"
	// maxProxiedBytes bounds the leader's answer that a non-leader passes on (a dump of
	// thousands of images is a few MiB).
	maxProxiedBytes = 32 << 20
	// DefaultProxyTimeout bounds a request forwarded to the leader, answer included.
	DefaultProxyTimeout = 3 * time.Second
	// Prefix is the path the handler serves; mount it with mux.Handle(Prefix, h).
	Prefix = "/cachemachine/"
)

// readOnlyMessage answers every write: the Python service took POST/DELETE, this one does not.
const readOnlyMessage = "read-only: the configuration comes from the config file " +
	"(cachemachine images are set in config.yaml, not through the API)"

// Option configures NewHandler.
type Option func(*handler)

// WithProxyTimeout sets how long a non-leader waits for the leader's answer (default
// DefaultProxyTimeout); d <= 0 keeps the default.
func WithProxyTimeout(d time.Duration) Option {
	return func(h *handler) {
		if d > 0 {
			h.timeout = d
		}
	}
}

// WithLogger sets the logger for proxy failures (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(h *handler) {
		if l != nil {
			h.log = l
		}
	}
}

// Receiver serves POST /cachemachine/{name}/notifications on the leader: a registry's push
// notifications (*registry.Notifications implements it).
type Receiver interface {
	http.Handler
	// Authorized reports whether r carries the receiver's credentials. A node that does not
	// lead checks it before it forwards a request, so unauthenticated requests stop at once;
	// on the leader ServeHTTP checks (and counts) them itself.
	Authorized(r *http.Request) bool
}

// NotificationsPath is the last element of the notifications endpoint's path.
const NotificationsPath = "notifications"

// maxNotificationBytes bounds a notification request a non-leader forwards: the leader's
// bound, registry.MaxNotificationBytes (a test ties them; status does not import registry).
const maxNotificationBytes = 1 << 20

// WithNotifications serves POST /cachemachine/{name}/notifications with r on the leader;
// other nodes check r.Authorized and forward the request to the leader. Every other write
// is still answered 405.
func WithNotifications(r Receiver) Option {
	return func(h *handler) { h.notify = r }
}

type handler struct {
	b         Backend
	timeout   time.Duration
	log       *slog.Logger
	transport http.RoundTripper
	notify    Receiver // nil: no notifications endpoint
}

// NewHandler returns the read-only status API for the paths under Prefix:
//
//	GET /cachemachine/                  ["<name>"]
//	GET /cachemachine/{name}            Dump (an HTML page for browsers); 404 for another name
//	GET /cachemachine/{name}/available  ImageList of available_images and all_images
//	GET /cachemachine/{name}/desired    ImageList of desired_images and all_images
//	GET /cachemachine/{name}/nodes      Nodes
//
// On the leader it answers from Backend.Snapshot; elsewhere it forwards the request to the
// leader and answers 503 naming the leader when that fails. Writes are answered 405, except
// POST /cachemachine/{name}/notifications when WithNotifications is given. The handler is
// safe for concurrent use.
func NewHandler(b Backend, opts ...Option) http.Handler {
	h := &handler{b: b, timeout: DefaultProxyTimeout, log: slog.Default()}
	for _, o := range opts {
		o(h)
	}
	// A plain HTTP transport that ignores HTTP_PROXY: the leader is a pod address.
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = (&net.Dialer{Timeout: h.timeout, KeepAlive: 30 * time.Second}).DialContext
	t.MaxIdleConnsPerHost = 4
	h.transport = t
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	in, leader, leaderAddr, self := h.b.Snapshot()
	if self && leader == "" {
		leader = in.Leader
	}
	switch {
	case h.notify != nil && isNotifications(r.URL.Path):
		h.serveNotifications(w, r, in, leader, leaderAddr, self)
		return
	case r.Method == http.MethodGet, r.Method == http.MethodHead:
	default:
		w.Header().Set(LeaderHeader, leader)
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": readOnlyMessage})
		return
	}
	if !self {
		h.proxy(w, r, leader, leaderAddr)
		return
	}
	w.Header().Set(LeaderHeader, leader)
	h.serveLocal(w, r, in)
}

// serveLocal answers from the leader's own input.
func (h *handler) serveLocal(w http.ResponseWriter, r *http.Request, in Input) {
	rest, ok := strings.CutPrefix(r.URL.Path, strings.TrimSuffix(Prefix, "/"))
	if !ok || rest != "" && rest[0] != '/' {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("not found: %s", r.URL.Path)})
		return
	}
	rest = strings.Trim(rest, "/")
	if rest == "" {
		writeJSON(w, http.StatusOK, []string{in.Name})
		return
	}
	name, sub, _ := strings.Cut(rest, "/")
	if name != in.Name {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("unknown cache %q", name)})
		return
	}
	switch sub {
	case "":
		w.Header().Add("Vary", "Accept")
		if prefersHTML(r.Header.Values("Accept")) {
			writeHTML(w, in, time.Now())
			return
		}
		writeJSON(w, http.StatusOK, Compute(in))
	case "available":
		d := Compute(in)
		writeJSON(w, http.StatusOK, ImageList{Images: d.AvailableImages, All: d.AllImages})
	case "desired":
		d := Compute(in)
		writeJSON(w, http.StatusOK, ImageList{Images: d.DesiredImages, All: d.AllImages})
	case "nodes":
		writeJSON(w, http.StatusOK, NodesView(in))
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("not found: %s", r.URL.Path)})
	}
}

// isNotifications reports whether path is /cachemachine/{name}/notifications.
func isNotifications(path string) bool {
	rest, ok := strings.CutPrefix(path, Prefix)
	if !ok {
		return false
	}
	name, sub, ok := strings.Cut(rest, "/")
	return ok && name != "" && sub == NotificationsPath
}

// serveNotifications hands the request to the receiver on the leader, which checks the
// method and the credentials and counts what it refuses. Elsewhere it refuses a method other
// than POST and missing credentials itself, then forwards the request (body bounded) to the
// leader.
func (h *handler) serveNotifications(w http.ResponseWriter, r *http.Request, in Input, leader, leaderAddr string, self bool) {
	w.Header().Set(LeaderHeader, leader)
	if self {
		name, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, Prefix), "/")
		if name != in.Name {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("unknown cache %q", name)})
			return
		}
		h.notify.ServeHTTP(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST a notification envelope"})
		return
	}
	if !h.notify.Authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cachemachine notifications"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
		return
	}
	// Read the body here, so that an oversized one is refused here and not reported as an
	// unreachable leader halfway through forwarding.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxNotificationBytes))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("body larger than %d bytes or unreadable: %v", maxNotificationBytes, err)})
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	h.proxy(w, r, leader, leaderAddr)
}

// proxy forwards r to the leader at addr, path and query unchanged.
func (h *handler) proxy(w http.ResponseWriter, r *http.Request, leader, addr string) {
	unavailable := func(reason string) {
		w.Header().Set(LeaderHeader, leader)
		msg := fmt.Sprintf("leader %s unreachable: %s", leader, reason)
		if leader == "" {
			msg = "no leader known: " + reason
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": msg, "leader": leader})
	}
	if via := r.Header.Get(ProxiedHeader); via != "" {
		unavailable(fmt.Sprintf("request was forwarded here as to leader %s, but this node is not the leader; not forwarding twice", via))
		return
	}
	if leader == "" {
		unavailable("the cluster has not elected a leader yet")
		return
	}
	if addr == "" {
		unavailable("its status API address is not known yet")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: addr})
			pr.SetXForwarded()
			pr.Out.Header.Set(ProxiedHeader, leader)
		},
		Transport: h.transport,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Set(LeaderHeader, leader)
			resp.Body = http.MaxBytesReader(nil, resp.Body, maxProxiedBytes)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if ctx.Err() == context.DeadlineExceeded {
				err = fmt.Errorf("no answer within %s", h.timeout)
			}
			h.log.Warn("proxy to leader failed", "peer", leader, "addr", addr, "err", err)
			unavailable(err.Error())
		},
	}
	p.ServeHTTP(w, r.WithContext(ctx))
}

// writeJSON writes v with the exact content type aiohttp's json() insists on.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Our documents are plain structs, maps and slices: this cannot happen.
		http.Error(w, "encode status: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
