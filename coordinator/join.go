package coordinator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"
)

// joiner makes the first join attempt (after which the node is ready, joined or alone), then
// retries with exponential backoff whenever the node is alone and peers are configured.
func (c *Cluster) joiner(ctx context.Context) {
	delay := c.t.joinMin
	first := true
	lastErr := ""
	for {
		wait := c.t.joinedPoll
		if len(c.cfg.Join) > 0 && c.aliveOthers() == 0 {
			n, err := c.join(ctx)
			switch {
			case ctx.Err() != nil:
				return
			case n > 0 && c.aliveOthers() > 0:
				c.log.Info("joined the cluster", "peers_contacted", n)
				delay, lastErr = c.t.joinMin, ""
			default:
				if err == nil {
					err = errors.New("only reached ourselves")
				}
				switch {
				case first:
					c.log.Warn("join failed, starting alone and retrying", "err", err, "retry_in", delay)
				case err.Error() != lastErr:
					c.log.Warn("join failed, still alone", "err", err, "retry_in", delay)
				default: // the same failure again: said already
					c.log.Debug("join failed, still alone", "err", err, "retry_in", delay)
				}
				lastErr = err.Error()
				wait = delay
				delay = min(2*delay, c.t.joinMax)
			}
		} else {
			delay = c.t.joinMin
		}
		if first {
			first = false
			c.ready.Store(true)
			signal(c.memberCh)
		}
		// Jitter: nodes that start together do not retry in lockstep.
		wait = wait/2 + rand.N(wait/2+1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// aliveOthers counts the alive members other than this node.
func (c *Cluster) aliveOthers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.alive
	if c.members[c.cfg.NodeName].alive {
		n--
	}
	return n
}

// join resolves the join list and contacts every address, one at a time so that ctx's end
// is noticed between attempts (each may take up to memberlist's TCPTimeout). It returns how
// many peers answered and, when none did, why.
func (c *Cluster) join(ctx context.Context) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, c.t.resolve)
	addrs, resolveErr := resolveJoin(rctx, c.cfg.Join, c.joinPort, c.advert)
	cancel()
	if len(addrs) == 0 {
		if resolveErr == nil {
			resolveErr = errors.New("no peer address but our own")
		}
		return 0, resolveErr
	}
	var errs []error
	joined := 0
	for _, addr := range addrs {
		if ctx.Err() != nil {
			return joined, ctx.Err()
		}
		n, err := c.ml.Join([]string{addr})
		if err != nil {
			errs = append(errs, explainJoinError(addr, err))
			continue
		}
		joined += n
	}
	if joined > 0 {
		return joined, nil
	}
	return 0, errors.Join(append(errs, resolveErr)...)
}

// resolveJoin turns join entries (DNS names and/or host:port, the port defaulting to
// defaultPort) into "ip:port" addresses: every address a name resolves to, without self and
// without duplicates. It returns what it could resolve and the lookup errors.
func resolveJoin(ctx context.Context, entries []string, defaultPort int, self string) ([]string, error) {
	var out []string
	var errs []error
	seen := map[string]bool{self: true}
	for _, entry := range entries {
		host, port, err := net.SplitHostPort(entry)
		if err != nil {
			host, port = strings.TrimSuffix(strings.TrimPrefix(entry, "["), "]"), strconv.Itoa(defaultPort)
		}
		var ips []string
		if ip := net.ParseIP(host); ip != nil {
			ips = []string{ip.String()}
		} else {
			ips, err = net.DefaultResolver.LookupHost(ctx, host)
			if err != nil {
				errs = append(errs, fmt.Errorf("resolve %s: %w", host, err))
				continue
			}
		}
		for _, ip := range ips {
			addr := net.JoinHostPort(ip, port)
			if !seen[addr] {
				seen[addr] = true
				out = append(out, addr)
			}
		}
	}
	return out, errors.Join(errs...)
}

// explainJoinError says what a failed join most likely means. A peer with another gossip key
// cannot decrypt our push/pull and answers with an error we cannot decrypt either, or closes
// the connection; a peer with another label (cache name) closes it without a word.
func explainJoinError(addr string, err error) error {
	// memberlist returns a go-multierror ("1 error occurred:\n\t* ..."): keep the errors.
	if me, ok := err.(interface{ WrappedErrors() []error }); ok && len(me.WrappedErrors()) > 0 {
		err = errors.Join(me.WrappedErrors()...)
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "decrypt"), strings.Contains(s, "encryption is not configured"),
		strings.Contains(s, "not encrypted"), strings.Contains(s, "unsupported encryption version"):
		return fmt.Errorf("join %s failed: peers could not decrypt our messages: check the gossip key (gossip_key_file) is the same on every node (and insecure_gossip is the same): %w", addr, err)
	case strings.Contains(s, "EOF"), strings.Contains(s, "connection reset"):
		return fmt.Errorf("join %s failed: the peer closed the connection: check the gossip key (gossip_key_file) and the cache name (the gossip label) are the same on every node: %w", addr, err)
	}
	return fmt.Errorf("join %s failed: %w", addr, err)
}
