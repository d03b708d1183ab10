package coordinatortest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// Poll calls cond every interval until it reports true, ctx ends or timeout passes; the error
// then carries cond's last description of what it is waiting for.
func Poll(ctx context.Context, timeout, interval time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, what := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s: %s", timeout, what)
		}
		wait := time.NewTimer(interval)
		select {
		case <-wait.C:
		case <-ctx.Done():
			wait.Stop()
			return errors.Join(ctx.Err(), errors.New(what))
		}
	}
}

// WaitFor polls cond every 10 ms until it holds, and fails t when timeout passes first.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := Poll(context.Background(), timeout, 10*time.Millisecond, func() (bool, string) { return cond(), what }); err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// WaitLeader waits until every one of nodes sees exactly nodes as the alive members and leader
// as their leader.
func WaitLeader(t testing.TB, timeout time.Duration, leader string, nodes ...*Node) {
	t.Helper()
	want := make([]string, 0, len(nodes))
	for _, n := range nodes {
		want = append(want, n.Name)
	}
	slices.Sort(want)
	WaitFor(t, timeout, fmt.Sprintf("members %v agreeing on leader %s", want, leader), func() bool {
		for _, n := range nodes {
			name, _, _ := n.Cluster.Leader()
			if name != leader || !slices.Equal(n.AliveNames(), want) {
				return false
			}
		}
		return true
	})
}
