package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/status"
)

// The HTTP clients of the status port (reachable from every namespace where no
// NetworkPolicy is enforced) that an agent must outlast, one after the other on one
// standalone agent.
const (
	idleConns      = 1000
	idleHold       = 20 * time.Second // past the server's 15 s idle timeout
	slowConns      = 300
	slowWithin     = 20 * time.Second
	hugeRequests   = 100
	hugeHeaderSize = 1 << 20
	busyClients    = 500
	busyRequests   = 4 // per client, on one keep-alive connection
)

func httpHostile() group {
	idle := newCheck(fmt.Sprintf("HTTP: %d idle keep-alive connections to the status port", idleConns),
		"probes answer (3 s) throughout; the server closes idle connections; RSS < 128 MiB; goroutines back")
	slow := newCheck(fmt.Sprintf("HTTP: slowloris, %d connections sending a header line a second", slowConns),
		fmt.Sprintf("all cut by the server within %s; probes answer; goroutines back", secs(slowWithin)))
	huge := newCheck(fmt.Sprintf("HTTP: %d concurrent requests with a 1 MiB header", hugeRequests),
		"none served (431 or cut); probes answer; RSS < 128 MiB; goroutines back")
	busy := newCheck(fmt.Sprintf("HTTP: %d concurrent clients × %d status dumps", busyClients, busyRequests),
		"every request answered 200 with the dump; probes answer; RSS < 128 MiB; goroutines back")
	return group{rows: []*check{idle, slow, huge, busy}, run: func(ctx context.Context, e *env) error {
		n, err := e.newNode(ctx, "http", "")
		if err != nil {
			return err
		}
		defer n.close()
		img, err := e.push(ctx, "faults/http", "w_2024_01", 2, 1)
		if err != nil {
			return err
		}
		cfg := e.config(n, simple(img))
		if err := e.start(ctx, n, cfg); err != nil {
			return err
		}
		if err := waitFor(ctx, time.Minute, "the image cached and available", func() bool { return n.cachedAndShown(ctx, img) }); err != nil {
			return err
		}
		addr := n.agent.HTTPAddr()
		nodes := []*node{n}
		underAttack(ctx, idle, n, nodes, func(ctx context.Context) error { return idleFlood(ctx, idle, addr) })
		underAttack(ctx, slow, n, nodes, func(ctx context.Context) error { return slowloris(ctx, slow, addr) })
		underAttack(ctx, huge, n, nodes, func(ctx context.Context) error { return hugeHeaders(huge, addr) })
		underAttack(ctx, busy, n, nodes, func(ctx context.Context) error { return manyClients(ctx, busy, addr) })
		return nil
	}}
}

// idleFlood opens idleConns connections, makes one request on each and keeps them open,
// idle, for idleHold; it counts the answers and the connections the server closed. The
// server must close every one within idleHold: those beyond MaxConns (256) are evicted as
// the flood arrives, and the rest once idle for the 15 s idle timeout.
func idleFlood(ctx context.Context, c *check, addr string) error {
	var answered, closed atomic.Int64
	readers := 0
	conns := make([]net.Conn, 0, idleConns)
	var wg sync.WaitGroup
	for range idleConns {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("connection %d: %w", len(conns)+1, err)
		}
		conns = append(conns, conn)
		if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n"); err != nil {
			continue
		}
		readers++
		wg.Go(func() {
			br := bufio.NewReader(conn)
			if resp, err := http.ReadResponse(br, nil); err == nil {
				resp.Body.Close()
				answered.Add(1)
			}
			if _, err := br.ReadByte(); err != nil && !isTimeout(err) {
				closed.Add(1) // EOF or reset: the server closed it
			}
		})
	}
	lab.Sleep(ctx, idleHold)
	for _, conn := range conns {
		_ = conn.SetReadDeadline(time.Now()) // wakes the readers; open connections count as open
	}
	wg.Wait()
	for _, conn := range conns {
		conn.Close()
	}
	c.figure("%d answered, %d closed by the server within %s", answered.Load(), closed.Load(), secs(idleHold))
	c.expect(closed.Load() == int64(readers), "the server closed %d of the %d idle connections within %s", closed.Load(), readers, secs(idleHold))
	return nil
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// slowloris opens slowConns connections that send a request line, then one header line a
// second, never ending the headers; it times how long the server takes to cut each.
func slowloris(ctx context.Context, c *check, addr string) error {
	cut := make([]time.Duration, slowConns)
	start := time.Now()
	fanOut(slowConns, slowConns, func(i int) {
		cut[i] = -1
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		defer conn.Close()
		stop := make(chan struct{})
		var wg sync.WaitGroup
		defer wg.Wait()
		defer close(stop)
		wg.Go(func() {
			if _, err := io.WriteString(conn, "GET /cachemachine/jupyter HTTP/1.1\r\nHost: agent\r\n"); err != nil {
				return
			}
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				if _, err := fmt.Fprintf(conn, "X-Slow-%d: x\r\n", time.Now().UnixNano()); err != nil {
					return
				}
			}
		})
		_ = conn.SetReadDeadline(start.Add(slowWithin + 5*time.Second))
		if _, err := io.Copy(io.Discard, conn); !isTimeout(err) {
			cut[i] = time.Since(start) // EOF or reset: the server cut it
		}
	})
	open := slices.Index(cut, -1) >= 0
	c.figure("last cut after %s", secs(slices.Max(cut)))
	c.expect(!open && slices.Max(cut) <= slowWithin, "slow connections still open after %s (open: %v, last cut %s)", secs(slowWithin), open, secs(slices.Max(cut)))
	return nil
}

