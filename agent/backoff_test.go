package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBackoffDoublesWithJitterUpToMax(t *testing.T) {
	t.Parallel()
	initial, maxDelay := 10*time.Second, 5*time.Minute
	for failures, ceiling := range map[int]time.Duration{1: 10 * time.Second, 2: 20 * time.Second, 3: 40 * time.Second, 6: 5 * time.Minute, 60: 5 * time.Minute} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := backoff(initial, maxDelay, failures)
			require.GreaterOrEqual(t, d, ceiling/2, "failures=%d", failures)
			require.LessOrEqual(t, d, ceiling, "failures=%d", failures)
			seen[d] = true
		}
		require.Greater(t, len(seen), 10, "failures=%d: no jitter", failures)
	}
}
