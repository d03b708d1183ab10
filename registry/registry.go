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
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/image"
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
	// LoadDockerConfig. Nil means anonymous. When Auth also has a Generation method (a
	// *DockerConfig has), the Lister checks it before every listing and lookup and, when it
	// changed, starts over with new transports, so rotated credentials take effect at once
	// and no token or basic auth obtained with the old ones is sent again.
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
// A Lister keeps one go-containerregistry Puller while the credentials stay the same, so the
// auth ping and the bearer token are shared by all calls; an expired token is renewed on the
// 401 it causes. Credentials are resolved from Config.Auth on the first request after the
// Puller was made: go-containerregistry caches them in its per-repository transports, which
// is why a change of Config.Auth's generation replaces the Puller.
type Lister struct {
	repo        name.Repository
	ref         string    // "registry/repo" as configured, for messages
	base        image.Ref // the pull reference base, normalised
	parallelism int
	ropts       []remote.Option
	generation  func() uint64 // the credentials' generation; nil when they never change
	counter     *countingTransport

	pmu       sync.Mutex // guards puller and pullerGen
	puller    *remote.Puller
	pullerGen uint64 // the credentials' generation puller was made for

	mu    sync.Mutex        // guards sizes
	sizes map[string]uint64 // image size by manifest digest: a digest's size never changes
}

// generationer is what a keychain whose content changes offers: see Config.Auth.
type generationer interface {
	Generation() uint64
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

	base, err := image.ParseRef(host + "/" + repoPath)
	if err != nil {
		return nil, fmt.Errorf("new registry source: repository %q in registry %q: %w", cfg.Repo, host, err)
	}
	l := &Lister{
		repo:        repo,
		ref:         host + "/" + repoPath,
		base:        base,
		sizes:       map[string]uint64{},
		parallelism: cfg.Parallelism,
		counter:     newCountingTransport(remote.DefaultTransport),
	}
	if l.parallelism == 0 {
		l.parallelism = DefaultParallelism
	}
	l.ropts = []remote.Option{remote.WithTransport(l.counter), remote.WithUserAgent("cachemachine")}
	if cfg.Auth != nil {
		l.ropts = append(l.ropts, remote.WithAuthFromKeychain(cfg.Auth))
		if g, ok := cfg.Auth.(generationer); ok {
			l.generation = g.Generation
			l.pullerGen = g.Generation()
		}
	}
	if cfg.PageSize > 0 {
		l.ropts = append(l.ropts, remote.WithPageSize(cfg.PageSize))
	}
	if l.puller, err = remote.NewPuller(l.ropts...); err != nil {
		return nil, fmt.Errorf("new registry source %s: %w", l.ref, err)
	}
	return l, nil
}

// currentPuller returns the Puller for the credentials in force, replacing the one made for
// older credentials (and with it every cached transport, token and authenticator).
func (l *Lister) currentPuller() (*remote.Puller, error) {
	var gen uint64
	if l.generation != nil {
		gen = l.generation() // outside pmu: it may read the credentials file
	}
	l.pmu.Lock()
	defer l.pmu.Unlock()
	if gen == l.pullerGen {
		return l.puller, nil
	}
	p, err := remote.NewPuller(l.ropts...)
	if err != nil {
		return nil, err
	}
	l.puller, l.pullerGen = p, gen
	return p, nil
}

// Repository returns the normalised "registry/repo", the base of the pull references
// ("registry.hub.docker.com" stays as is, as containerd keeps it; "index.docker.io" is
// "docker.io").
func (l *Lister) Repository() string { return l.base.Repository() }

// ListImages returns one image per tag of the repository, in the registry's order, named by
// its tag, following the tag list's pagination. Digests and sizes are left empty:
// ResolveDigests and Size fill in the ones needed. A repository the registry does not know is
// an ErrNotFound error, refused credentials an ErrUnauthorized error.
func (l *Lister) ListImages(ctx context.Context) ([]image.Image, error) {
	p, err := l.currentPuller()
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", l.ref, err)
	}
	tags, err := p.List(ctx, l.repo)
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", l.ref, classify(err, true))
	}
	images := make([]image.Image, len(tags))
	for i, t := range tags {
		images[i] = image.Image{Ref: l.base.WithTag(t), Name: t}
	}
	return images, nil
}

// maxSizes bounds the size cache; past it the cache starts over.
const maxSizes = 4096

