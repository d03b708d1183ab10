package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/registry"
)

// envelope is what docker-registry 2.8 sends for `docker push 127.0.0.1:5000/lsst/lab:w_2024_10`
// (trimmed): a layer blob push, then the manifest push with its tag.
const envelope = `{"events":[
 {"id":"1","timestamp":"2024-03-05T10:00:00Z","action":"push",
  "target":{"mediaType":"application/octet-stream","size":100,"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
            "repository":"lsst/lab","url":"http://127.0.0.1:5000/v2/lsst/lab/blobs/sha256:1111111111111111111111111111111111111111111111111111111111111111"},
  "request":{"id":"r1","addr":"127.0.0.1:40000","host":"127.0.0.1:5000","method":"PUT","useragent":"go-containerregistry"},
  "actor":{},"source":{"addr":"lab:5000","instanceID":"i"}},
 {"id":"2","timestamp":"2024-03-05T10:00:01Z","action":"push",
  "target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":500,"digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222",
            "length":500,"repository":"lsst/lab","url":"http://127.0.0.1:5000/v2/lsst/lab/manifests/sha256:2222222222222222222222222222222222222222222222222222222222222222","tag":"w_2024_10"},
  "request":{"id":"r2","addr":"127.0.0.1:40000","host":"127.0.0.1:5000","method":"PUT","useragent":"go-containerregistry"},
  "actor":{},"source":{"addr":"lab:5000","instanceID":"i"}},
 {"id":"3","action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"lsst/lab","tag":"w_2024_10"},"request":{"host":"127.0.0.1:5000"}},
 {"id":"4","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"other/img","tag":"1","url":"http://127.0.0.1:5000/v2/other/img/manifests/1"},"request":{"host":"127.0.0.1:5000"}}
]}`

func TestEventRepositories(t *testing.T) {
	t.Parallel()
	var env registry.Envelope
	require.NoError(t, json.Unmarshal([]byte(envelope), &env))
	require.Empty(t, env.Events[0].Repositories(), "a blob push is no reason to list")
	require.Equal(t, []string{"127.0.0.1:5000/lsst/lab"}, env.Events[1].Repositories())
	require.Empty(t, env.Events[2].Repositories(), "pulls are no reason to list")

	var e registry.Event
	e.Action, e.Target.Repository, e.Target.Tag = "push", "lsst/lab", "w_1"
	e.Target.URL, e.Request.Host = "https://registry.example.org/v2/lsst/lab/manifests/w_1", "registry-internal:5000"
	require.Equal(t, []string{"registry.example.org/lsst/lab", "registry-internal:5000/lsst/lab"}, e.Repositories(), "both the registry's own name and the host pushed to")
	e.Action = "delete"
	require.Len(t, e.Repositories(), 2, "a deleted tag is a reason to list")

	e.Target.URL, e.Request.Host = "https://Registry.Example.org/v2/lsst/lab/manifests/w_1", "bad host"
	want, err := image.ParseRef("Registry.Example.org/lsst/lab")
	require.NoError(t, err)
	require.Equal(t, []string{want.Repository()}, e.Repositories(), "named as a source's image of that host is; a host that does not parse is left out")
	e.Target.URL, e.Request.Host = "", "registry"
	want, err = image.ParseRef("registry/lsst/lab")
	require.NoError(t, err)
	require.Equal(t, []string{want.Repository()}, e.Repositories())
}

// leaderStub is a leader that lists one repository.
type leaderStub struct {
	lists string
	mu    sync.Mutex // guards seen
	seen  []string
}

func (l *leaderStub) changed(repo string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, repo)
	return repo == l.lists
}

func (l *leaderStub) got() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.seen...)
}

func tokenFile(t *testing.T, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte(token+"\n"), 0o600))
	return path
}

