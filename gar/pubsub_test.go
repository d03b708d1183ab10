package gar_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/gar"
)

const (
	topic   = "projects/rubin-lab/topics/gcr"
	subName = "projects/rubin-lab/subscriptions/gcr-cachemachine"
	garRepo = "us-central1-docker.pkg.dev/rubin-lab/sciplat/sciplat-lab"
)

func clientOpts(addr string) []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

// fakePubSub is pstest's in-process Pub/Sub with the topic gcr.
func fakePubSub(t *testing.T) *pstest.Server {
	t.Helper()
	srv := pstest.NewServer()
	t.Cleanup(func() { srv.Close() })
	c, err := pubsub.NewClient(t.Context(), "rubin-lab", clientOpts(srv.Addr)...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.TopicAdminClient.CreateTopic(t.Context(), &pubsubpb.Topic{Name: topic})
	require.NoError(t, err)
	return srv
}

func createSubscription(t *testing.T, srv *pstest.Server) {
	t.Helper()
	c, err := pubsub.NewClient(t.Context(), "rubin-lab", clientOpts(srv.Addr)...)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.SubscriptionAdminClient.CreateSubscription(t.Context(), &pubsubpb.Subscription{Name: subName, Topic: topic, AckDeadlineSeconds: 10})
	require.NoError(t, err)
}

// recorder is what the leader would be: it records the repositories it was told of and the
// reports.
type recorder struct {
	mu      sync.Mutex // guards the fields below
	repos   []string
	reports []error
	lists   string // the repository a source lists
}

func (r *recorder) changed(repo string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.repos = append(r.repos, repo)
	return repo == r.lists
}

func (r *recorder) report(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports = append(r.reports, err)
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.repos...)
}

func (r *recorder) lastReport() (error, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reports) == 0 {
		return nil, false
	}
	return r.reports[len(r.reports)-1], true
}

// syncBuffer is a log sink safe for the handler and the test.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// watch runs s.Watch until the test ends and checks that it returns when asked.
func watch(t *testing.T, s *gar.Subscription, r *recorder) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, r.changed, r.report) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return within 5s of its context's end")
		}
	})
}

