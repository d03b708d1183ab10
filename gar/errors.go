package gar

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Every error from a listing wraps one of these, or ctx's error when ctx
// ended; errors from New wrap ErrConfig or describe the client set-up.
var (
	// ErrConfig: the Config cannot name a repository and image.
	ErrConfig = errors.New("invalid artifact registry config")
	// ErrPermission: the caller's identity may not list the repository (PermissionDenied).
	ErrPermission = errors.New("permission denied")
	// ErrUnauthenticated: the request carried no valid credentials (Unauthenticated).
	ErrUnauthenticated = errors.New("not authenticated")
	// ErrNotFound: the repository (or project or location) does not exist (NotFound).
	ErrNotFound = errors.New("repository not found")
	// ErrInvalid: the API rejected the request, usually a malformed repository name
	// (InvalidArgument, FailedPrecondition, OutOfRange).
	ErrInvalid = errors.New("invalid request")
	// ErrUnavailable: the API stayed unavailable or overloaded through every attempt
	// (Unavailable, Internal, ResourceExhausted, DeadlineExceeded).
	ErrUnavailable = errors.New("artifact registry unavailable")
	// ErrAPI: any other error from the API.
	ErrAPI = errors.New("artifact registry error")
)

// apiError maps a listing error to "list {parent}: {sentence}: {message}" wrapping a
// sentinel. Context errors win: a cancelled listing is reported as cancelled, not as the
// Canceled status gRPC turns it into.
func (l *Lister) apiError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("list %s: %w", l.parent, ctxErr)
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("list %s: %w: %w", l.parent, ErrAPI, err)
	}
	if deadlineReached(ctx, err) {
		return fmt.Errorf("list %s: %w", l.parent, context.DeadlineExceeded)
	}
	var sentinel error
	switch st.Code() {
	case codes.PermissionDenied:
		sentinel = ErrPermission
	case codes.Unauthenticated:
		sentinel = fmt.Errorf("%w (check Application Default Credentials)", ErrUnauthenticated)
	case codes.NotFound:
		sentinel = ErrNotFound
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		sentinel = ErrInvalid
	case codes.Unavailable, codes.Internal, codes.ResourceExhausted, codes.DeadlineExceeded:
		sentinel = fmt.Errorf("%w (%s)", ErrUnavailable, st.Code())
	case codes.Canceled:
		return fmt.Errorf("list %s: %w", l.parent, context.Canceled)
	default:
		sentinel = fmt.Errorf("%w (%s)", ErrAPI, st.Code())
	}
	if st.Message() == "" {
		return fmt.Errorf("list %s: %w", l.parent, sentinel)
	}
	return fmt.Errorf("list %s: %w: %s", l.parent, sentinel, st.Message())
}

// deadlineSlack is how long before ctx's deadline gRPC's DeadlineExceeded still counts as
// that deadline.
const deadlineSlack = 100 * time.Millisecond

// deadlineReached reports whether err is gRPC's DeadlineExceeded for ctx's own deadline: ctx
// has expired, or its deadline is less than deadlineSlack away (gRPC derives the call's
// deadline from ctx and may report it a moment before ctx's own timer fires).
func deadlineReached(ctx context.Context, err error) bool {
	if status.Code(err) != codes.DeadlineExceeded {
		return false
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < deadlineSlack
}
