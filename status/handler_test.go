package status

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/registry"
)

const browserAccept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"

// fakeBackend returns a fixed answer.
type fakeBackend struct {
	in         Input
	leader     string
	leaderAddr string
	self       bool
}

func (f fakeBackend) Snapshot() (Input, string, string, bool) {
	return f.in, f.leader, f.leaderAddr, f.self
}

func leaderBackend() fakeBackend {
	in := representative()
	return fakeBackend{in: in, leader: in.Leader, self: true}
}

func do(t *testing.T, method, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

func TestRoutes(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(NewHandler(leaderBackend()))
	t.Cleanup(srv.Close)
	d := Compute(representative())
	mustJSON := func(v any) string {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		return string(b)
	}

	tests := []struct {
		name     string
		path     string
		accept   string
		wantCode int
		wantBody string // JSON
	}{
		{name: "list", path: "/cachemachine/", wantCode: 200, wantBody: `["jupyter"]`},
		{name: "dump", path: "/cachemachine/jupyter", wantCode: 200, wantBody: mustJSON(d)},
		{name: "dump for aiohttp", path: "/cachemachine/jupyter", accept: "*/*", wantCode: 200, wantBody: mustJSON(d)},
		{name: "dump for json first", path: "/cachemachine/jupyter", accept: "application/json, text/html;q=0.5", wantCode: 200, wantBody: mustJSON(d)},
		{name: "dump, trailing slash", path: "/cachemachine/jupyter/", wantCode: 200, wantBody: mustJSON(d)},
		{
			name: "available", path: "/cachemachine/jupyter/available", accept: browserAccept, wantCode: 200,
			wantBody: mustJSON(map[string]any{"images": d.AvailableImages, "all": d.AllImages}),
		},
		{
			name: "desired", path: "/cachemachine/jupyter/desired", wantCode: 200,
			wantBody: mustJSON(map[string]any{"images": d.DesiredImages, "all": d.AllImages}),
		},
		{name: "nodes", path: "/cachemachine/jupyter/nodes", wantCode: 200, wantBody: mustJSON(NodesView(representative()))},
		{name: "unknown cache", path: "/cachemachine/x", wantCode: 404, wantBody: `{"error":"unknown cache \"x\""}`},
		{name: "unknown cache, browser", path: "/cachemachine/x", accept: browserAccept, wantCode: 404, wantBody: `{"error":"unknown cache \"x\""}`},
		{name: "unknown cache available", path: "/cachemachine/x/available", wantCode: 404, wantBody: `{"error":"unknown cache \"x\""}`},
		{name: "unknown sub path", path: "/cachemachine/jupyter/bogus", wantCode: 404, wantBody: `{"error":"not found: /cachemachine/jupyter/bogus"}`},
		{name: "outside the prefix", path: "/other", wantCode: 404, wantBody: `{"error":"not found: /other"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := map[string]string{}
			if tt.accept != "" {
				h["Accept"] = tt.accept
			}
			resp, body := do(t, http.MethodGet, srv.URL+tt.path, h)
			require.Equal(t, tt.wantCode, resp.StatusCode, string(body))
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			require.Equal(t, "gke-pool-1-a", resp.Header.Get(LeaderHeader))
			require.JSONEq(t, tt.wantBody, string(body))
		})
	}

	t.Run("available is what the spawner reads", func(t *testing.T) {
		t.Parallel()
		_, body := do(t, http.MethodGet, srv.URL+"/cachemachine/jupyter/available", nil)
		var got struct {
			Images []map[string]any `json:"images"`
		}
		require.NoError(t, json.Unmarshal(body, &got))
		require.Len(t, got.Images, 3, "recommended, w_2021_22 and busybox are on both alive nodes")
		for _, img := range got.Images {
			require.Contains(t, img, "image_url")
			require.Contains(t, img, "image_hash")
			require.Contains(t, img, "name")
		}
	})

	t.Run("head", func(t *testing.T) {
		t.Parallel()
		resp, body := do(t, http.MethodHead, srv.URL+"/cachemachine/jupyter", nil)
		require.Equal(t, 200, resp.StatusCode)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		require.Empty(t, body)
	})
}

func TestReadOnly(t *testing.T) {
	t.Parallel()
	leader := httptest.NewServer(NewHandler(leaderBackend()))
	t.Cleanup(leader.Close)
	follower := httptest.NewServer(NewHandler(fakeBackend{leader: "gke-pool-1-a", leaderAddr: "127.0.0.1:1"}))
	t.Cleanup(follower.Close)

	for _, srv := range []*httptest.Server{leader, follower} {
		for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			for _, path := range []string{"/cachemachine/", "/cachemachine/jupyter"} {
				resp, body := do(t, method, srv.URL+path, nil)
				require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "%s %s", method, path)
				require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
				require.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
				require.Equal(t, "gke-pool-1-a", resp.Header.Get(LeaderHeader))
				require.JSONEq(t, `{"error": "read-only: the configuration comes from the config file (cachemachine images are set in config.yaml, not through the API)"}`, string(body))
			}
		}
	}
}

func TestHTML(t *testing.T) {
	t.Parallel()
	in := representative()
	in.Desired = append(in.Desired, imgs([]Image{{ImageURL: other + ":evil", Name: `<script>alert("x")</script>`}})...)
	in.Nodes[0].Held = append(in.Nodes[0].Held, Held{ImageURL: other + ":evil", Reason: `"><img src=x onerror=alert(1)>`})
	in.Nodes[1].RuntimeError = "container runtime unavailable: list images: connection refused"
	in.Nodes[2].Warming, in.Nodes[2].WarmingUntil = true, time.Date(2021, 6, 1, 12, 10, 0, 0, time.UTC)
	in.Nodes[2].WarmingMissing = []string{gar + ":w_2021_21"}
	in.Sources[0].Triggers = "Pub/Sub projects/p/subscriptions/gcr-cachemachine"
	in.Sources[0].TriggerError = "Pub/Sub projects/p/subscriptions/gcr-cachemachine: pull: permission denied"
	in.Sources[0].EventAt = time.Date(2021, 6, 1, 12, 0, 5, 0, time.UTC)
	srv := httptest.NewServer(NewHandler(fakeBackend{in: in, leader: in.Leader, self: true}))
	t.Cleanup(srv.Close)

	_, nb := do(t, http.MethodGet, srv.URL+"/cachemachine/jupyter/nodes", nil)
	require.Contains(t, string(nb), `"runtime_error":"container runtime unavailable: list images: connection refused"`, "/nodes says the runtime is down")

	resp, b := do(t, http.MethodGet, srv.URL+"/cachemachine/jupyter", map[string]string{"Accept": browserAccept})
	body := string(b)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Equal(t, "Accept", resp.Header.Get("Vary"))
	require.Equal(t, "gke-pool-1-a", resp.Header.Get(LeaderHeader))

	for _, want := range []string{
		"gke-pool-1-a", "gke-pool-1-b", "gke-pool-1-c", `<span class="badge">down</span>`,
		`<span class="err" title="container runtime unavailable: list images: connection refused">runtime unavailable</span>`,
		"Recommended (Weekly 2021_22)", "Daily 2021_06_01",
		`class="mark cached" title="cached"><span class="check"></span>`,
		`class="mark pulling" title="pulling">pulling`,
		`title="held: disk: would leave 12% free, minimum 15%"><span class="pause"></span>`,
		`title="failed (2 attempts): pull: rpc error: code = DeadlineExceeded; next retry 2021-06-01T12:01:00Z">×`,
		`<meta http-equiv="refresh" content="3">`, // a pull runs
		"2021-06-01T12:00:00Z", "listing: 503 Service Unavailable", // sources
		gar + ":w_2021_22", // common cache
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;",
		`<span class="badge warm" title="started recently and still filling its cache: not counted for the common cache until it holds every desired image or until 2021-06-01T12:10:00Z; still misses: Weekly 2021_21 (` + gar + `:w_2021_21)">warming, 1 missing</span>`, // a warming node
		`<span class="badge warm">warming</span> started recently`, "cached on every alive node", // the legend
		"Pub/Sub projects/p/subscriptions/gcr-cachemachine", "2021-06-01T12:00:05Z", "pull: permission denied", // a source's trigger
		"polling only",
	} {
		require.Contains(t, body, want)
	}
	require.NotContains(t, body, "<script>")
	require.NotContains(t, body, "<img")
	for i, r := range body {
		require.LessOrEqualf(t, r, rune(0xff), "%q at %d: only Latin-1 text, every mark renders in a default font (the rest is CSS)", r, i)
	}
	require.NotContains(t, body, "http://", "no external assets")
	require.NotContains(t, body, "https://", "no external assets")
}

func TestPrefersHTML(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		accept []string
		want   bool
	}{
		{"none", nil, false},
		{"any", []string{"*/*"}, false},
		{"firefox", []string{browserAccept}, true},
		{"chrome", []string{"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"}, true},
		{"json", []string{"application/json"}, false},
		{"json preferred", []string{"text/html;q=0.5, application/json"}, false},
		{"equal", []string{"text/html, application/json"}, false},
		{"html only", []string{"text/html"}, true},
		{"two headers", []string{"application/json;q=0.1", "text/*"}, true},
		{"garbage", []string{"nonsense;;q=x, text/html;q=abc"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, prefersHTML(tt.accept))
		})
	}
}

// recorder wraps a handler and remembers what reached it.
type recorder struct {
	next http.Handler
	mu   sync.Mutex // guards the fields below
	uris []string
	via  []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.uris = append(r.uris, req.URL.RequestURI())
	r.via = append(r.via, req.Header.Get(ProxiedHeader))
	r.mu.Unlock()
	r.next.ServeHTTP(w, req)
}

func (r *recorder) seen() ([]string, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.uris...), append([]string(nil), r.via...)
}

