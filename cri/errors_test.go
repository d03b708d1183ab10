package cri

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestWrapError(t *testing.T) {
	t.Parallel()
	live := context.Background()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithTimeout(context.Background(), 0)
	defer cancel2()
	auth := &Auth{Username: "oauth2accesstoken", Password: "ya29.secret"}

	tests := []struct {
		name string
		ctx  context.Context
		err  error
		auth *Auth
		want error
		text string // exact error text, if set
	}{
		{name: "unavailable", ctx: live, err: status.Error(codes.Unavailable, "connection refused"),
			want: ErrUnavailable, text: "pull r:1: container runtime unavailable: connection refused"},
		{name: "deadline", ctx: expired, err: status.Error(codes.DeadlineExceeded, "context deadline exceeded"),
			want: ErrDeadline, text: "pull r:1: deadline exceeded"},
		{name: "server deadline", ctx: live, err: status.Error(codes.DeadlineExceeded, "took too long"),
			want: ErrDeadline},
		{name: "not found", ctx: live,
			err:  status.Error(codes.NotFound, `failed to resolve reference "r:1": r:1: not found`),
			want: ErrNotFound, text: `pull r:1: image not found: failed to resolve reference "r:1": r:1: not found`},
		{name: "401 as unknown", ctx: live,
			err:  status.Error(codes.Unknown, "failed to resolve reference: pulling from host h failed: 401 Unauthorized"),
			want: ErrUnauthorized},
		{name: "no credentials on containerd 1.7 and 2.x", ctx: live,
			err:  status.Error(codes.Unknown, `failed to pull and unpack image "r:1": failed to resolve image: pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials`),
			want: ErrUnauthorized},
		{name: "403 as unknown", ctx: live, err: status.Error(codes.Unknown, "unexpected status: 403 Forbidden"),
			want: ErrUnauthorized},
		{name: "403 as internal", ctx: live, err: status.Error(codes.Internal, "403 Forbidden"),
			want: ErrUnauthorized},
		{name: "unauthenticated", ctx: live, err: status.Error(codes.Unauthenticated, "no"), want: ErrUnauthorized},
		{name: "unimplemented", ctx: live,
			err: status.Error(codes.Unimplemented, "unknown service runtime.v1.ImageService"), want: ErrNotCRI},
		{name: "canceled by caller", ctx: canceled, err: status.Error(codes.Canceled, "context canceled"),
			want: context.Canceled, text: "pull r:1: context canceled"},
		{name: "canceled by deadline", ctx: expired, err: status.Error(codes.Canceled, "context canceled"),
			want: ErrDeadline},
		{name: "canceled by server", ctx: live, err: status.Error(codes.Canceled, "server canceled"), want: ErrRuntime},
		{name: "unknown", ctx: live, err: status.Error(codes.Unknown, "connection refused"), want: ErrRuntime},
		{name: "internal", ctx: live, err: status.Error(codes.Internal, "boom"), want: ErrRuntime,
			text: "pull r:1: container runtime error: boom"},
		{name: "not a status", ctx: live, err: errors.New("plain"), want: ErrRuntime},
		{name: "empty message", ctx: live, err: status.Error(codes.Internal, ""), want: ErrRuntime,
			text: "pull r:1: container runtime error"},
		{name: "password scrubbed", ctx: live, auth: auth,
			err:  status.Error(codes.Unknown, "creds ya29.secret rejected: 401 Unauthorized"),
			want: ErrUnauthorized, text: "pull r:1: registry refused credentials: creds <redacted> rejected: 401 Unauthorized"},
		{name: "basic token scrubbed", ctx: live, auth: auth,
			err:  status.Error(codes.Unknown, "header Basic b2F1dGgyYWNjZXNzdG9rZW46eWEyOS5zZWNyZXQ="),
			want: ErrRuntime, text: "pull r:1: container runtime error: header Basic <redacted>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := wrapError(tt.ctx, "pull r:1", tt.err, tt.auth)
			require.ErrorIs(t, got, tt.want)
			if tt.text != "" {
				require.EqualError(t, got, tt.text)
			}
			require.NotContains(t, got.Error(), auth.Password)
		})
	}
}

func TestSocketPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, endpoint, want string
		wantErr              bool
	}{
		{name: "unix url", endpoint: "unix:///run/containerd/containerd.sock", want: "/run/containerd/containerd.sock"},
		{name: "bare path", endpoint: "/run/x.sock", want: "/run/x.sock"},
		{name: "tcp", endpoint: "tcp://127.0.0.1:1234", wantErr: true},
		{name: "empty", endpoint: "", wantErr: true},
		{name: "empty unix", endpoint: "unix://", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := socketPath(tt.endpoint)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}
