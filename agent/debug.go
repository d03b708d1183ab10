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
	"syscall"
	"time"

	"github.com/cachemachine/cachemachine/image"
)

// debugLimits are the status API's limits without a write timeout: `debug pull` waits for a
// pull (up to pull_timeout) and pprof profiles run as long as asked, and only root reaches
// the socket.
var debugLimits = func() HTTPLimits {
	l := DefaultHTTPLimits
	l.Write = 0
	return l
}()

// DebugOptions connects the debug socket to the parts of the system beyond the node.
type DebugOptions struct {
	// Cluster returns what GET /v1/cluster shows; nil means standalone.
	Cluster func() any
	// Refresh re-lists the sources (leader or standalone) before a reconcile; may be nil.
	Refresh func(ctx context.Context) error
	Logger  *slog.Logger
}

// DebugServer serves the node debug API (HTTP/JSON) on a unix socket reachable only by root:
// the socket file is mode 0600 from the moment it exists.
type DebugServer struct {
	path string
	ln   net.Listener
	// self is the socket file this server created; Close removes the path only while it is
	// still this file, so it never removes another agent's socket.
	self os.FileInfo
	srv  *http.Server
	log  *slog.Logger
}

// ErrDebugSocketInUse means a live agent already answers on the debug socket path.
var ErrDebugSocketInUse = errors.New("in use by a running agent")

// NewDebugServer creates the socket at path and the server; Run serves it.
//
// It changes nothing around the socket. A parent directory that does not exist is created
// mode 0700; an existing one is left exactly as it is (mode and owner): it may be a shared
// directory such as /tmp, and the socket does not need a private directory to be root-only,
// since it is created mode 0600 (see listenPrivate) and connecting to a unix socket needs
// write permission on it. At path, only a stale socket (one nobody answers on) is replaced:
// a live socket is ErrDebugSocketInUse and anything that is not a socket is an error; neither
// is ever removed.
func NewDebugServer(path string, a *Agent, opts DebugOptions) (*DebugServer, error) {
	if len(path) >= 108 {
		return nil, fmt.Errorf("debug socket %s: path longer than 107 bytes", path)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := makePrivateDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("debug socket dir: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, fmt.Errorf("debug socket %s: %w", path, err)
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("debug socket %s: %w", path, err)
	}
	self, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("debug socket %s: %w", path, err)
	}
	// Where fchmod before bind has no effect (not Linux), this at least narrows the window.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		os.Remove(path) // just created by this server
		return nil, fmt.Errorf("debug socket %s: %w", path, err)
	}
	s := &DebugServer{path: path, ln: ln, self: self, log: opts.Logger}
	s.srv = NewHTTPServer(debugMux(a, opts), debugLimits)
	return s, nil
}

// makePrivateDir creates dir mode 0700 when it does not exist. An existing dir is not touched.
func makePrivateDir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, os.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(dir), 0o700); err == nil {
			err = os.Mkdir(dir, 0o700)
		}
	}
	switch {
	case errors.Is(err, os.ErrExist):
		return nil
	case err != nil:
		return err
	}
	// Created here, so ours to set: the umask may have taken bits off 0700.
	return os.Chmod(dir, 0o700)
}

// removeStaleSocket clears path for listening: nothing there, or a socket nobody answers on
// (left by an agent that crashed), which it removes. A socket somebody answers on is
// ErrDebugSocketInUse; anything else at path is an error and stays.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("exists and is not a socket (mode %s); refusing to replace it: remove it or set another agent.debug_socket", fi.Mode())
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	switch {
	case err == nil:
		conn.Close()
		return fmt.Errorf("%w: stop the other agent or give this one another agent.debug_socket", ErrDebugSocketInUse)
	case errors.Is(err, os.ErrNotExist):
		return nil // removed meanwhile
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("check whether the existing socket is in use: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// listenPrivate listens on a unix socket at path whose file is mode 0600 from its creation, so
// that no other user can connect between bind and a chmod (a connection made then would
// outlive the chmod). On Linux, bind gives the socket file the mode of the socket's inode,
// which fchmod sets; the umask can only take bits away. Closing the listener does not remove
// the file: Close decides that.
func listenPrivate(path string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var ferr error
		if err := c.Control(func(fd uintptr) { ferr = syscall.Fchmod(int(fd), 0o600) }); err != nil {
			return err
		}
		return ferr
	}}
	ln, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	return ln, nil
}

// Run serves until ctx ends, then shuts down within 5 s.
func (s *DebugServer) Run(ctx context.Context) error {
	return Serve(ctx, s.srv, s.ln, debugLimits)
}

// Close stops listening and removes the socket file, unless the path is no longer the file this
// server created (removed by hand and taken by another agent): that one is left alone.
func (s *DebugServer) Close() error {
	s.ln.Close()
	fi, err := os.Lstat(s.path)
	if err != nil || !os.SameFile(fi, s.self) {
		return nil
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove debug socket: %w", err)
	}
	return nil
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
	// Pinning says whether and how the node pins its desired images; Pinned are the desired
	// references whose image the runtime reports pinned.
	Pinning Pinning  `json:"pinning"`
	Pinned  []string `json:"pinned"`
}

// PullsView is GET /v1/pulls.
type PullsView struct {
	Pulling []PullingView `json:"pulling"`
	Queued  []string      `json:"queued"`
	Held    []Held        `json:"held"`
	Failed  []Failed      `json:"failed"`
	Cached  []string      `json:"cached"`
}

// PullingView is a pull in flight with its elapsed time; its Progress is as measured (finer
// than the coarse steps gossip carries) and ETASeconds estimates the rest of the download.
type PullingView struct {
	Pulling
	ElapsedSeconds float64  `json:"elapsed_seconds"`
	ETASeconds     *float64 `json:"eta_seconds,omitempty"`
}

func debugMux(a *Agent, opts DebugOptions) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/node", func(w http.ResponseWriter, r *http.Request) {
		st := a.State()
		pinning := st.Pinning
		pinning.OverBudget = nonNil(pinning.OverBudget)
		writeJSON(w, http.StatusOK, NodeView{
			Node: st.Node, Runtime: st.Runtime, Ready: st.Ready, Version: st.Version,
			LastError: st.LastError, Disk: st.Disk, Images: nonNil(st.Images),
			Pinning: pinning, Pinned: nonNil(st.Pinned),
		})
	})
	mux.HandleFunc("GET /v1/pulls", func(w http.ResponseWriter, r *http.Request) {
		st := a.State()
		v := PullsView{Queued: nonNil(st.Queued), Held: nonNil(st.Held), Failed: nonNil(st.Failed), Cached: []string{}}
		v.Pulling = []PullingView{}
		now := time.Now()
		for _, p := range st.Pulling {
			if live, ok := a.LiveProgress(p.Ref); ok {
				p.Progress = live
			}
			pv := PullingView{Pulling: p, ElapsedSeconds: now.Sub(p.Started).Seconds()}
			if eta, ok := p.Progress.ETA(now); ok {
				secs := eta.Seconds()
				pv.ETASeconds = &secs
			}
			v.Pulling = append(v.Pulling, pv)
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
