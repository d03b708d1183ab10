package lab

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLogBufferConcurrent(t *testing.T) {
	t.Parallel()
	var logs LogBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				logger.Info("line", "writer", i, "n", j)
				_ = logs.String() // reading while others write
			}
		})
	}
	wg.Wait()
	out := logs.String()
	require.Equal(t, 400, strings.Count(out, "\n"))
	require.Contains(t, out, fmt.Sprintf("writer=%d n=%d", 7, 49))
}
