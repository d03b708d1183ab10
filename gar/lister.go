// Package gar is Google Artifact Registry as an image source (the RubinRepoGar repoman) and the
// Google access token that containerd needs to pull from Artifact Registry and Container
// Registry hosts. It returns image.Image and its own value types; no protobuf or gRPC type
// leaves it.
package gar

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	artifactregistry "cloud.google.com/go/artifactregistry/apiv1"
	"cloud.google.com/go/artifactregistry/apiv1/artifactregistrypb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/image"
)

// PageSize is the page size every ListDockerImages call asks for: the API's maximum
// (ListDockerImagesRequest.page_size: "Maximum page size is 1,000"), so a listing takes as
// few calls as possible.
const PageSize = 1000

// MaxAttempts is how many times one ListDockerImages call is tried when it fails with
// Unavailable, Internal or ResourceExhausted.
const MaxAttempts = 3

// defaultRetryDelay is the first pause between attempts; it doubles, with full jitter.
const defaultRetryDelay = 200 * time.Millisecond

// Config names one image in one Artifact Registry repository (the RubinRepoGar repoman's
// project_id, location, gar_repository, gar_image, endpoint and insecure_endpoint).
type Config struct {
	// ProjectID is the Google Cloud project that holds the repository. A domain-scoped
	// project ("example.com:proj") is accepted.
	ProjectID string
	// Location is the repository's region or multi-region, e.g. "us-central1" or "us".
	Location string
	// Repository is the Artifact Registry repository name, e.g. "sciplat".
	Repository string
	// Image is the image's path inside the repository, e.g. "sciplat-lab" (it may contain
	// slashes). Only images whose path equals it exactly are listed.
	Image string
	// Endpoint overrides the API endpoint (host:port); "" is artifactregistry.googleapis.com.
	Endpoint string
	// Insecure talks plaintext gRPC to Endpoint without credentials: for emulators and
	// tests only.
	Insecure bool
}

// Option changes how New builds a Lister.
type Option func(*options)

type options struct {
	clientOpts []option.ClientOption
	retryDelay time.Duration
}

// WithClientOptions appends Google API client options (credentials, user agent, …) after the
// ones New derives from the Config, so they win.
func WithClientOptions(opts ...option.ClientOption) Option {
	return func(o *options) { o.clientOpts = append(o.clientOpts, opts...) }
}

// WithRetryDelay sets the first pause before a retry (default 200ms); later pauses double,
// with full jitter. Tests use a small value.
func WithRetryDelay(d time.Duration) Option {
	return func(o *options) { o.retryDelay = d }
}

// Lister lists the tags of one Artifact Registry image. Its methods are safe for concurrent
// use; each listing is independent.
type Lister struct {
	cfg        Config
	parent     string
	repository image.Ref // the pull reference base, tag "latest"
	client     *artifactregistry.Client
	retryDelay time.Duration
	calls      atomic.Int64 // RPCs sent, retries included
}

