package coordinator

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestResolveJoin(t *testing.T) {
	t.Parallel()
	addrs, err := resolveJoin(t.Context(), []string{"127.0.0.1:7000", "127.0.0.2", "localhost:7001", "127.0.0.1:7000", "[::1]:7002", "127.0.0.9:7946"}, 7946, "127.0.0.9:7946")
	require.NoError(t, err)
	require.Contains(t, addrs, "127.0.0.1:7000")
	require.Contains(t, addrs, "127.0.0.2:7946", "default port")
	require.Contains(t, addrs, "127.0.0.1:7001", "names resolve to every address")
	require.Contains(t, addrs, "[::1]:7002")
	require.NotContains(t, addrs, "127.0.0.9:7946", "never ourselves")
	require.Len(t, slices.Compact(slices.Sorted(slices.Values(addrs))), len(addrs), "no duplicates")

	_, err = resolveJoin(t.Context(), []string{"no-such-host.invalid"}, 7946, "")
	require.ErrorContains(t, err, "resolve no-such-host.invalid")
}

func TestExplainJoinError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  string
		want string
	}{
		{name: "wrong key", err: "no installed keys could decrypt the message", want: "peers could not decrypt our messages: check the gossip key"},
		{name: "encrypted vs plain", err: "encryption is configured but remote state is not encrypted", want: "check the gossip key"},
		{name: "closed", err: "EOF", want: "cache name"},
		{name: "other", err: "connection refused", want: "join 10.0.0.1:7946 failed: connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.ErrorContains(t, explainJoinError("10.0.0.1:7946", fmt.Errorf("%s", tt.err)), tt.want)
		})
	}
}
