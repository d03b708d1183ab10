package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
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
	// MaxConns bounds open connections. A connection that arrives at the limit closes the
	// one that has waited longest without a request in progress (idle between requests, or
	// not done sending its request headers), once it waited EvictAfter, so that idle or slow
	// clients cannot keep the kubelet's probes out; until then, and while every connection
	// is serving a request, new ones wait in the listen backlog.
	MaxConns int
	// EvictAfter spares connections that only just went idle or opened: a busy keep-alive
	// client is about to reuse its connection, and a probe sends its request at once.
	EvictAfter time.Duration
}

// DefaultHTTPLimits: about 2 KiB of memory per idle connection and 256 connections at most
// keep a flood of idle clients far below the pod's memory limit, and a keep-alive pool such
// as the spawner's is closed after 15 s idle. At the limit, a connection quiet for 250 ms
// makes room: a flood of 1,000 idle connections is worked through in about a second, so a
// probe (3 s timeout) still gets in, while a client between two requests keeps its own.
var DefaultHTTPLimits = HTTPLimits{
	ReadHeader:     5 * time.Second,
	Read:           15 * time.Second,
	Write:          60 * time.Second, // a pprof profile takes up to 30 s
	Idle:           15 * time.Second,
	MaxHeaderBytes: 16 << 10,
	MaxConns:       256,
	EvictAfter:     250 * time.Millisecond,
}

// NewHTTPServer returns a server for h with limits' timeouts and header bound; Serve adds
// the connection bound.
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
		el := newEvictingListener(ln, limits.MaxConns, limits.EvictAfter)
		hook := srv.ConnState
		srv.ConnState = func(c net.Conn, s http.ConnState) {
			el.track(c, s)
			if hook != nil {
				hook(c, s)
			}
		}
		ln = el
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

// evictingListener admits at most max connections at once. A connection that arrives at the
// limit closes the open one that has waited longest without a request in progress, once it
// waited evictAfter; while none can be closed, Accept waits. The server's ConnState hook must
// call track. Its methods are safe for concurrent use.
type evictingListener struct {
	net.Listener
	max        int
	evictAfter time.Duration
	freed      chan struct{} // capacity 1: a connection closed or went idle
	done       chan struct{} // closed by Close
	closeOnce  sync.Once

	mu    sync.Mutex // guards conns
	conns map[net.Conn]*connUse
}

// connUse is what the listener knows of an open connection.
type connUse struct {
	busy  bool      // a request is in progress
	since time.Time // accepted, or last went idle
}

func newEvictingListener(ln net.Listener, maxConns int, evictAfter time.Duration) *evictingListener {
	return &evictingListener{Listener: ln, max: maxConns, evictAfter: evictAfter,
		freed: make(chan struct{}, 1), done: make(chan struct{}), conns: map[net.Conn]*connUse{}}
}

// Accept returns the next connection once there is room for it.
func (l *evictingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		ok, retry := l.admit(c)
		if ok {
			return c, nil
		}
		if !l.wait(retry) {
			_ = c.Close()
			return nil, net.ErrClosed
		}
	}
}

// wait waits until a connection closes or goes idle, retry passes (when > 0) or the listener
// is closed (false).
func (l *evictingListener) wait(retry time.Duration) bool {
	var later <-chan time.Time
	if retry > 0 {
		t := time.NewTimer(retry)
		defer t.Stop()
		later = t.C
	}
	select {
	case <-l.freed:
	case <-later:
	case <-l.done:
		return false
	}
	return true
}

// admit registers c when there is room or room can be made, closing the connection that has
// waited longest without a request in progress. Otherwise it returns when to try again (0:
// when a connection closes or goes idle).
func (l *evictingListener) admit(c net.Conn) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) >= l.max {
		var victim net.Conn
		var oldest time.Time
		for vc, u := range l.conns {
			if !u.busy && (victim == nil || u.since.Before(oldest)) {
				victim, oldest = vc, u.since
			}
		}
		if victim == nil {
			return false, 0
		}
		if wait := time.Until(oldest.Add(l.evictAfter)); wait > 0 {
			return false, wait
		}
		delete(l.conns, victim)
		_ = victim.Close() // its server goroutine ends on the read error
	}
	l.conns[c] = &connUse{since: time.Now()}
	return true, 0
}

// track follows the server's connection states (http.Server.ConnState).
func (l *evictingListener) track(c net.Conn, s http.ConnState) {
	l.mu.Lock()
	switch u := l.conns[c]; {
	case s == http.StateActive && u != nil:
		u.busy = true
	case s == http.StateIdle && u != nil:
		u.busy, u.since = false, time.Now()
	case s == http.StateHijacked || s == http.StateClosed:
		delete(l.conns, c)
	}
	l.mu.Unlock()
	if s == http.StateIdle || s == http.StateHijacked || s == http.StateClosed {
		select {
		case l.freed <- struct{}{}:
		default:
		}
	}
}

// Close closes the listener and ends a waiting Accept.
func (l *evictingListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}