// hugeHeaders sends hugeRequests requests at once, each with one header of hugeHeaderSize
// bytes, and classifies the answers.
func hugeHeaders(c *check, addr string) error {
	var tooLarge, cut, served atomic.Int64
	value := strings.Repeat("a", hugeHeaderSize)
	fanOut(hugeRequests, hugeRequests, func(int) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			cut.Add(1)
			return
		}
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		var wg sync.WaitGroup
		wg.Go(func() {
			_, _ = io.WriteString(conn, "GET /cachemachine/jupyter HTTP/1.1\r\nHost: agent\r\nX-Big: "+value+"\r\n\r\n")
		})
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close() // ends a write the server no longer reads
		wg.Wait()
		switch {
		case err != nil:
			cut.Add(1)
		case resp.StatusCode == http.StatusRequestHeaderFieldsTooLarge:
			tooLarge.Add(1)
		default:
			served.Add(1)
		}
	})
	c.figure("431 × %d, cut × %d, served × %d", tooLarge.Load(), cut.Load(), served.Load())
	c.expect(served.Load() == 0, "%d requests with a 1 MiB header were served", served.Load())
	return nil
}

// manyClients runs busyClients clients at once, each making busyRequests GETs of the dump
// on one keep-alive connection, and times them.
func manyClients(ctx context.Context, c *check, addr string) error {
	lat := make([]time.Duration, 0, busyClients*busyRequests)
	var mu sync.Mutex // guards lat and failed
	failed := 0
	lastErr := ""
	fanOut(busyClients, busyClients, func(int) {
		tr := &http.Transport{Proxy: nil}
		defer tr.CloseIdleConnections()
		client := &http.Client{Timeout: 30 * time.Second, Transport: tr}
		for range busyRequests {
			start := time.Now()
			err := getDump(ctx, client, addr)
			mu.Lock()
			if err != nil {
				failed++
				lastErr = err.Error()
			} else {
				lat = append(lat, time.Since(start))
			}
			mu.Unlock()
		}
	})
	slices.Sort(lat)
	if len(lat) > 0 {
		c.figure("%d ok, p50 %s, p99 %s", len(lat), secs(lat[len(lat)/2]), secs(lat[len(lat)*99/100]))
	}
	c.expect(failed == 0, "%d of %d requests failed, last: %s", failed, busyClients*busyRequests, lastErr)
	return nil
}

// getDump fetches and decodes the status dump with client.
func getDump(ctx context.Context, client *http.Client, addr string) error {
	body, err := get(ctx, client, addr, "/cachemachine/jupyter")
	if err != nil {
		return err
	}
	var d status.Dump
	return json.Unmarshal(body, &d)
}