func TestSubscriptionTriggersOnItsRepositoryAndAcknowledgesEverything(t *testing.T) {
	t.Parallel()
	srv := fakePubSub(t)
	createSubscription(t, srv)
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	s, err := gar.NewSubscription(t.Context(), subName, slog.New(slog.NewJSONHandler(&logs, nil)), reg, gar.WithClientOptions(clientOpts(srv.Addr)...))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	require.Equal(t, "Pub/Sub "+subName, s.Name())

	ids := []string{
		srv.Publish(topic, []byte(`{"action":"INSERT","digest":"`+garRepo+`@sha256:`+strings.Repeat("a", 64)+`","tag":"`+garRepo+`:w_2024_10"}`), nil),
		srv.Publish(topic, []byte(`{"action":"INSERT","digest":"us-central1-docker.pkg.dev/rubin-lab/other/img@sha256:`+strings.Repeat("b", 64)+`"}`), nil),
		srv.Publish(topic, []byte(`{"action":"DELETE","tag":"`+garRepo+`:w_2024_01"}`), nil),
		srv.Publish(topic, []byte(`not json`), nil),
		srv.Publish(topic, []byte(`{"action":"UPDATE","tag":"`+garRepo+`:x"}`), nil),
		srv.Publish(topic, bytes.Repeat([]byte("x"), gar.MaxMessageBytes+1), nil),
	}
	r := &recorder{lists: garRepo}
	watch(t, s, r)
	require.Eventually(t, func() bool {
		for _, id := range ids {
			if srv.Message(id).Acks == 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "every message acknowledged, malformed ones included")
	require.ElementsMatch(t, []string{garRepo, "us-central1-docker.pkg.dev/rubin-lab/other/img", garRepo}, r.seen())
	err, ok := r.lastReport()
	require.True(t, ok)
	require.NoError(t, err, "a working subscription reports nil")

	require.Equal(t, 2.0, messages(t, reg, "matched"))
	require.Equal(t, 1.0, messages(t, reg, "ignored"))
	require.Equal(t, 3.0, messages(t, reg, "malformed"))
	require.Equal(t, 1, strings.Count(logs.String(), "malformed Pub/Sub message"), "malformed messages are logged at most once a minute:\n%s", logs.String())
}

// messages returns cachemachine_pubsub_messages_total of a result.
func messages(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "cachemachine_pubsub_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestBrokenSubscriptionIsReportedAndRetried: a subscription that does not exist is an error
// naming it and saying what to do; receiving starts once it exists.
func TestBrokenSubscriptionIsReportedAndRetried(t *testing.T) {
	t.Parallel()
	srv := fakePubSub(t)
	s, err := gar.NewSubscription(t.Context(), subName, nil, nil, gar.WithClientOptions(clientOpts(srv.Addr)...))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	r := &recorder{lists: garRepo}
	watch(t, s, r)
	require.Eventually(t, func() bool { err, ok := r.lastReport(); return ok && err != nil }, 10*time.Second, 10*time.Millisecond)
	err, _ = r.lastReport()
	require.ErrorIs(t, err, gar.ErrSubscription)
	require.Equal(t, codes.NotFound, status.Code(err))
	require.ErrorContains(t, err, "pub/sub subscription "+subName+": pull: NotFound (the subscription does not exist: create it on the topic gcr")

	createSubscription(t, srv)
	srv.Publish(topic, []byte(`{"action":"INSERT","tag":"`+garRepo+`:w_2024_11"}`), nil)
	require.Eventually(t, func() bool { return len(r.seen()) == 1 }, 10*time.Second, 10*time.Millisecond, "received after the retry")
	err, _ = r.lastReport()
	require.NoError(t, err)
}

// TestUnreachablePubSubIsAnErrorAtOnce: every call has a deadline and no hidden retries: an
// endpoint that refuses connections is reported within seconds, not after the pull timeout.
func TestUnreachablePubSubIsAnErrorAtOnce(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	s, err := gar.NewSubscription(t.Context(), subName, nil, nil, gar.WithClientOptions(clientOpts(addr)...))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	r := &recorder{}
	started := time.Now()
	watch(t, s, r)
	require.Eventually(t, func() bool { err, ok := r.lastReport(); return ok && err != nil }, 10*time.Second, 10*time.Millisecond)
	require.Less(t, time.Since(started), 5*time.Second)
	err, _ = r.lastReport()
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
}

func TestOneWatchAtATime(t *testing.T) {
	t.Parallel()
	srv := fakePubSub(t)
	createSubscription(t, srv)
	s, err := gar.NewSubscription(t.Context(), subName, nil, nil, gar.WithClientOptions(clientOpts(srv.Addr)...))
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	r := &recorder{}
	watch(t, s, r)
	require.Eventually(t, func() bool { _, ok := r.lastReport(); return ok }, 10*time.Second, 10*time.Millisecond)
	err = s.Watch(t.Context(), r.changed, r.report)
	require.ErrorContains(t, err, "already receiving")
}

func TestParseNotification(t *testing.T) {
	t.Parallel()
	d := "sha256:" + strings.Repeat("c", 64)
	tests := []struct {
		name     string
		data     string
		wantRepo string
		wantErr  string
	}{
		{"insert with tag", `{"action":"INSERT","digest":"` + garRepo + `@` + d + `","tag":"` + garRepo + `:recommended"}`, garRepo, ""},
		{"insert digest only", `{"action":"INSERT","digest":"` + garRepo + `@` + d + `"}`, garRepo, ""},
		{"delete tag", `{"action":"DELETE","tag":"` + garRepo + `:w_2024_01"}`, garRepo, ""},
		{"nested image path", `{"action":"INSERT","tag":"europe-docker.pkg.dev/p/r/team/lab:1"}`, "europe-docker.pkg.dev/p/r/team/lab", ""},
		{"unknown fields are fine", `{"action":"INSERT","tag":"` + garRepo + `:1","extra":true}`, garRepo, ""},
		{"no reference", `{"action":"INSERT"}`, "", "neither tag nor digest"},
		{"unknown action", `{"action":"UPSERT","tag":"` + garRepo + `:1"}`, "", `unknown action "UPSERT"`},
		{"not JSON", `<xml/>`, "", "not an Artifact Registry notification"},
		{"bad reference", `{"action":"INSERT","tag":"UPPER CASE:1"}`, "", "reference"},
		{"tag and digest disagree", `{"action":"INSERT","digest":"x.example/a@` + d + `","tag":"x.example/b:1"}`, "", "different repositories"},
		{"oversized", `"` + strings.Repeat("x", gar.MaxMessageBytes) + `"`, "", "at most 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, repo, err := gar.ParseNotification([]byte(tt.data))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantRepo, repo)
		})
	}
}

func TestNewSubscriptionRejectsAName(t *testing.T) {
	t.Parallel()
	_, err := gar.NewSubscription(t.Context(), "projects/p/topics/gcr", nil, nil)
	require.True(t, errors.Is(err, gar.ErrConfig), "%v", err)
}

func FuzzParseNotification(f *testing.F) {
	f.Add([]byte(`{"action":"INSERT","digest":"` + garRepo + `@sha256:` + strings.Repeat("a", 64) + `","tag":"` + garRepo + `:w_2024_10"}`))
	f.Add([]byte(`{"action":"DELETE","tag":"a:b"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, repo, err := gar.ParseNotification(data)
		if err == nil && repo == "" {
			t.Fatal("no error and no repository")
		}
	})
}
