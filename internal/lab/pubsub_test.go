package lab

import (
	"context"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/stretchr/testify/require"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestPubSubEmulator starts the real emulator, publishes an Artifact Registry push and pulls
// it back, and measures how long a waiting Pull takes to see a message published meanwhile.
func TestPubSubEmulator(t *testing.T) {
	t.Parallel()
	started := time.Now()
	ps := NewPubSub(t, "rubin-lab")
	t.Logf("emulator ready after %s", time.Since(started).Round(time.Millisecond))
	sub, err := ps.CreateSubscription(t.Context(), "gcr", "cachemachine")
	require.NoError(t, err)
	require.Equal(t, "projects/rubin-lab/subscriptions/cachemachine", sub)

	c, err := pubsub.NewClient(t.Context(), "rubin-lab", option.WithEndpoint(ps.Addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	require.NoError(t, err)
	defer c.Close()
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = ps.PublishARPush(context.Background(), "us-central1-docker.pkg.dev/rubin-lab/sciplat/sciplat-lab", "sha256:0000000000000000000000000000000000000000000000000000000000000000", "w_2024_10")
	}()
	pullStart := time.Now()
	var got []*pubsubpb.ReceivedMessage
	for len(got) < 2 && time.Since(pullStart) < 20*time.Second {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		resp, err := c.SubscriptionAdminClient.Pull(ctx, &pubsubpb.PullRequest{Subscription: sub, MaxMessages: 10})
		cancel()
		require.NoError(t, err)
		got = append(got, resp.GetReceivedMessages()...)
		t.Logf("pull returned %d messages %s after the first pull started", len(resp.GetReceivedMessages()), time.Since(pullStart).Round(time.Millisecond))
	}
	require.Len(t, got, 2)
	require.Contains(t, string(got[1].GetMessage().GetData())+string(got[0].GetMessage().GetData()), `"tag":"us-central1-docker.pkg.dev/rubin-lab/sciplat/sciplat-lab:w_2024_10"`)
	require.NoError(t, ps.Close())
}

// TestPubSubFake: the in-process fake has the emulator's API.
func TestPubSubFake(t *testing.T) {
	t.Parallel()
	ps, err := StartPubSubFake(t.Context(), "rubin-lab")
	require.NoError(t, err)
	defer func() { require.NoError(t, ps.Close()) }()
	require.Contains(t, ps.Kind, "pstest")
	sub, err := ps.CreateSubscription(t.Context(), "gcr", "cachemachine")
	require.NoError(t, err)
	require.NoError(t, ps.PublishARPush(t.Context(), "us-central1-docker.pkg.dev/rubin-lab/sciplat/sciplat-lab", "sha256:"+strings.Repeat("0", 64), "w_2024_10"))
	c, err := newPubSubClient(t.Context(), ps.Addr, "rubin-lab")
	require.NoError(t, err)
	defer c.Close()
	resp, err := c.SubscriptionAdminClient.Pull(t.Context(), &pubsubpb.PullRequest{Subscription: sub, MaxMessages: 10})
	require.NoError(t, err)
	require.Len(t, resp.GetReceivedMessages(), 2)
}
