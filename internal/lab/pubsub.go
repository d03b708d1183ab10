package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// pubsubEmulatorInstallHint says how to get the Pub/Sub emulator.
const pubsubEmulatorInstallHint = "install it with `apt-get install -y google-cloud-cli-pubsub-emulator default-jre-headless` " +
	"(Google Cloud SDK apt repository) or `gcloud components install pubsub-emulator`"

// pubsubEmulatorReady bounds the emulator's start: a JVM on a busy 2-core machine.
const pubsubEmulatorReady = 60 * time.Second

// FindPubSubEmulator returns the path of the Pub/Sub emulator's own launcher
// (platform/pubsub-emulator/bin/cloud-pubsub-emulator of the Google Cloud SDK). It is started
// directly rather than through `gcloud beta emulators pubsub start`, which only wraps it in a
// Python process (about 1 s slower, and a process tree to stop instead of one JVM).
func FindPubSubEmulator() (string, error) {
	const rel = "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
	var roots []string
	if r := os.Getenv("CLOUDSDK_ROOT_DIR"); r != "" {
		roots = append(roots, r)
	}
	if g, err := exec.LookPath("gcloud"); err == nil {
		if real, err := filepath.EvalSymlinks(g); err == nil {
			roots = append(roots, filepath.Dir(filepath.Dir(real))) // SDK/bin/gcloud
		}
	}
	roots = append(roots, "/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")
	for _, r := range roots {
		p := filepath.Join(r, rel)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			if _, err := exec.LookPath("java"); err != nil {
				return "", fmt.Errorf("pub/sub emulator at %s needs java, which is not in PATH", p)
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("pub/sub emulator not found (looked for %s under %s); %s", rel, strings.Join(roots, ", "), pubsubEmulatorInstallHint)
}

// RequirePubSub skips t when the Pub/Sub emulator or java is missing, unless CI=true, in which
// case it fails t, as Require does.
func RequirePubSub(t testing.TB) {
	t.Helper()
	if _, err := FindPubSubEmulator(); err != nil {
		SkipOrFail(t, "lab: "+err.Error())
	}
}

// PubSub is the Pub/Sub emulator running as a child process on 127.0.0.1, with a client to
// create topics and subscriptions and to publish. Create it with StartPubSub or NewPubSub,
// release it with Close.
type PubSub struct {
	// Addr is "127.0.0.1:PORT", what PUBSUB_EMULATOR_HOST names.
	Addr string
	// Project is the project the client works in.
	Project string
	// Kind says what serves: the emulator or the in-process fake (StartPubSubFake).
	Kind string

	proc   *Process       // the emulator; nil for the fake
	fake   *pstest.Server // the fake; nil for the emulator
	tail   *tailBuffer
	client *pubsub.Client
	once   sync.Once
	err    error
}

// StartPubSub starts the emulator on a free loopback port and waits until it answers; out
// (may be nil) receives its log. On failure nothing is left running and the error includes
// the tail of its log.
func StartPubSub(ctx context.Context, project string, out io.Writer) (*PubSub, error) {
	bin, err := FindPubSubEmulator()
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = io.Discard
	}
	for attempt := 1; ; attempt++ {
		p, err := startPubSub(ctx, bin, project, out)
		if err == nil {
			return p, nil
		}
		if attempt == portAttempts || !strings.Contains(err.Error(), "already in use") {
			return nil, fmt.Errorf("start pub/sub emulator: %w", err)
		}
	}
}

func startPubSub(ctx context.Context, bin, project string, out io.Writer) (*PubSub, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	p := &PubSub{Addr: "127.0.0.1:" + strconv.Itoa(port), Project: project, Kind: "the Pub/Sub emulator (" + bin + ")", tail: newTail()}
	// A bounded heap: the emulator keeps everything in memory, and this machine is shared.
	env := []string{"JAVA_OPTS=-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"}
	p.proc, err = StartProcessEnv(bin, []string{"--host=127.0.0.1", "--port=" + strconv.Itoa(port)}, env, io.MultiWriter(out, p.tail))
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, pubsubEmulatorReady)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	ping := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+"/", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(b), "Ok") {
			return fmt.Errorf("GET /: %s %q", resp.Status, b)
		}
		return nil
	}
	if err := waitProcOr(rctx, p.proc, ping); err != nil {
		p.proc.Kill()
		return nil, withTail(err, p.tail)
	}
	if p.client, err = newPubSubClient(ctx, p.Addr, project); err != nil {
		p.proc.Kill()
		return nil, err
	}
	return p, nil
}