func TestProxyToLeader(t *testing.T) {
	t.Parallel()
	rec := &recorder{next: NewHandler(leaderBackend())}
	leader := httptest.NewServer(rec)
	t.Cleanup(leader.Close)
	follower := httptest.NewServer(NewHandler(fakeBackend{leader: "gke-pool-1-a", leaderAddr: leader.Listener.Addr().String()}))
	t.Cleanup(follower.Close)

	for _, path := range []string{"/cachemachine/", "/cachemachine/jupyter", "/cachemachine/jupyter/available?x=1", "/cachemachine/jupyter/nodes"} {
		wantResp, wantBody := do(t, http.MethodGet, leader.URL+path, nil)
		resp, body := do(t, http.MethodGet, follower.URL+path, nil)
		require.Equal(t, 200, resp.StatusCode, path)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"), path)
		require.Equal(t, []string{"gke-pool-1-a"}, resp.Header.Values(LeaderHeader), path)
		require.Equal(t, string(wantBody), string(body), path)
		require.Equal(t, wantResp.Header.Get("Content-Type"), resp.Header.Get("Content-Type"))
	}

	resp, body := do(t, http.MethodGet, follower.URL+"/cachemachine/jupyter", map[string]string{"Accept": browserAccept})
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"), "Accept is forwarded")
	require.Contains(t, string(body), "gke-pool-1-b")

	resp, body = do(t, http.MethodGet, follower.URL+"/cachemachine/x", nil)
	require.Equal(t, 404, resp.StatusCode)
	require.JSONEq(t, `{"error":"unknown cache \"x\""}`, string(body))

	uris, via := rec.seen()
	require.Contains(t, uris, "/cachemachine/jupyter/available?x=1", "path and query unchanged")
	for i, v := range via {
		if v != "" {
			require.Equal(t, "gke-pool-1-a", v, uris[i])
		}
	}
	require.Contains(t, via, "gke-pool-1-a", "forwarded requests are marked")
}

