package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/status"
)

// pollTimeout bounds each status or debug request of one poll.
const pollTimeout = 2 * time.Second

// view is one poll's picture of the cluster: the leader's status documents (through n1,
// which proxies to the leader) and each node's own pull state from its debug socket.
type view struct {
	at        time.Time
	leader    string
	dump      *status.Dump  // nil while the status API does not answer
	nodes     *status.Nodes // nil while the status API does not answer
	statusErr string        // why dump or nodes is nil
	pulls     map[string]*agent.PullsView
}

// complete reports whether common_cache holds every desired image on all n alive nodes.
func (v view) complete(n int) bool {
	if v.dump == nil || v.nodes == nil || len(v.dump.DesiredImages) == 0 {
		return false
	}
	alive := 0
	for _, nv := range v.nodes.Nodes {
		if nv.Alive {
			alive++
		}
	}
	return alive == n && len(v.dump.ImagesToCache) == 0 && len(v.dump.AvailableImages) == len(v.dump.DesiredImages)
}

// poller reads the status API and the debug sockets. It is used from one goroutine.
type poller struct {
	statusURL string // http://127.0.0.1:PORT/cachemachine/jupyter
	http      *http.Client
	debug     map[string]*http.Client // node -> client bound to its debug socket
}

func newPoller(statusURL string, agents []*lab.Agent) *poller {
	p := &poller{statusURL: statusURL, http: &http.Client{Timeout: pollTimeout}, debug: map[string]*http.Client{}}
	for _, a := range agents {
		socket := a.Config().Agent.DebugSocket
		p.debug[a.Node()] = &http.Client{
			Timeout: pollTimeout,
			Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			}},
		}
	}
	return p
}

// poll takes one view. Failures are part of the view (the status API answers 503 until the
// cluster has a leader), not errors.
func (p *poller) poll(ctx context.Context) view {
	v := view{at: time.Now(), pulls: map[string]*agent.PullsView{}}
	var d status.Dump
	leader, err := getJSON(ctx, p.http, p.statusURL, &d)
	if err == nil {
		var n status.Nodes
		if _, err = getJSON(ctx, p.http, p.statusURL+"/nodes", &n); err == nil {
			v.dump, v.nodes, v.leader = &d, &n, leader
		}
	}
	if err != nil {
		v.statusErr = err.Error()
	}
	for name, c := range p.debug {
		var pv agent.PullsView
		if _, err := getJSON(ctx, c, "http://agent/v1/pulls", &pv); err == nil {
			v.pulls[name] = &pv
		}
	}
	return v
}

// raw returns the body of GET url, indented as the server sent it, for printing.
func (p *poller) raw(ctx context.Context, url string) (string, error) {
	body, _, err := get(ctx, p.http, url)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := json.Indent(&b, body, "", "  "); err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	return b.String(), nil
}

// getJSON decodes the JSON answer of GET url into v and returns the leader header.
func getJSON(ctx context.Context, c *http.Client, url string, v any) (string, error) {
	body, leader, err := get(ctx, c, url)
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	return leader, nil
}

// get returns the body of a 200 answer to GET url (asking for JSON) and the leader header.
func get(ctx context.Context, c *http.Client, url string) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", err // names the method and URL already
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, "", fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return body, resp.Header.Get(status.LeaderHeader), nil
}