func newPubSubClient(ctx context.Context, addr, project string) (*pubsub.Client, error) {
	return pubsub.NewClient(ctx, project,
		option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
}

// StartPubSubFake serves Pub/Sub from this process with the client library's fake (pstest)
// on a loopback port, for the demo and benchmarks where the emulator is not installed. Agents
// reach it through PUBSUB_EMULATOR_HOST as they reach the emulator. Its unary Pull polls
// every 500 ms when it has no message, where the emulator and the service answer as soon as
// one arrives.
func StartPubSubFake(ctx context.Context, project string) (*PubSub, error) {
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	p := &PubSub{Addr: srv.Addr, Project: project, Kind: "the in-process Pub/Sub fake (pstest; the emulator is not installed)", fake: srv, tail: newTail()}
	var err error
	if p.client, err = newPubSubClient(ctx, p.Addr, project); err != nil {
		_ = srv.Close()
		return nil, err
	}
	return p, nil
}

// StartPubSubOrFake starts the emulator where it is installed, and the in-process fake
// otherwise; Kind says which.
func StartPubSubOrFake(ctx context.Context, project string, out io.Writer) (*PubSub, error) {
	if _, err := FindPubSubEmulator(); err != nil {
		return StartPubSubFake(ctx, project)
	}
	return StartPubSub(ctx, project, out)
}

// NewPubSub is StartPubSub for tests: it calls RequirePubSub(t), registers Close with
// t.Cleanup and fails t on error.
func NewPubSub(t testing.TB, project string) *PubSub {
	t.Helper()
	RequirePubSub(t)
	p, err := StartPubSub(context.Background(), project, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close pub/sub emulator: %v", err)
		}
	})
	return p
}

// Env is the environment entry that points a Pub/Sub client at the emulator.
func (p *PubSub) Env() string { return "PUBSUB_EMULATOR_HOST=" + p.Addr }

// CreateSubscription creates the topic (unless it exists) and a subscription to it, both
// named by their IDs in p.Project, and returns the subscription's resource name.
func (p *PubSub) CreateSubscription(ctx context.Context, topicID, subID string) (string, error) {
	topic := "projects/" + p.Project + "/topics/" + topicID
	if _, err := p.client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topic}); err != nil && status.Code(err) != codes.AlreadyExists {
		return "", fmt.Errorf("create topic %s: %w", topic, err)
	}
	sub := "projects/" + p.Project + "/subscriptions/" + subID
	if _, err := p.client.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{Name: sub, Topic: topic, AckDeadlineSeconds: 10}); err != nil {
		return "", fmt.Errorf("create subscription %s: %w", sub, err)
	}
	return sub, nil
}

// Publish publishes data on topicID and waits for the emulator to accept it.
func (p *PubSub) Publish(ctx context.Context, topicID string, data []byte) error {
	topic := "projects/" + p.Project + "/topics/" + topicID
	if _, err := p.client.TopicAdminClient.Publish(ctx, &pubsubpb.PublishRequest{Topic: topic, Messages: []*pubsubpb.PubsubMessage{{Data: data}}}); err != nil {
		return fmt.Errorf("publish to %s: %w", topic, err)
	}
	return nil
}

// PublishARPush publishes what Artifact Registry publishes on topic "gcr" for a push of
// repo@digest tagged tag: the digest's INSERT, then the tag's.
func (p *PubSub) PublishARPush(ctx context.Context, repo, digest, tag string) error {
	msgs := []string{
		fmt.Sprintf(`{"action":"INSERT","digest":"%s@%s"}`, repo, digest),
		fmt.Sprintf(`{"action":"INSERT","digest":"%s@%s","tag":"%s:%s"}`, repo, digest, repo, tag),
	}
	for _, m := range msgs {
		if err := p.Publish(ctx, "gcr", []byte(m)); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the emulator (SIGTERM, SIGKILL after stopGrace). It is idempotent.
func (p *PubSub) Close() error {
	p.once.Do(func() {
		errs := []error{p.client.Close()}
		if p.fake != nil {
			errs = append(errs, p.fake.Close())
		}
		if p.proc != nil {
			if err := p.proc.Stop(stopGrace); err != nil {
				errs = append(errs, withTail(fmt.Errorf("stop pub/sub emulator: %w", err), p.tail))
			}
		}
		p.err = errors.Join(errs...)
	})
	return p.err
}
