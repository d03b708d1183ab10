package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/prometheus/client_golang/prometheus"

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

// built is what buildSources makes: the sources in config order, the leader options that
// bind their triggers, and close, which releases the API clients.
type built struct {
	sources  []leader.Source
	triggers []leader.Option
	close    func()
}

// buildSources constructs one source per repoman, in config order, listing registries with
// keychain (nil: anonymous), and one Pub/Sub trigger per distinct pubsub_subscription, bound
// to the RubinRepoGar sources that name it. notify (may be nil) is the registry
// notifications endpoint: it is bound to every RubinRepoMan source.
func buildSources(ctx context.Context, cfg *config.Config, keychain authn.Keychain, notify *registry.Notifications, logger *slog.Logger, reg prometheus.Registerer) (built, error) {
	var out []leader.Source
	var closers []func()
	closeAll := func() {
		for _, c := range closers {
			c()
		}
	}
	subs := map[string][]int{} // subscription -> RubinRepoGar sources
	var subOrder []string
	// One resolver for every SimpleRepoMan source: one Lister (tokens, sizes) per repository.
	resolver := registry.NewResolver(keychain)
	var men []int // RubinRepoMan sources
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
				return built{}, fmt.Errorf("repomen[%d]: %w", i, err)
			}
			closers = append(closers, func() { l.Close() })
			out = append(out, sources.NewRubin(sources.Describe(i, r.Type, l.Repository()), l, policy))
			if s := r.PubSubSubscription; s != "" {
				if _, ok := subs[s]; !ok {
					subOrder = append(subOrder, s)
				}
				subs[s] = append(subs[s], i)
			}
		case config.TypeRubinRepoMan:
			l, err := registry.New(registry.Config{RegistryURL: r.RegistryURL, Repo: r.Repo, Auth: keychain})
			if err != nil {
				closeAll()
				return built{}, fmt.Errorf("repomen[%d]: %w", i, err)
			}
			out = append(out, sources.NewRubin(sources.Describe(i, r.Type, l.Repository()), l, policy))
			men = append(men, i)
		case config.TypeSimpleRepoMan:
			imgs := make([]image.Image, len(r.Images))
			for j, img := range r.Images {
				imgs[j] = image.Image{Ref: img.Ref, Digest: img.ImageHash, Name: img.Name}
			}
			out = append(out, sources.NewSimple(sources.Describe(i, r.Type, ""), imgs, resolver))
		}
	}
	var triggers []leader.Option
	for _, name := range subOrder {
		sub, err := gar.NewSubscription(ctx, name, logger.With("component", "pubsub"), reg)
		if err != nil {
			closeAll()
			return built{}, fmt.Errorf("repomen[%d].pubsub_subscription: %w", subs[name][0], err)
		}
		closers = append(closers, func() { sub.Close() })
		triggers = append(triggers, leader.WithTrigger(sub, subs[name]...))
	}
	if notify != nil && len(men) > 0 {
		triggers = append(triggers, leader.WithTrigger(notify, men...))
	}
	return built{sources: out, triggers: triggers, close: closeAll}, nil
}
