package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serveLimited runs a server of h (nil: one that answers "ok") with limits on a loopback port
// until the test ends.
func serveLimited(t *testing.T, limits HTTPLimits, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	}
	srv := NewHTTPServer(h, limits)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, ln, limits) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return ln.Addr().String()
}

// closedByServer waits until the server closes c, at most within.
func closedByServer(c net.Conn, within time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	return err == nil // EOF: the server closed it; a timeout is an error
}

// TestHTTPServerClosesIdleConnections: 1,000 idle keep-alive connections used to stay open
// for ever, a goroutine and ~17 KB each, on a port open to every namespace.
func TestHTTPServerClosesIdleConnections(t *testing.T) {
	t.Parallel()
	limits := HTTPLimits{ReadHeader: 300 * time.Millisecond, Read: time.Second, Write: time.Second, Idle: 300 * time.Millisecond, MaxHeaderBytes: 4 << 10, MaxConns: 64}
	addr := serveLimited(t, limits, nil)

	var conns []net.Conn
	for range 40 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		resp.Body.Close()
		conns = append(conns, c) // kept alive, now idle
	}
	for range 20 { // connections that never send a request
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	for i, c := range conns {
		require.True(t, closedByServer(c, 5*time.Second), "connection %d still open", i)
	}
}

func TestHTTPServerRefusesHugeHeaders(t *testing.T) {
	t.Parallel()
	limits := HTTPLimits{ReadHeader: 5 * time.Second, Read: 5 * time.Second, Write: 5 * time.Second, Idle: 5 * time.Second, MaxHeaderBytes: 4 << 10}
	addr := serveLimited(t, limits, nil)

	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	require.NoError(t, err)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
}

// get makes one request on a new connection and returns the status, 0 on error.
func get(t *testing.T, addr string, timeout time.Duration) int {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestHTTPServerMakesRoomForNewClients: idle keep-alive connections and clients that never
// finish their headers used to hold every connection slot until their timeouts, so the
// kubelet's probes waited in the listen backlog and failed (make faults: 6 of 9 liveness
// probes failed while 1,000 idle keep-alive connections were open). Now a connection that
// arrives at the limit closes the oldest one that has had no request in progress for
// EvictAfter.
func TestHTTPServerMakesRoomForNewClients(t *testing.T) {
	t.Parallel()
	limits := HTTPLimits{ReadHeader: time.Minute, Read: time.Minute, Write: time.Minute, Idle: time.Minute, MaxHeaderBytes: 4 << 10, MaxConns: 4, EvictAfter: 100 * time.Millisecond}
	addr := serveLimited(t, limits, nil)

	// Two idle keep-alive connections and two that never send their headers take every slot.
	var held []net.Conn
	for i := range 4 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		if i%2 == 0 {
			_, err = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			require.NoError(t, err)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			require.NoError(t, err)
			resp.Body.Close()
		} else {
			_, err = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n") // and no more
			require.NoError(t, err)
		}
		held = append(held, c)
		time.Sleep(20 * time.Millisecond) // distinct ages
	}
	time.Sleep(limits.EvictAfter)
	start := time.Now()
	require.Equal(t, http.StatusOK, get(t, addr, 2*time.Second), "a new client is served at the limit")
	require.Less(t, time.Since(start), time.Second)
	require.True(t, closedByServer(held[0], 2*time.Second), "the oldest connection without a request made room")
	for i, c := range held[1:] {
		require.False(t, closedByServer(c, 200*time.Millisecond), "connection %d is still open", i+1)
	}
}

// TestHTTPServerSparesFreshConnections: a keep-alive connection that only just went idle is
// about to be reused by its client; it is not closed to make room.
func TestHTTPServerSparesFreshConnections(t *testing.T) {
	t.Parallel()
	limits := HTTPLimits{ReadHeader: time.Minute, Read: time.Minute, Write: time.Minute, Idle: time.Minute, MaxHeaderBytes: 4 << 10, MaxConns: 2, EvictAfter: time.Minute}
	addr := serveLimited(t, limits, nil)
	request := func(c net.Conn) {
		t.Helper()
		_, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		request(c)
		idle = append(idle, c)
	}
	require.Equal(t, 0, get(t, addr, 300*time.Millisecond), "no room: both connections went idle just now")
	for _, c := range idle {
		request(c) // still open: reused
	}
}

// TestHTTPServerWaitsWhileEveryConnectionIsBusy: a request in progress is never cut to make
// room; a new client waits until one ends.
func TestHTTPServerWaitsWhileEveryConnectionIsBusy(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var inHandler sync.WaitGroup
	inHandler.Add(2)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			inHandler.Done()
			<-release
		}
		fmt.Fprintln(w, "ok")
	})
	limits := HTTPLimits{ReadHeader: 5 * time.Second, Read: 5 * time.Second, Write: 5 * time.Second, Idle: 5 * time.Second, MaxHeaderBytes: 4 << 10, MaxConns: 2}
	addr := serveLimited(t, limits, h)
	var slow sync.WaitGroup
	for range 2 {
		slow.Go(func() {
			resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get("http://" + addr + "/slow")
			if assert.NoError(t, err) {
				resp.Body.Close()
				assert.Equal(t, http.StatusOK, resp.StatusCode, "the busy requests complete")
			}
		})
	}
	inHandler.Wait()
	require.Equal(t, 0, get(t, addr, 300*time.Millisecond), "no room while both connections serve a request")
	close(release)
	slow.Wait()
	require.Equal(t, http.StatusOK, get(t, addr, 2*time.Second))
}
