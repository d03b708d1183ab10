package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fault is what the proxy does to matching requests instead of forwarding them.
type fault struct {
	// status, when not 0, is answered at once (401 with a Basic challenge, as a registry
	// refusing the credentials; 5xx as a broken registry).
	status int
	// hang holds the request, unanswered, until the client gives up: a registry behind a
	// broken load balancer.
	hang bool
	// path limits the fault to request paths containing it ("/blobs/": the pull path);
	// "" matches every request.
	path string
}

func (f fault) none() bool { return f.status == 0 && !f.hang }

// proxy is a reverse proxy in front of the real docker-registry that injects a fault. It is
// the only stand-in of the run: the registry itself cannot be told to answer 401 or 503 to
// a client it would serve.
type proxy struct {
	addr    string
	srv     *http.Server
	served  chan struct{}
	forward *httputil.ReverseProxy

	mu    sync.Mutex // guards f
	f     fault
	faced atomic.Int64 // requests that met the fault
}

// startProxy serves a proxy to the registry at target on a loopback port.
func startProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &url.URL{Scheme: "http", Host: target}
	p := &proxy{addr: ln.Addr().String(), served: make(chan struct{}), forward: httputil.NewSingleHostReverseProxy(u)}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(ln) // ends with Close
	}()
	return p, nil
}

// set changes the fault; fault{} heals.
func (p *proxy) set(f fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.f = f
}

func (p *proxy) close() {
	_ = p.srv.Close() // closes hung requests' connections too
	<-p.served
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	f := p.f
	p.mu.Unlock()
	if f.none() || !strings.Contains(r.URL.Path, f.path) {
		p.forward.ServeHTTP(w, r)
		return
	}
	p.faced.Add(1)
	if f.hang {
		<-r.Context().Done()
		panic(http.ErrAbortHandler) // no answer at all, the connection is cut
	}
	if f.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="faults"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"injected by make faults"}]}`, errorCode(f.status))
}

// errorCode is the distribution spec's error code for status.
func errorCode(status int) string {
	if status == http.StatusUnauthorized {
		return "UNAUTHORIZED"
	}
	return "UNAVAILABLE"
}
