package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/cachemachine/cachemachine/image"
)

// DebugOptions connects the debug socket to the parts of the system beyond the node.
type DebugOptions struct {
	// Cluster returns what GET /v1/cluster shows; nil means standalone.
	Cluster func() any
	// Refresh re-lists the sources (leader or standalone) before a reconcile; may be nil.
	Refresh func(ctx context.Context) error
	Logger  *slog.Logger
}

// DebugServer serves the node debug API (HTTP/JSON) on a unix socket reachable only by root:
// the socket is mode 0600 in a directory of mode 0700.
type DebugServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
	log  *slog.Logger
}

// NewDebugServer creates the socket at path (replacing a stale one) and the server; Run
// serves it.
func NewDebugServer(path string, a *Agent, opts DebugOptions) (*DebugServer, error) {
	if len(path) >= 108 {
		return nil, fmt.Errorf("debug socket %s: path longer than 107 bytes", path)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("debug socket dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("debug socket dir %s: %w", dir, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("debug socket %s: remove stale socket: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("debug socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("debug socket %s: %w", path, err)
	}
	s := &DebugServer{path: path, ln: ln, log: opts.Logger}
	s.srv = &http.Server{Handler: debugMux(a, opts), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Run serves until ctx ends, then shuts down within 5 s.
func (s *DebugServer) Run(ctx context.Context) error {
	return Serve(ctx, s.srv, s.ln)
}

// Close removes the socket.
func (s *DebugServer) Close() error {
	s.ln.Close()
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove debug socket: %w", err)
	}
	return nil
}

// Serve serves srv on ln until ctx ends, then shuts it down gracefully within 5 s.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener) error {
	done := make(chan struct{})
	shutdownErr := make(chan error, 1)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			shutdownErr <- nil
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdownErr <- srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	close(done)
	serr := <-shutdownErr
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return errors.Join(err, serr)
}

// NodeView is GET /v1/node.
type NodeView struct {
	Node      string        `json:"node"`
	Runtime   string        `json:"runtime"`
	Ready     bool          `json:"ready"`
	Version   uint64        `json:"version"`
	LastError string        `json:"last_error,omitempty"`
	Disk      Disk          `json:"disk"`
	Images    []CachedImage `json:"images"`
}

// PullsView is GET /v1/pulls.
type PullsView struct {
	Pulling []PullingView `json:"pulling"`
	Queued  []string      `json:"queued"`
	Held    []Held        `json:"held"`
	Failed  []Failed      `json:"failed"`
	Cached  []string      `json:"cached"`
}

// PullingView is a pull in flight with its elapsed time.
type PullingView struct {
	Pulling
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

func debugMux(a *Agent, opts DebugOptions) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/node", func(w http.ResponseWriter, r *http.Request) {
		st := a.State()
		writeJSON(w, http.StatusOK, NodeView{
			Node: st.Node, Runtime: st.Runtime, Ready: st.Ready, Version: st.Version,
			LastError: st.LastError, Disk: st.Disk, Images: nonNil(st.Images),
		})
	})
	mux.HandleFunc("GET /v1/pulls", func(w http.ResponseWriter, r *http.Request) {
		st := a.State()
		v := PullsView{Queued: nonNil(st.Queued), Held: nonNil(st.Held), Failed: nonNil(st.Failed), Cached: []string{}}
		v.Pulling = []PullingView{}
		for _, p := range st.Pulling {
			v.Pulling = append(v.Pulling, PullingView{Pulling: p, ElapsedSeconds: time.Since(p.Started).Seconds()})
		}
		for _, d := range a.Desired().Images {
			if _, ok := st.Cached[d.Ref.String()]; ok {
				v.Cached = append(v.Cached, d.Ref.String())
			}
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("GET /v1/desired", func(w http.ResponseWriter, r *http.Request) {
		d := a.Desired()
		d.Images = nonNil(d.Images)
		writeJSON(w, http.StatusOK, d)
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		if opts.Cluster == nil {
			writeJSON(w, http.StatusOK, map[string]any{"enabled": false, "node": a.cfg.Node})
			return
		}
		writeJSON(w, http.StatusOK, opts.Cluster())
	})
	mux.HandleFunc("POST /v1/reconcile", func(w http.ResponseWriter, r *http.Request) {
		if opts.Refresh != nil {
			if err := opts.Refresh(r.Context()); err != nil {
				writeJSON(w, http.StatusBadGateway, map[string]string{"error": "refresh sources: " + err.Error()})
				return
			}
		}
		a.Trigger()
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "reconcile triggered"})
	})
	mux.HandleFunc("POST /v1/pull", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Image string `json:"image"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || req.Image == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": `body must be {"image": "<reference>"}`})
			return
		}
		if _, err := image.ParseRef(req.Image); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		res, err := a.PullNow(r.Context(), req.Image)
		if err != nil {
			res.Error = err.Error()
			writeJSON(w, http.StatusBadGateway, res)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}
