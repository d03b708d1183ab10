package main

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// goroutineSlack is how many more goroutines than before an attack an agent may have once
// it settled: a pull, a gossip exchange or a probe in flight.
const goroutineSlack = 5

// settleWithin is how long an agent may take to release what an attack made it hold: the
// HTTP idle timeout (15 s) and the gossip stream deadline (3 s) with slack.
const settleWithin = 30 * time.Second

// underAttack runs attack against target while a watcher probes and measures nodes, then
// waits for target's goroutines to settle. It reports the watch (probes, false cached, peak
// RSS) and the goroutines before and after on c, and expects them back within
// goroutineSlack of before.
func underAttack(ctx context.Context, c *check, target *node, nodes []*node, attack func(context.Context) error) {
	c.start()
	before, err := target.goroutines(ctx)
	if err != nil {
		c.fail(err)
		return
	}
	w := watch(ctx, time.Second, target, nodes...)
	if err := attack(ctx); err != nil {
		c.fail(err)
	}
	after := target.goroutinesSettle(ctx, before, goroutineSlack, settleWithin)
	w.stop()
	w.report(c, true)
	c.figure("goroutines %d → %d", before, after)
	c.expect(after >= 0 && after <= before+goroutineSlack, "goroutines %d before, %d %s after the attack", before, after, secs(settleWithin))
}

// closedByPeer waits up to within for the other side to close conn (EOF or reset), reading
// and discarding what it sends; false when conn was still open.
func closedByPeer(conn net.Conn, within time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// fanOut runs f(i) for i in [0, n), at most limit at once, and waits for them.
func fanOut(n, limit int, f func(i int)) {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i)
		})
	}
	wg.Wait()
}
