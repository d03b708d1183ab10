package registry

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// countingTransport counts the requests it forwards. It sits below go-containerregistry's auth
// and retry layers, so every attempt on the wire is counted, token requests included.
type countingTransport struct {
	next     http.RoundTripper
	total    atomic.Int64
	inFlight atomic.Int64

	mu       sync.Mutex // guards the fields below
	byMethod map[string]int
	pages    int // tag-list pages fetched
	maxIn    int // highest inFlight seen
}

func newCountingTransport(next http.RoundTripper) *countingTransport {
	return &countingTransport{next: next, byMethod: make(map[string]int)}
}

// RoundTrip implements http.RoundTripper.
func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.total.Add(1)
	n := int(c.inFlight.Add(1))
	defer c.inFlight.Add(-1)
	c.mu.Lock()
	c.byMethod[req.Method]++
	if req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/tags/list") {
		c.pages++
	}
	c.maxIn = max(c.maxIn, n)
	c.mu.Unlock()
	return c.next.RoundTrip(req)
}

// calls returns the number of requests sent with method.
func (c *countingTransport) calls(method string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byMethod[method]
}

// tagPages returns the number of tag-list pages requested.
func (c *countingTransport) tagPages() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pages
}

// maxInFlight returns the most requests that were in flight at once.
func (c *countingTransport) maxInFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxIn
}
