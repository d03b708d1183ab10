package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/netutil"
)

// HTTPLimits bound what a client can make an HTTP server of the agent hold: the status API
// (port 8080, reachable from every namespace where no NetworkPolicy is enforced) and the
// debug socket.
type HTTPLimits struct {
	// ReadHeader, Read, Write and Idle are the server's timeouts: a client that sends its
	// headers slowly, a body slowly, reads its answer slowly, or keeps a connection open
	// without a request is cut off.
	ReadHeader, Read, Write, Idle time.Duration
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
	// MaxConns bounds open connections; more wait in the listen backlog.
	MaxConns int
}

// DefaultHTTPLimits: about 2 KiB of memory per idle connection and 256 connections at most
// keep a flood of idle clients far below the pod's memory limit, and a keep-alive pool such
// as the spawner's is closed after 15 s idle.
var DefaultHTTPLimits = HTTPLimits{
	ReadHeader:     5 * time.Second,
	Read:           15 * time.Second,
	Write:          60 * time.Second, // a pprof profile takes up to 30 s
	Idle:           15 * time.Second,
	MaxHeaderBytes: 16 << 10,
	MaxConns:       256,
}

// NewHTTPServer returns a server for h with limits' timeouts and header bound.
func NewHTTPServer(h http.Handler, limits HTTPLimits) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: limits.ReadHeader,
		ReadTimeout:       limits.Read,
		WriteTimeout:      limits.Write,
		IdleTimeout:       limits.Idle,
		MaxHeaderBytes:    limits.MaxHeaderBytes,
	}
}

// Serve serves srv on ln, at most limits.MaxConns connections at once, until ctx ends, then
// shuts it down gracefully within 5 s.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, limits HTTPLimits) error {
	if limits.MaxConns > 0 {
		ln = netutil.LimitListener(ln, limits.MaxConns)
	}
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
