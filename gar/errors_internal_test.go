package gar

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestDeadlineReached: gRPC's DeadlineExceeded counts as ctx's deadline when ctx expired or
// is about to; any other error, or a deadline far off, does not.
func TestDeadlineReached(t *testing.T) {
	t.Parallel()
	dl := status.Error(codes.DeadlineExceeded, "context deadline exceeded")
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	soon, cancel := context.WithTimeout(context.Background(), deadlineSlack/2)
	defer cancel()
	far, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"expired", expired, dl, true},
		{"a moment before the deadline", soon, dl, true},
		{"wrapped", soon, fmt.Errorf("pull: %w", dl), true},
		{"deadline far off", far, dl, false},
		{"no deadline", context.Background(), dl, false},
		{"cancelled, no deadline", cancelled, dl, false},
		{"another code", expired, status.Error(codes.Unavailable, "down"), false},
		{"not a status", expired, errors.New("boom"), false},
	} {
		require.Equal(t, tc.want, deadlineReached(tc.ctx, tc.err), tc.name)
	}
}
