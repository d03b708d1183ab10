package main

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/cachemachine/cachemachine/config"
	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/leader"
	"github.com/cachemachine/cachemachine/registry"
	"github.com/cachemachine/cachemachine/rubintag"
	"github.com/cachemachine/cachemachine/sources"
)

// keychain is the credentials for listing registries: the dockerconfig the pulls use, or nil
// (anonymous).
func (f files) keychain() authn.Keychain {
	if f.dockerconfig == nil {
		return nil // not a typed nil in the interface
	}
	return f.dockerconfig
}

// buildSources constructs one source per repoman, in config order, listing registries with
// keychain (nil: anonymous). The returned closer releases the API clients.
func buildSources(ctx context.Context, cfg *config.Config, keychain authn.Keychain) ([]leader.Source, func(), error) {
	var out []leader.Source
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
			imgs := make([]image.Image, len(r.Images))
			for j, img := range r.Images {
				imgs[j] = image.Image{Ref: img.Ref, Digest: img.ImageHash, Name: img.Name}
			}
			out = append(out, sources.NewSimple(sources.Describe(i, r.Type, ""), imgs, registry.NewResolver(keychain)))
		}
	}
	return out, closeAll, nil
}