func TestLeaderUnreachable(t *testing.T) {
	t.Parallel()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)

	tests := []struct {
		name       string
		leader     string
		addr       string
		wantLeader string
		wantError  string
	}{
		{name: "connection refused", leader: "n1", addr: fmt.Sprintf("127.0.0.1:%d", lab.Port(t)), wantLeader: "n1", wantError: "leader n1 unreachable: "},
		{name: "address unknown", leader: "n1", addr: "", wantLeader: "n1", wantError: "leader n1 unreachable: its status API address is not known yet"},
		{name: "no answer in time", leader: "n1", addr: slow.Listener.Addr().String(), wantLeader: "n1", wantError: "leader n1 unreachable: no answer within 200ms"},
		{name: "no leader", leader: "", addr: "", wantLeader: "", wantError: "no leader known: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := NewHandler(fakeBackend{leader: tt.leader, leaderAddr: tt.addr},
				WithProxyTimeout(200*time.Millisecond), WithLogger(slog.New(slog.DiscardHandler)))
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)
			resp, body := do(t, http.MethodGet, srv.URL+"/cachemachine/jupyter/available", nil)
			require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			require.Equal(t, tt.wantLeader, resp.Header.Get(LeaderHeader))
			var got map[string]string
			require.NoError(t, json.Unmarshal(body, &got))
			require.Equal(t, tt.wantLeader, got["leader"])
			require.Contains(t, got, "leader")
			require.True(t, strings.HasPrefix(got["error"], tt.wantError), got["error"])
		})
	}
}

