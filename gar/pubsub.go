package gar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/googleapis/gax-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/image"
)

// Artifact Registry publishes a message to the Pub/Sub topic "gcr" of its project on every
// push, tag and delete in any repository of the project, at least once and in no particular
// order:
//
//	{"action":"INSERT","digest":"LOC-docker.pkg.dev/P/R/IMG@sha256:…","tag":"LOC-docker.pkg.dev/P/R/IMG:TAG"}
//	{"action":"DELETE","tag":"LOC-docker.pkg.dev/P/R/IMG:TAG"}
//
// A Subscription receives them and says which repository changed. The message is a trigger
// only: the listing that follows decides what exists.

// Limits of a Subscription.
const (
	// MaxMessageBytes bounds the data of a message it acts on: Artifact Registry's messages
	// are a few hundred bytes; a larger one is acknowledged and counted as malformed.
	MaxMessageBytes = 64 << 10
	// pullMaxMessages is how many messages one Pull asks for; after a response that exceeded
	// maxPullResponse it asks for one at a time until a Pull succeeds (one message of
	// Pub/Sub's 10 MB maximum always fits).
	pullMaxMessages = 32
	maxPullResponse = 16 << 20
	// DefaultPullTimeout is the deadline of one Pull: the service holds a Pull until a
	// message arrives or the deadline passes, so it is also the longest wait for a message
	// that sees none.
	DefaultPullTimeout = 30 * time.Second
	// DefaultAckTimeout is the deadline of one Acknowledge.
	DefaultAckTimeout = 10 * time.Second
	// Pause after a failed call: doubles, up to subscriptionBackoffMax.
	subscriptionBackoffMin = time.Second
	subscriptionBackoffMax = 30 * time.Second
	// malformedLogEvery bounds the log lines about malformed messages.
	malformedLogEvery = time.Minute
)

// ErrSubscription wraps every error a Subscription reports from the Pub/Sub API.
var ErrSubscription = errors.New("pub/sub subscription")

// Subscription receives Artifact Registry's notifications from one Pub/Sub subscription (to
// the topic "gcr" of the registry's project). Build it with NewSubscription; Watch receives,
// Close releases the client. It implements leader.Trigger.
type Subscription struct {
	name    string // projects/P/subscriptions/S
	client  *pubsub.Client
	log     *slog.Logger
	metrics *subscriptionMetrics

	receiveGuard chan struct{} // capacity 1: one Watch at a time
	closeOnce    sync.Once
	closeErr     error

	mu          sync.Mutex // guards the fields below
	lastMalform time.Time  // when a malformed message was last logged
	suppressed  int        // malformed messages not logged since
}

