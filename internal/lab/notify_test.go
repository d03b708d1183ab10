package lab

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRegistryNotifies: with Notify set, the registry POSTs an envelope for a manifest push,
// with the bearer token, and nothing for the blobs.
func TestRegistryNotifies(t *testing.T) {
	t.Parallel()
	type event struct {
		Action string `json:"action"`
		Target struct {
			MediaType  string `json:"mediaType"`
			Repository string `json:"repository"`
			Tag        string `json:"tag"`
			Digest     string `json:"digest"`
		} `json:"target"`
	}
	var mu sync.Mutex // guards events and auth
	var events []event
	auth := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var env struct {
			Events []event `json:"events"`
		}
		_ = json.Unmarshal(b, &env)
		mu.Lock()
		events = append(events, env.Events...)
		auth[r.Header.Get("Authorization")] = true
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	reg := NewRegistry(t, RegistryOptions{Notify: &RegistryNotify{URL: srv.URL + "/cachemachine/jupyter/notifications", Token: "tok3n"}})
	digest, err := PushRandomImage(t.Context(), reg.Addr, "lsst/lab", []string{"w_2024_10"}, mb, 2, nil)
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range events {
			if e.Action == "push" && e.Target.Tag == "w_2024_10" && e.Target.Repository == "lsst/lab" && e.Target.Digest == digest {
				return true
			}
		}
		return false
	}, 20*time.Second, 20*time.Millisecond, "a manifest push event")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, map[string]bool{"Bearer tok3n": true}, auth)
	for _, e := range events {
		require.NotEqual(t, "application/octet-stream", e.Target.MediaType, "blob events are not sent")
	}
}
