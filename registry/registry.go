// Package registry lists the tags of one repository in an OCI distribution registry (Docker Hub,
// GHCR, a docker-registry) and resolves tags to manifest digests: the image source behind the
// RubinRepoMan repoman. It speaks the registry protocol through go-containerregistry, which does
// the auth ping, the Basic or Bearer token exchange, retries and tag-list pagination.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/rubintag"
)

// DefaultParallelism is how many digest lookups ResolveDigests keeps in flight when
// Config.Parallelism is zero.
const DefaultParallelism = 8

// Sentinel errors, matched with errors.Is. The wrapped registry error stays in the chain
// (errors.As with *transport.Error gives the HTTP status).
var (
	// ErrUnauthorized means the registry refused the credentials, or demanded some (401 or 403).
	ErrUnauthorized = errors.New("registry refused access")
	// ErrNotFound means the registry does not know the repository (404 on the tag list).
	ErrNotFound = errors.New("repository not found")
)

// Config describes one repository in one registry.
type Config struct {
	// RegistryURL is the registry host, with an optional port: "registry.hub.docker.com",
	// "ghcr.io", "127.0.0.1:5000". A leading "https://" is accepted and dropped; "http://" is
	// dropped and implies Insecure.
	RegistryURL string
	// Repo is the repository path inside the registry, e.g. "lsstsqre/sciplat-lab".
	Repo string
	// Insecure speaks plain HTTP to the registry. It is implied for loopback hosts (localhost,
	// 127.0.0.0/8, ::1).
	Insecure bool
	// Auth supplies credentials per registry host, typically a *DockerConfig from
	// LoadDockerConfig. Nil means anonymous.
	Auth authn.Keychain
	// Parallelism bounds the digest lookups ResolveDigests keeps in flight. Zero means
	// DefaultParallelism.
	Parallelism int
	// PageSize is the number of tags asked for per tag-list page (the "n" parameter). Zero
	// means go-containerregistry's default (1000, the most ECR accepts).
	PageSize int
}

// Lister lists tags and resolves digests for one repository. It is safe for concurrent use.
//
// A Lister keeps one go-containerregistry Puller for its lifetime, so the auth ping and the
// bearer token are shared by all calls; an expired token is renewed on the 401 it causes.
// Credentials are resolved from Config.Auth on the first request.
type Lister struct {
	repo        name.Repository
	ref         string // "registry/repo" as configured, the pull reference base
	parallelism int
	puller      *remote.Puller
	counter     *countingTransport
}

// New validates cfg and returns a Lister. It makes no request.
func New(cfg Config) (*Lister, error) {
	host, insecure := cfg.RegistryURL, cfg.Insecure
	if h, ok := strings.CutPrefix(host, "https://"); ok {
		host = h
	} else if h, ok := strings.CutPrefix(host, "http://"); ok {
		host, insecure = h, true
	}
	host = strings.TrimSuffix(host, "/")
	repoPath := strings.Trim(cfg.Repo, "/")
	switch {
	case host == "":
		return nil, errors.New("new registry source: registry URL is empty")
	case repoPath == "":
		return nil, fmt.Errorf("new registry source %s: repository is empty", host)
	case cfg.Parallelism < 0:
		return nil, fmt.Errorf("new registry source %s/%s: parallelism %d: must be >= 0", host, repoPath, cfg.Parallelism)
	case cfg.PageSize < 0:
		return nil, fmt.Errorf("new registry source %s/%s: page size %d: must be >= 0", host, repoPath, cfg.PageSize)
	}
	if isLoopback(host) {
		insecure = true
	}
	opts := []name.Option{name.StrictValidation}
	if insecure {
		opts = append(opts, name.Insecure)
	}
	if _, err := name.NewRegistry(host, opts...); err != nil {
		return nil, fmt.Errorf("new registry source: registry %q: %w", cfg.RegistryURL, err)
	}
	repo, err := name.NewRepository(host+"/"+repoPath, opts...)
	if err != nil {
		return nil, fmt.Errorf("new registry source: repository %q in registry %q: %w", cfg.Repo, host, err)
	}

	l := &Lister{
		repo:        repo,
		ref:         host + "/" + repoPath,
		parallelism: cfg.Parallelism,
		counter:     newCountingTransport(remote.DefaultTransport),
	}
	if l.parallelism == 0 {
		l.parallelism = DefaultParallelism
	}
	ropts := []remote.Option{remote.WithTransport(l.counter), remote.WithUserAgent("cachemachine")}
	if cfg.Auth != nil {
		ropts = append(ropts, remote.WithAuthFromKeychain(cfg.Auth))
	}
	if cfg.PageSize > 0 {
		ropts = append(ropts, remote.WithPageSize(cfg.PageSize))
	}
	if l.puller, err = remote.NewPuller(ropts...); err != nil {
		return nil, fmt.Errorf("new registry source %s: %w", l.ref, err)
	}
	return l, nil
}