// NewSubscription builds the Pub/Sub client for name ("projects/P/subscriptions/S"); it makes
// no call and starts no goroutine. The client honours PUBSUB_EMULATOR_HOST; otherwise it uses
// Application Default Credentials (workload identity on GKE). opts are Google API client
// options (WithClientOptions) for tests. logger and reg may be nil.
func NewSubscription(ctx context.Context, name string, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Subscription, error) {
	project, err := subscriptionProject(name)
	if err != nil {
		return nil, err
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	client, err := pubsub.NewClient(ctx, project, o.clientOpts...)
	if err != nil {
		return nil, fmt.Errorf("pub/sub client for %s: %w", name, err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Subscription{
		name: name, client: client, log: logger.With("subscription", name),
		metrics:      newSubscriptionMetrics(reg),
		receiveGuard: make(chan struct{}, 1),
	}, nil
}

// subscriptionProject checks a subscription resource name and returns its project.
func subscriptionProject(name string) (string, error) {
	parts := strings.Split(name, "/")
	if len(parts) != 4 || parts[0] != "projects" || parts[2] != "subscriptions" || parts[1] == "" || parts[3] == "" {
		return "", fmt.Errorf("%w: pubsub_subscription %q: want projects/PROJECT/subscriptions/SUBSCRIPTION", ErrConfig, name)
	}
	return parts[1], nil
}

// Name identifies the subscription in status and logs.
func (s *Subscription) Name() string { return "Pub/Sub " + s.name }

// Close releases the client; Watch must have returned.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.client.Close() })
	return s.closeErr
}

// Watch pulls messages until ctx ends and calls changed with the repository each one
// concerns ("us-central1-docker.pkg.dev/p/r/img"), then acknowledges them all: the ones no
// source lists (changed reports false) and malformed ones too, which are counted and
// logged at most once a minute. Every Pull and Acknowledge has a deadline; a failed call is
// reported (report(err)) and retried after a backoff, a successful Pull reports nil. It
// returns nil when ctx ends. One Watch runs at a time.
func (s *Subscription) Watch(ctx context.Context, changed func(repository string) bool, report func(error)) error {
	select {
	case s.receiveGuard <- struct{}{}:
		defer func() { <-s.receiveGuard }()
	default:
		return fmt.Errorf("%w %s: already receiving", ErrSubscription, s.name)
	}
	backoff := subscriptionBackoffMin
	max := int32(pullMaxMessages)
	for ctx.Err() == nil {
		msgs, err := s.pull(ctx, max)
		if err == nil {
			max = pullMaxMessages
			report(nil)
			var acks []string
			for _, m := range msgs {
				s.handle(m.GetMessage(), changed)
				acks = append(acks, m.GetAckId())
			}
			err = s.ack(ctx, acks)
			if err == nil {
				backoff = subscriptionBackoffMin
				continue
			}
		}
		if ctx.Err() != nil {
			break
		}
		if status.Code(err) == codes.ResourceExhausted {
			max = 1 // a response larger than we accept: one message at a time
		}
		report(err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, subscriptionBackoffMax)
	}
	return nil
}

// pull makes one Pull within DefaultPullTimeout. A Pull that saw no message before its deadline is
// no error.
func (s *Subscription) pull(ctx context.Context, max int32) ([]*pubsubpb.ReceivedMessage, error) {
	pctx, cancel := context.WithTimeout(ctx, DefaultPullTimeout)
	defer cancel()
	resp, err := s.client.SubscriptionAdminClient.Pull(pctx, &pubsubpb.PullRequest{Subscription: s.name, MaxMessages: max},
		gax.WithRetry(nil), gax.WithGRPCOptions(grpc.MaxCallRecvMsgSize(maxPullResponse)))
	switch {
	case err == nil:
		return resp.GetReceivedMessages(), nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case deadlineReached(pctx, err):
		return nil, nil // no message within the deadline
	}
	return nil, s.apiError("pull", err)
}

// ack acknowledges ids within DefaultAckTimeout.
func (s *Subscription) ack(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, DefaultAckTimeout)
	defer cancel()
	err := s.client.SubscriptionAdminClient.Acknowledge(actx, &pubsubpb.AcknowledgeRequest{Subscription: s.name, AckIds: ids}, gax.WithRetry(nil))
	if err == nil || ctx.Err() != nil {
		return nil // at ctx's end, unacknowledged messages are simply delivered again
	}
	return s.apiError("acknowledge", err)
}

// apiError names the call, the subscription and the gRPC code, and says what to do about the
// usual causes. It wraps ErrSubscription and the gRPC error.
func (s *Subscription) apiError(call string, err error) error {
	st, _ := status.FromError(err)
	msg := fmt.Sprintf("%s %s: %s: %s", ErrSubscription, s.name, call, st.Code())
	switch st.Code() {
	case codes.NotFound:
		msg += " (the subscription does not exist: create it on the topic gcr of the registry's project)"
	case codes.PermissionDenied:
		msg += " (the agents' service account needs roles/pubsub.subscriber on the subscription)"
	case codes.Unauthenticated:
		msg += " (no valid credentials: check workload identity / Application Default Credentials)"
	}
	if st.Message() != "" {
		msg += ": " + st.Message()
	}
	return &apiErr{msg: msg, err: err}
}

// apiErr is an API error with our message; errors.Is finds ErrSubscription, status.Code the
// gRPC code.
type apiErr struct {
	msg string
	err error
}

func (e *apiErr) Error() string   { return e.msg }
func (e *apiErr) Unwrap() []error { return []error{ErrSubscription, e.err} }

// Notification is one Artifact Registry message as published to the "gcr" topic.
type Notification struct {
	Action string `json:"action"` // INSERT or DELETE
	Digest string `json:"digest,omitempty"`
	Tag    string `json:"tag,omitempty"`
}

// ParseNotification decodes an Artifact Registry message and returns the repository it
// concerns, normalised as image.Ref.Repository does. data over MaxMessageBytes, malformed
// JSON, an unknown action, no reference, or references that do not parse are errors.
func ParseNotification(data []byte) (Notification, string, error) {
	if len(data) > MaxMessageBytes {
		return Notification{}, "", fmt.Errorf("message of %d bytes (at most %d)", len(data), MaxMessageBytes)
	}
	var n Notification
	if err := json.Unmarshal(data, &n); err != nil {
		return Notification{}, "", fmt.Errorf("not an Artifact Registry notification: %w", err)
	}
	if n.Action != "INSERT" && n.Action != "DELETE" {
		return n, "", fmt.Errorf("unknown action %q (want INSERT or DELETE)", n.Action)
	}
	repo := ""
	for _, s := range []string{n.Tag, n.Digest} {
		if s == "" {
			continue
		}
		ref, err := image.ParseRef(s)
		if err != nil {
			return n, "", fmt.Errorf("reference: %w", err)
		}
		if repo != "" && ref.Repository() != repo {
			return n, "", fmt.Errorf("tag %q and digest %q name different repositories", n.Tag, n.Digest)
		}
		repo = ref.Repository()
	}
	if repo == "" {
		return n, "", errors.New("neither tag nor digest")
	}
	return n, repo, nil
}

// handle acts on one message: changed for its repository, or counted as malformed.
func (s *Subscription) handle(m *pubsubpb.PubsubMessage, changed func(string) bool) {
	n, repo, err := ParseNotification(m.GetData())
	if err != nil {
		s.metrics.messages.WithLabelValues(s.name, "malformed").Inc()
		s.malformed(m.GetMessageId(), err)
		return
	}
	if changed(repo) {
		s.metrics.messages.WithLabelValues(s.name, "matched").Inc()
		s.log.Info("push event", "action", n.Action, "repository", repo, "tag", tagOnly(n.Tag), "digest", digestOnly(n.Digest))
		return
	}
	s.metrics.messages.WithLabelValues(s.name, "ignored").Inc()
	s.log.Debug("push event for a repository no source lists", "action", n.Action, "repository", repo)
}

// malformed logs a malformed message at most once per malformedLogEvery, with how many went
// unlogged since.
func (s *Subscription) malformed(id string, err error) {
	s.mu.Lock()
	now := time.Now()
	if !s.lastMalform.IsZero() && now.Sub(s.lastMalform) < malformedLogEvery {
		s.suppressed++
		s.mu.Unlock()
		return
	}
	suppressed := s.suppressed
	s.lastMalform, s.suppressed = now, 0
	s.mu.Unlock()
	s.log.Warn("malformed Pub/Sub message acknowledged and ignored", "message_id", id, "err", err, "suppressed", suppressed)
}

func tagOnly(ref string) string {
	_, tag := image.SplitTagRef(ref)
	return tag
}

func digestOnly(ref string) string {
	_, d, _ := image.SplitDigestRef(ref)
	return d
}

// subscriptionMetrics are shared by every Subscription of a registry.
type subscriptionMetrics struct {
	messages *prometheus.CounterVec
}

func newSubscriptionMetrics(reg prometheus.Registerer) *subscriptionMetrics {
	m := &subscriptionMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_pubsub_messages_total",
			Help: "Artifact Registry Pub/Sub messages received, by result: matched (a source lists the repository), ignored, malformed.",
		}, []string{"subscription", "result"}),
	}
	if reg != nil {
		m.messages = register(reg, m.messages)
	}
	return m
}

// register registers c, or returns the collector already registered under its name (several
// subscriptions share the metrics).
func register(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing
			}
		}
		panic(err) // a programming error: another metric of the same name
	}
	return c
}