func TestProxyLoopGuard(t *testing.T) {
	t.Parallel()

	t.Run("marked request is not forwarded again", func(t *testing.T) {
		t.Parallel()
		rec := &recorder{next: NewHandler(leaderBackend())}
		leader := httptest.NewServer(rec)
		t.Cleanup(leader.Close)
		follower := httptest.NewServer(NewHandler(fakeBackend{leader: "gke-pool-1-a", leaderAddr: leader.Listener.Addr().String()}))
		t.Cleanup(follower.Close)

		resp, body := do(t, http.MethodGet, follower.URL+"/cachemachine/jupyter", map[string]string{ProxiedHeader: "gke-pool-1-z"})
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		var got map[string]string
		require.NoError(t, json.Unmarshal(body, &got))
		require.Equal(t, "gke-pool-1-a", got["leader"])
		require.Contains(t, got["error"], "not forwarding twice")
		uris, _ := rec.seen()
		require.Empty(t, uris, "the leader was not asked")
	})

	t.Run("two nodes that name each other", func(t *testing.T) {
		t.Parallel()
		// Each server's address is only known once it listens: start both, then point them at
		// each other through a late-bound backend.
		var aAddr, bAddr string
		var mu sync.Mutex
		a := httptest.NewServer(NewHandler(backendFunc(func() (Input, string, string, bool) {
			mu.Lock()
			defer mu.Unlock()
			return Input{}, "b", bAddr, false
		})))
		t.Cleanup(a.Close)
		b := httptest.NewServer(NewHandler(backendFunc(func() (Input, string, string, bool) {
			mu.Lock()
			defer mu.Unlock()
			return Input{}, "a", aAddr, false
		})))
		t.Cleanup(b.Close)
		mu.Lock()
		aAddr, bAddr = a.Listener.Addr().String(), b.Listener.Addr().String()
		mu.Unlock()

		resp, body := do(t, http.MethodGet, a.URL+"/cachemachine/jupyter", nil)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		var got map[string]string
		require.NoError(t, json.Unmarshal(body, &got))
		require.Equal(t, "a", got["leader"], "b's answer, which names the leader b believes in")
		require.Contains(t, got["error"], "forwarded here as to leader b")
		require.Equal(t, []string{"b"}, resp.Header.Values(LeaderHeader), "a names the leader it forwarded to")
	})
}

type backendFunc func() (Input, string, string, bool)

func (f backendFunc) Snapshot() (Input, string, string, bool) { return f() }

// receiver is a notifications receiver that accepts POSTs with the bearer token "t0k" and
// records the bodies it served.
type receiver struct {
	mu     sync.Mutex // guards bodies
	bodies []string
}

func (r *receiver) Authorized(req *http.Request) bool {
	return req.Header.Get("Authorization") == "Bearer t0k"
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST"})
		return
	}
	if !r.Authorized(req) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="cachemachine notifications"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
		return
	}
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.bodies = append(r.bodies, string(b))
	r.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]int{"matched": 1})
}

func (r *receiver) served() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