// Repository returns "registry/repo" as configured (not normalised: "registry.hub.docker.com"
// stays as is), the base of the pull references "Repository():tag".
func (l *Lister) Repository() string { return l.ref }

// ListTags returns every tag of the repository in the registry's order, following the tag
// list's pagination. Digests are left empty: ResolveDigests fills in the ones needed. A
// repository the registry does not know is an ErrNotFound error, refused credentials an
// ErrUnauthorized error.
func (l *Lister) ListTags(ctx context.Context) ([]rubintag.Image, error) {
	tags, err := l.puller.List(ctx, l.repo)
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", l.ref, classify(err, true))
	}
	images := make([]rubintag.Image, len(tags))
	for i, t := range tags {
		images[i] = rubintag.Image{Tag: t}
	}
	return images, nil
}

// ResolveDigests returns the manifest digest of each tag, looked up with HEAD requests (which
// Docker Hub does not count against its pull rate limit), at most Config.Parallelism at a time.
// A tag that no longer exists (404) is left out of the map. Any other failure cancels the
// remaining lookups and returns an error naming the registry, repository and tag.
//
// For a multi-platform image the digest is the index's (manifest list's), not a platform
// manifest's: the HEAD accepts every manifest media type, as containerd's resolver does, and
// containerd's CRI records the digest of the descriptor it resolved the tag to in the image's
// repo_digests. Both sides therefore match by the same digest.
func (l *Lister) ResolveDigests(ctx context.Context, tags []string) (map[string]string, error) {
	refs := make([]name.Tag, 0, len(tags))
	seen := make(map[string]bool, len(tags))
	for _, t := range tags {
		if seen[t] {
			continue
		}
		seen[t] = true
		// Parse only to validate; l.repo.Tag keeps the repository's Insecure option.
		if _, err := name.NewTag(l.repo.String()+":"+t, name.StrictValidation); err != nil {
			return nil, fmt.Errorf("resolve digest of %s:%s: invalid tag: %w", l.ref, t, err)
		}
		refs = append(refs, l.repo.Tag(t))
	}

	var (
		mu      sync.Mutex // guards digests
		digests = make(map[string]string, len(refs))
	)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(l.parallelism)
	for _, ref := range refs {
		g.Go(func() error {
			desc, err := l.puller.Head(ctx, ref)
			if err != nil {
				if statusCode(err) == http.StatusNotFound {
					return nil
				}
				return fmt.Errorf("resolve digest of %s:%s: %w", l.ref, ref.TagStr(), classify(err, false))
			}
			mu.Lock()
			digests[ref.TagStr()] = desc.Digest.String()
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return digests, nil
}

// Calls returns the number of HTTP requests this Lister has sent, including the auth ping, token
// requests and retries. For a plain-HTTP registry go-containerregistry's ping also tries HTTPS
// first; that attempt counts too.
func (l *Lister) Calls() int { return int(l.counter.total.Load()) }

// classify adds the package sentinel matching a registry error's HTTP status. notFound says
// whether a 404 means an unknown repository (true for the tag list).
func classify(err error, notFound bool) error {
	switch code := statusCode(err); {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	case code == http.StatusNotFound && notFound:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// statusCode returns the HTTP status of a registry error, or 0.
func statusCode(err error) int {
	var terr *transport.Error
	if errors.As(err, &terr) {
		return terr.StatusCode
	}
	return 0
}

// isLoopback reports whether host ("name" or "name:port") is localhost or a loopback IP.
func isLoopback(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
