package main

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"

	"github.com/cachemachine/cachemachine/internal/lab"
)

const (
	// registryRepo is where the images live in the local registry: containerd fetches
	// us-central1-docker.pkg.dev/rubin/sciplat/sciplat-lab from this path through the
	// hosts.toml redirect.
	registryRepo = "rubin/sciplat/sciplat-lab"
	// garHost, garParent and garImage name the same images in the (fake) Artifact Registry.
	garHost   = "us-central1-docker.pkg.dev"
	garParent = "projects/rubin/locations/us-central1/repositories/sciplat"
	garImage  = "sciplat-lab"
	// pushParallel bounds concurrent pushes: each one generates and hashes its layers on
	// the fly, which is CPU-bound on a 2-core machine.
	pushParallel = 3
)

// catalog is a small sciplat-lab: one entry per image, with the tags that share its digest.
// The agents' policy (1 release, 2 weeklies, 2 dailies, recommended) selects part of it.
var catalog = [][]string{
	{"r27_0_0"},
	{"r26_0_1"},
	{"w_2024_10", "recommended"},
	{"w_2024_09"},
	{"w_2024_08"},
	{"d_2024_03_05"},
	{"d_2024_03_04"},
	{"d_2024_03_03"},
	{"exp_w_2024_10_hack"},
}

// seed pushes every catalog image (random content, 2 or 3 layers, 80–120% of size bytes) to
// the registry at addr and returns how many tags it pushed.
func seed(ctx context.Context, addr string, size int64) (int, error) {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(pushParallel)
	tags := 0
	for i, imageTags := range catalog {
		tags += len(imageTags)
		imgSize := size * int64(4+i%3) / 5
		layers := 2 + i%2
		g.Go(func() error {
			_, err := lab.PushRandomImage(ctx, addr, registryRepo, imageTags, imgSize, layers, nil)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, fmt.Errorf("seed registry: %w", err)
	}
	return tags, nil
}