func postBody(t *testing.T, url, token, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// TestNotificationsEndpoint: POST /cachemachine/{name}/notifications reaches the receiver on
// the leader, is checked and forwarded by a follower, and every other write stays 405.
func TestNotificationsEndpoint(t *testing.T) {
	t.Parallel()
	recv := &receiver{}
	leader := httptest.NewServer(NewHandler(leaderBackend(), WithNotifications(recv)))
	t.Cleanup(leader.Close)
	followerRecv := &receiver{}
	follower := httptest.NewServer(NewHandler(fakeBackend{leader: "gke-pool-1-a", leaderAddr: leader.Listener.Addr().String()}, WithNotifications(followerRecv)))
	t.Cleanup(follower.Close)

	resp, body := postBody(t, leader.URL+"/cachemachine/jupyter/notifications", "t0k", `{"events":[1]}`)
	require.Equal(t, 200, resp.StatusCode, body)
	resp, body = postBody(t, follower.URL+"/cachemachine/jupyter/notifications", "t0k", `{"events":[2]}`)
	require.Equal(t, 200, resp.StatusCode, body)
	require.Equal(t, "gke-pool-1-a", resp.Header.Get(LeaderHeader))
	require.Equal(t, []string{`{"events":[1]}`, `{"events":[2]}`}, recv.served(), "the follower forwards to the leader")
	require.Empty(t, followerRecv.served(), "only the leader acts")

	for _, srv := range []*httptest.Server{leader, follower} {
		resp, body = postBody(t, srv.URL+"/cachemachine/jupyter/notifications", "wrong", `{}`)
		require.Equal(t, 401, resp.StatusCode)
		require.Equal(t, `Bearer realm="cachemachine notifications"`, resp.Header.Get("WWW-Authenticate"))
		require.JSONEq(t, `{"error":"missing or wrong bearer token"}`, body)
	}
	require.Len(t, recv.served(), 2, "unauthenticated requests stop at the node they reach")

	resp, _ = postBody(t, leader.URL+"/cachemachine/other/notifications", "t0k", `{}`)
	require.Equal(t, 404, resp.StatusCode)
	resp, _ = postBody(t, follower.URL+"/cachemachine/jupyter/notifications", "t0k", strings.Repeat("x", maxNotificationBytes+1))
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "a follower bounds the body it forwards")
	for _, path := range []string{"/cachemachine/", "/cachemachine/jupyter", "/cachemachine/jupyter/available", "/cachemachine/jupyter/notifications/x"} {
		resp, _ = postBody(t, leader.URL+path, "t0k", `{}`)
		require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, path)
	}
	for _, method := range []string{http.MethodPut, http.MethodDelete, http.MethodGet} {
		for _, srv := range []*httptest.Server{leader, follower} {
			resp, _ := do(t, method, srv.URL+"/cachemachine/jupyter/notifications", nil)
			require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, method)
		}
	}
	require.Len(t, recv.served(), 2)

	plain := httptest.NewServer(NewHandler(leaderBackend()))
	t.Cleanup(plain.Close)
	resp, _ = postBody(t, plain.URL+"/cachemachine/jupyter/notifications", "t0k", `{}`)
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "without a receiver the endpoint does not exist")
}

// TestNotificationsCounted: with the real receiver, the leader's receiver checks the token and
// the method itself and counts what it refuses, whether the request came straight or through
// a follower (which refuses a wrong token before forwarding).
func TestNotificationsCounted(t *testing.T) {
	t.Parallel()
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("t0k\n"), 0o600))
	reg := prometheus.NewRegistry()
	n, err := registry.NewNotifications(tokenFile, nil, reg)
	require.NoError(t, err)
	leader := httptest.NewServer(NewHandler(leaderBackend(), WithNotifications(n)))
	t.Cleanup(leader.Close)
	followerReg := prometheus.NewRegistry()
	fn, err := registry.NewNotifications(tokenFile, nil, followerReg)
	require.NoError(t, err)
	follower := httptest.NewServer(NewHandler(fakeBackend{leader: "gke-pool-1-a", leaderAddr: leader.Listener.Addr().String()}, WithNotifications(fn)))
	t.Cleanup(follower.Close)

	require.Equal(t, registry.MaxNotificationBytes, maxNotificationBytes, "a follower forwards what the leader accepts")

	counted := func(r *prometheus.Registry, result string) float64 {
		t.Helper()
		mfs, err := r.Gather()
		require.NoError(t, err)
		for _, mf := range mfs {
			if mf.GetName() != "cachemachine_registry_notifications_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
		return 0
	}
	resp, body := postBody(t, leader.URL+"/cachemachine/jupyter/notifications", "wrong", `{"events":[]}`)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
	require.Equal(t, `Bearer realm="cachemachine notifications"`, resp.Header.Get("WWW-Authenticate"))
	require.InDelta(t, 1, counted(reg, "unauthorized"), 0)
	resp, body = postBody(t, follower.URL+"/cachemachine/jupyter/notifications", "wrong", `{"events":[]}`)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
	require.InDelta(t, 1, counted(reg, "unauthorized"), 0, "the follower refuses it before forwarding")
	resp, _ = do(t, http.MethodPut, leader.URL+"/cachemachine/jupyter/notifications", nil)
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	require.Equal(t, http.MethodPost, resp.Header.Get("Allow"))
	require.InDelta(t, 1, counted(reg, "method_not_allowed"), 0)
	resp, body = postBody(t, follower.URL+"/cachemachine/jupyter/notifications", "t0k", `{"events":[]}`)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body) // the leader's receiver is not watching
	require.InDelta(t, 1, counted(reg, "not_leader"), 0, "forwarded to the leader")
	require.Zero(t, counted(followerReg, "unauthorized")+counted(followerReg, "not_leader"), "only the leader's receiver counts")
}