func post(t *testing.T, h http.Handler, token, contentType, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/cachemachine/jupyter/notifications", strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestNotificationsEndpoint(t *testing.T) {
	t.Parallel()
	const token = "s3cr3t-n0tify"
	var logs bytes.Buffer
	n, err := registry.NewNotifications(tokenFile(t, token), slog.New(slog.NewJSONHandler(&logs, nil)), nil)
	require.NoError(t, err)
	require.Equal(t, "registry notifications", n.Name())

	code, _ := post(t, n, token, registry.EventsMediaType, envelope)
	require.Equal(t, http.StatusServiceUnavailable, code, "a node that does not lead does not act")

	lead := &leaderStub{lists: "127.0.0.1:5000/lsst/lab"}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	var reported []error
	go func() { done <- n.Watch(ctx, lead.changed, func(err error) { reported = append(reported, err) }) }()
	require.Eventually(t, func() bool {
		code, _ := post(t, n, token, registry.EventsMediaType, `{"events":[]}`)
		return code == http.StatusOK
	}, 5*time.Second, 5*time.Millisecond, "Watch makes the node act")

	tests := []struct {
		name, token, contentType, body string
		wantCode                       int
		wantBody                       string
	}{
		{"push", token, registry.EventsMediaType, envelope, 200, `{"events":4,"matched":1}`},
		{"plain JSON content type", token, "application/json; charset=utf-8", envelope, 200, `{"events":4,"matched":1}`},
		{"no token", "", registry.EventsMediaType, envelope, 401, `{"error":"missing or wrong bearer token"}`},
		{"wrong token", "s3cr3t-n0tifz", registry.EventsMediaType, envelope, 401, `{"error":"missing or wrong bearer token"}`},
		{"token prefix", "s3cr3t", registry.EventsMediaType, envelope, 401, `{"error":"missing or wrong bearer token"}`},
		{"other content type", token, "text/plain", envelope, 415, ""},
		{"malformed", token, registry.EventsMediaType, `{"events":`, 400, ""},
		{"not an envelope", token, registry.EventsMediaType, `[1,2]`, 400, ""},
		{"too large", token, registry.EventsMediaType, `{"events":[],"x":"` + strings.Repeat("a", registry.MaxNotificationBytes) + `"}`, 413, ""},
	}
	for _, tt := range tests {
		code, body := post(t, n, tt.token, tt.contentType, tt.body)
		require.Equal(t, tt.wantCode, code, "%s: %s", tt.name, body)
		if tt.wantBody != "" {
			require.JSONEq(t, tt.wantBody, body, tt.name)
		}
	}
	require.Contains(t, lead.got(), "127.0.0.1:5000/lsst/lab")
	require.Contains(t, lead.got(), "127.0.0.1:5000/other/img", "asked, and no source lists it")
	require.NotContains(t, strings.Join(lead.got(), " "), "pull")
	require.Equal(t, 1, strings.Count(logs.String(), "malformed registry notification"), "logged at most once a minute:\n%s", logs.String())
	require.NotContains(t, logs.String(), token, "the token never appears in logs")

	req := httptest.NewRequest(http.MethodGet, "/cachemachine/jupyter/notifications", nil)
	rec := httptest.NewRecorder()
	n.ServeHTTP(rec, req)
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)

	cancel()
	require.NoError(t, <-done)
	require.Equal(t, []error{nil}, reported)
	code, _ = post(t, n, token, registry.EventsMediaType, envelope)
	require.Equal(t, http.StatusServiceUnavailable, code, "no longer leading")
}

// TestNotificationsTokenRotation: a rotated token file takes effect within a second; a
// missing or empty file keeps the last good token.
func TestNotificationsTokenRotation(t *testing.T) {
	t.Parallel()
	path := tokenFile(t, "first")
	n, err := registry.NewNotifications(path, nil, nil)
	require.NoError(t, err)
	auth := func(tok string) bool {
		req := httptest.NewRequest(http.MethodPost, "/", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		return n.Authorized(req)
	}
	require.True(t, auth("first"))
	require.False(t, auth("second"))
	require.NoError(t, os.WriteFile(path, []byte("second"), 0o600))
	require.Eventually(t, func() bool { return auth("second") }, 3*time.Second, 50*time.Millisecond)
	require.False(t, auth("first"))

	require.NoError(t, os.WriteFile(path, []byte("  \n"), 0o600))
	time.Sleep(1100 * time.Millisecond)
	require.True(t, auth("second"), "an empty token file keeps the last good token")
	require.NoError(t, os.Remove(path))
	time.Sleep(1100 * time.Millisecond)
	require.True(t, auth("second"), "a missing token file keeps the last good token")

	_, err = registry.NewNotifications(path, nil, nil)
	require.ErrorContains(t, err, "read notifications token")
	empty := tokenFile(t, "")
	_, err = registry.NewNotifications(empty, nil, nil)
	require.ErrorContains(t, err, "is empty")
}
