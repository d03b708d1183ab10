package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/registry"
	"github.com/cachemachine/cachemachine/rubintag"
	"github.com/cachemachine/cachemachine/sources"
)

// buildSources constructs one Source per repoman, in config order. The returned closer
// releases the API clients.
func buildSources(ctx context.Context, cfg *config.Config, logger *slog.Logger) ([]sources.Source, func(), error) {
	var keychain authn.Keychain
	if cfg.Agent.PullAuth == config.PullAuthDockerconfig {
		dc, err := registry.LoadDockerConfig(cfg.Agent.Dockerconfig)
		if err != nil {
			return nil, nil, fmt.Errorf("agent.dockerconfig: %w", err)
		}
		keychain = dc
	}
	var out []sources.Source
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	for i, r := range cfg.Repomen {
		policy := rubintag.Policy{
			RecommendedTag: r.RecommendedTag, AliasTags: r.AliasTags, Pin: r.Pin, Cycle: r.Cycle,
			NumReleases: r.NumReleases, NumWeeklies: r.NumWeeklies, NumDailies: r.NumDailies,
		}
		switch r.Type {
		case config.TypeRubinRepoGar:
			l, err := gar.New(ctx, gar.Config{
				ProjectID: r.ProjectID, Location: r.Location, Repository: r.GARRepository, Image: r.GARImage,
				Endpoint: r.Endpoint, Insecure: r.InsecureEndpoint,
			})
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("repomen[%d]: %w", i, err)
			}
			closers = append(closers, func() { l.Close() })
			out = append(out, sources.NewRubin(sources.Describe(i, r.Type, l.Repository()), l, policy))
		case config.TypeRubinRepoMan:
			l, err := registry.New(registry.Config{RegistryURL: r.RegistryURL, Repo: r.Repo, Auth: keychain})
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("repomen[%d]: %w", i, err)
			}
			out = append(out, sources.NewRubin(sources.Describe(i, r.Type, l.Repository()), l, policy))
		case config.TypeSimpleRepoMan:
			imgs := make([]sources.Image, len(r.Images))
			for j, img := range r.Images {
				imgs[j] = sources.Image{URL: img.ImageURL, Digest: img.ImageHash, Name: img.Name}
			}
			out = append(out, sources.NewSimple(sources.Describe(i, r.Type, ""), imgs, digestResolver(keychain), logger))
		}
	}
	return out, closeAll, nil
}

// digestResolver looks up the manifest digest of a reference with a HEAD request.
func digestResolver(keychain authn.Keychain) func(ctx context.Context, ref string) (string, error) {
	return func(ctx context.Context, ref string) (string, error) {
		norm, err := agent.NormalizeRef(ref)
		if err != nil {
			return "", err
		}
		name, tag := norm, "latest"
		if i := strings.LastIndexByte(norm, ':'); i > strings.LastIndexByte(norm, '/') {
			name, tag = norm[:i], norm[i+1:]
		}
		host, repo, _ := strings.Cut(name, "/")
		l, err := registry.New(registry.Config{RegistryURL: host, Repo: repo, Auth: keychain, Parallelism: 1})
		if err != nil {
			return "", err
		}
		m, err := l.ResolveDigests(ctx, []string{tag})
		if err != nil {
			return "", err
		}
		if d, ok := m[tag]; ok {
			return d, nil
		}
		return "", fmt.Errorf("resolve %s: tag not found", ref)
	}
}

// toDesired turns the sources' desired images into the agent's desired list.
func toDesired(imgs []sources.Image) []agent.DesiredImage {
	out := make([]agent.DesiredImage, len(imgs))
	for i, img := range imgs {
		out[i] = agent.DesiredImage{Ref: img.URL, Digest: img.Digest, Name: img.Name}
	}
	return out
}
