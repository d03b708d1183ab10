package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeDebugSocket serves canned debug API answers on a unix socket and records the requests.
type fakeDebugSocket struct {
	path string
	mu   sync.Mutex // guards reqs
	reqs []string   // "METHOD PATH BODY"
}

func newFakeDebugSocket(t *testing.T) *fakeDebugSocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "cm")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeDebugSocket{path: filepath.Join(dir, "agent.sock")}
	ln, err := net.Listen("unix", f.path)
	require.NoError(t, err)
	answers := map[string]string{
		"GET /v1/pulls": `{"pulling":[],"queued":[],"held":[],"failed":[],"cached":["ghcr.io/lsst/lab:w_2024_01"]}`,
		"GET /v1/node":  `{"node":"n1","runtime":"containerd 2.0","ready":true,"images":[]}`,
		"POST /v1/pull": `{"image_url":"ghcr.io/lsst/lab:w_2024_01","image_hash":"sha256:abc"}`,
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		key := r.Method + " " + r.URL.Path
		f.mu.Lock()
		f.reqs = append(f.reqs, strings.TrimSpace(key+" "+string(body)))
		f.mu.Unlock()
		answer, ok := answers[key]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answer)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Shutdown(context.Background())
		<-done
	})
	return f
}

func (f *fakeDebugSocket) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

func TestDebugTakesFlagsAnywhere(t *testing.T) {
	t.Parallel()
	const img = "ghcr.io/lsst/lab:w_2024_01"
	const pullReq = `POST /v1/pull {"image":"` + img + `"}`
	tests := []struct {
		name     string
		args     []string // SOCK stands for the fake socket's path
		wantReq  string
		wantJSON bool
		wantOut  string // in table output
	}{
		{name: "flags before", args: []string{"debug", "--socket", "SOCK", "-o", "json", "pulls"}, wantReq: "GET /v1/pulls", wantJSON: true},
		{name: "flags after", args: []string{"debug", "pulls", "--socket", "SOCK", "-o", "json"}, wantReq: "GET /v1/pulls", wantJSON: true},
		{name: "flags around", args: []string{"debug", "-o", "json", "pulls", "--socket=SOCK"}, wantReq: "GET /v1/pulls", wantJSON: true},
		{name: "table by default", args: []string{"debug", "node", "--socket", "SOCK"}, wantReq: "GET /v1/node", wantOut: "containerd 2.0"},
		{name: "pull, flags after the image", args: []string{"debug", "pull", img, "--socket", "SOCK", "-o", "json"}, wantReq: pullReq, wantJSON: true},
		{name: "pull, flags between", args: []string{"debug", "pull", "--socket", "SOCK", "-o", "json", img}, wantReq: pullReq, wantJSON: true},
		{name: "pull, flags before", args: []string{"debug", "--socket", "SOCK", "pull", img}, wantReq: pullReq, wantOut: "sha256:abc"},
		{name: "after --, an argument is never a flag", args: []string{"debug", "--socket", "SOCK", "pull", "--", img}, wantReq: pullReq, wantOut: "sha256:abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeDebugSocket(t)
			args := make([]string, len(tt.args))
			for i, a := range tt.args {
				args[i] = strings.ReplaceAll(a, "SOCK", f.path)
			}
			var stdout, stderr bytes.Buffer
			code := realMain(args, &stdout, &stderr)
			require.Equal(t, exitOK, code, stderr.String())
			require.Equal(t, []string{tt.wantReq}, f.requests())
			if tt.wantJSON {
				require.True(t, json.Valid(stdout.Bytes()), stdout.String())
			} else {
				require.False(t, json.Valid(stdout.Bytes()), "a table, not JSON: %s", stdout.String())
				require.Contains(t, stdout.String(), tt.wantOut)
			}
		})
	}
}

func TestDebugUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no command", args: []string{"debug", "--socket", "SOCK"}, want: "no command"},
		{name: "bad output", args: []string{"debug", "node", "-o", "yaml", "--socket", "SOCK"}, want: `-o "yaml"`},
		{name: "flag without value", args: []string{"debug", "node", "--socket"}, want: "needs an argument"},
		{name: "unknown flag after the command", args: []string{"debug", "node", "--sock", "SOCK"}, want: "not defined: -sock"},
		{name: "extra argument", args: []string{"debug", "node", "--socket", "SOCK", "extra"}, want: "takes no arguments"},
		{name: "pull without image", args: []string{"debug", "pull", "--socket", "SOCK", "-o", "json"}, want: "one image reference"},
		{name: "pull with two images", args: []string{"debug", "pull", "a:1", "--socket", "SOCK", "b:2"}, want: "one image reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeDebugSocket(t)
			args := make([]string, len(tt.args))
			for i, a := range tt.args {
				args[i] = strings.ReplaceAll(a, "SOCK", f.path)
			}
			var stdout, stderr bytes.Buffer
			require.Equal(t, exitUsage, realMain(args, &stdout, &stderr), stderr.String())
			require.Contains(t, stderr.String(), tt.want)
			require.Empty(t, f.requests(), "nothing is sent")
		})
	}
}