// Size returns the size in bytes of the image with manifest digest digest (config plus
// compressed layers, as a pull downloads them; for a multi-platform index, its linux/amd64
// image, or else its first linux image). It reads the manifest once per digest and
// remembers the answer, so a registry that counts manifest reads (Docker Hub) sees one per
// new image, not one per refresh.
func (l *Lister) Size(ctx context.Context, digest string) (uint64, error) {
	l.mu.Lock()
	n, ok := l.sizes[digest]
	l.mu.Unlock()
	if ok {
		return n, nil
	}
	p, err := l.currentPuller()
	if err == nil {
		n, err = l.sizeOf(ctx, p, l.repo.Digest(digest), true)
	}
	if err != nil {
		return 0, fmt.Errorf("size of %s@%s: %w", l.ref, digest, classify(err, false))
	}
	l.mu.Lock()
	if len(l.sizes) >= maxSizes {
		clear(l.sizes)
	}
	l.sizes[digest] = n
	l.mu.Unlock()
	return n, nil
}

// sizeOf reads the size of the image ref names (see Size); an index is followed one level at
// most (index follows whether ref may be one), so a registry cannot make it walk a chain of
// indexes.
func (l *Lister) sizeOf(ctx context.Context, p *remote.Puller, ref name.Digest, index bool) (uint64, error) {
	desc, err := p.Get(ctx, ref)
	if err != nil {
		return 0, err
	}
	if desc.MediaType.IsIndex() {
		if !index {
			return 0, errors.New("an index of indexes")
		}
		idx, err := desc.ImageIndex()
		if err != nil {
			return 0, err
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return 0, err
		}
		var pick *v1.Descriptor
		for i := range im.Manifests {
			m := &im.Manifests[i]
			if m.Platform == nil || m.Platform.OS != "linux" {
				continue
			}
			if pick == nil || m.Platform.Architecture == "amd64" && pick.Platform.Architecture != "amd64" {
				pick = m
			}
		}
		if pick == nil {
			return 0, errors.New("index has no linux image")
		}
		return l.sizeOf(ctx, p, ref.Context().Digest(pick.Digest.String()), false)
	}
	img, err := desc.Image()
	if err != nil {
		return 0, err
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	n := m.Config.Size
	for _, layer := range m.Layers {
		n += layer.Size
	}
	return uint64(max(0, n)), nil
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

	p, err := l.currentPuller()
	if err != nil {
		return nil, fmt.Errorf("resolve digests in %s: %w", l.ref, err)
	}
	var (
		mu      sync.Mutex // guards digests
		digests = make(map[string]string, len(refs))
	)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(l.parallelism)
	for _, ref := range refs {
		g.Go(func() error {
			desc, err := p.Head(ctx, ref)
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

// maxResolverListers bounds a Resolver's Listers (one per repository); past it they start
// over.
const maxResolverListers = 4096

// Resolver looks up single references (a SimpleRepoMan's images) in whichever registry each
// names, keeping one Lister per repository so tokens and sizes are reused. It is safe for
// concurrent use.
type Resolver struct {
	auth authn.Keychain

	mu      sync.Mutex         // guards listers
	listers map[string]*Lister // by repository
}

// NewResolver returns a Resolver that authenticates with auth (nil: anonymous).
func NewResolver(auth authn.Keychain) *Resolver {
	return &Resolver{auth: auth, listers: map[string]*Lister{}}
}

// Resolve returns ref's manifest digest (a HEAD request; the reference's own digest when it
// names one) and size (best effort: 0 when the manifest cannot be read). A tag the registry
// does not have is an ErrNotFound error.
func (r *Resolver) Resolve(ctx context.Context, ref image.Ref) (image.Image, error) {
	l, err := r.lister(ref)
	if err != nil {
		return image.Image{}, err
	}
	img := image.Image{Ref: ref, Digest: ref.Digest()}
	if img.Digest == "" {
		m, err := l.ResolveDigests(ctx, []string{ref.Tag()})
		if err != nil {
			return image.Image{}, err
		}
		if img.Digest = m[ref.Tag()]; img.Digest == "" {
			return image.Image{}, fmt.Errorf("resolve digest of %s: %w", ref, ErrNotFound)
		}
	}
	if n, err := l.Size(ctx, img.Digest); err == nil {
		img.Size = n
	}
	return img, nil
}

func (r *Resolver) lister(ref image.Ref) (*Lister, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.listers[ref.Repository()]; ok {
		return l, nil
	}
	l, err := New(Config{RegistryURL: ref.Registry(), Repo: ref.Path(), Auth: r.auth, Parallelism: 1})
	if err != nil {
		return nil, err
	}
	if len(r.listers) >= maxResolverListers {
		clear(r.listers)
	}
	r.listers[ref.Repository()] = l
	return l, nil
}