// New validates cfg and builds the API client. It starts no goroutine and makes no API call,
// but without Insecure it looks up Application Default Credentials (workload identity on GKE)
// and fails if there are none. ctx bounds only that set-up.
func New(ctx context.Context, cfg Config, opts ...Option) (*Lister, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	repo, err := image.ParseRef(cfg.repository())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	o := options{retryDelay: defaultRetryDelay}
	for _, opt := range opts {
		opt(&o)
	}
	l := &Lister{
		cfg:        cfg,
		parent:     cfg.parent(),
		repository: repo,
		retryDelay: o.retryDelay,
	}

	var copts []option.ClientOption
	count := grpc.WithChainUnaryInterceptor(l.countCall)
	if cfg.Insecure {
		conn, err := grpc.NewClient(cfg.Endpoint,
			grpc.WithTransportCredentials(insecure.NewCredentials()), count)
		if err != nil {
			return nil, fmt.Errorf("artifact registry client for %s: %w", l.parent, err)
		}
		// The client owns conn from here: its Close closes it.
		copts = append(copts, option.WithGRPCConn(conn), option.WithoutAuthentication())
	} else {
		copts = append(copts, option.WithGRPCDialOption(count))
		if cfg.Endpoint != "" {
			copts = append(copts, option.WithEndpoint(cfg.Endpoint))
		}
	}
	client, err := artifactregistry.NewClient(ctx, append(copts, o.clientOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("artifact registry client for %s: %w", l.parent, err)
	}
	l.client = client
	return l, nil
}

func (c Config) validate() error {
	for _, f := range []struct{ name, value string }{
		{"project_id", c.ProjectID},
		{"location", c.Location},
		{"gar_repository", c.Repository},
	} {
		if f.value == "" {
			return fmt.Errorf("%w: %s is empty", ErrConfig, f.name)
		}
		if strings.ContainsAny(f.value, "/@ ") {
			return fmt.Errorf("%w: %s %q contains '/', '@' or a space", ErrConfig, f.name, f.value)
		}
	}
	if c.Image == "" || strings.HasPrefix(c.Image, "/") || strings.HasSuffix(c.Image, "/") ||
		strings.ContainsAny(c.Image, "@: ") {
		return fmt.Errorf("%w: gar_image %q is not an image path", ErrConfig, c.Image)
	}
	if c.Insecure && c.Endpoint == "" {
		return fmt.Errorf("%w: insecure_endpoint needs an endpoint", ErrConfig)
	}
	return nil
}

// parent is the repository's resource name, what ListDockerImages takes.
func (c Config) parent() string {
	return "projects/" + c.ProjectID + "/locations/" + c.Location + "/repositories/" + c.Repository
}

// projectPath is the project as it appears in Docker references: a domain-scoped project
// "example.com:proj" becomes "example.com/proj".
func (c Config) projectPath() string { return strings.ReplaceAll(c.ProjectID, ":", "/") }

// repository is the pull reference base.
func (c Config) repository() string {
	return c.Location + "-docker.pkg.dev/" + c.projectPath() + "/" + c.Repository + "/" + c.Image
}

// Repository returns the pull reference base of the listed tags,
// "{location}-docker.pkg.dev/{project}/{repository}/{image}"; append ":"+tag to pull one.
func (l *Lister) Repository() string { return l.repository.Repository() }

// Parent returns the repository's resource name, "projects/{p}/locations/{l}/repositories/{r}".
func (l *Lister) Parent() string { return l.parent }

// Calls returns how many ListDockerImages RPCs the Lister has sent, retries included.
func (l *Lister) Calls() int { return int(l.calls.Load()) }

// Close releases the client's connections. The Lister must not be used afterwards.
func (l *Lister) Close() error { return l.client.Close() }

func (l *Lister) countCall(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	l.calls.Add(1)
	return invoker(ctx, method, req, reply, cc, opts...)
}

// ListImages returns one image per tag of the configured image, in listing order, named by
// its tag and with the manifest digest and size Artifact Registry reports, reading every page
// of the repository's listing (ceil(images/1000) calls). It blocks until the listing is
// complete, ctx ends, or a call fails after its retries; errors wrap one of the package's
// sentinels or ctx's error and name the repository.
func (l *Lister) ListImages(ctx context.Context) ([]image.Image, error) {
	req := &artifactregistrypb.ListDockerImagesRequest{Parent: l.parent, PageSize: PageSize}
	retry := gax.WithRetry(func() gax.Retryer {
		return &retryer{backoff: gax.Backoff{Initial: l.retryDelay, Max: 30 * l.retryDelay, Multiplier: 2}}
	})
	it := l.client.ListDockerImages(ctx, req, retry)
	var out []image.Image
	for {
		di, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, l.apiError(ctx, err)
		}
		digest, ok := l.match(di.GetUri())
		if !ok {
			continue
		}
		for _, tag := range di.GetTags() {
			out = append(out, image.Image{Ref: l.repository.WithTag(tag), Digest: digest, Name: tag, Size: uint64(max(0, di.GetImageSizeBytes()))})
		}
	}
	return out, nil
}

// match reports whether uri ("{host}/{project path}/{repository}/{image path}@{digest}") is
// the configured image and returns its digest. The image path must equal Config.Image
// exactly: "x/sciplat-lab" is another image than "sciplat-lab", and listing its tags under
// Repository() would pull the wrong image. The project is not compared (the listing is of
// one repository already, and the URI may spell the project by ID where the config used the
// number); only its number of components, for domain-scoped projects, matters.
func (l *Lister) match(uri string) (digest string, ok bool) {
	path, digest, found := strings.Cut(uri, "@")
	if !found || digest == "" {
		return "", false
	}
	parts := strings.Split(path, "/")
	skip := 2 + strings.Count(l.cfg.ProjectID, ":") // host, project path
	if len(parts) <= skip+1 || parts[skip] != l.cfg.Repository {
		return "", false
	}
	return digest, strings.Join(parts[skip+1:], "/") == l.cfg.Image
}

// retryer allows MaxAttempts attempts of one call on transient codes.
type retryer struct {
	backoff  gax.Backoff
	attempts int
}

func (r *retryer) Retry(err error) (time.Duration, bool) {
	r.attempts++
	if r.attempts >= MaxAttempts {
		return 0, false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.ResourceExhausted:
		return r.backoff.Pause(), true
	}
	return 0, false
}
