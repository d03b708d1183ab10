package gartest

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// AddFromRegistry lists the tags of registryAddr/registryRepo (a plain-HTTP registry such as
// "127.0.0.1:5000" and "p/r/sciplat-lab") and adds each manifest, with its tags, digest and
// size (config plus layers, or the manifest's own size for an index), to parent
// ("projects/p/locations/l/repositories/r") as image. End-to-end tests use it so that the
// fake API lists what containerd can pull under the GAR-shaped name, redirected to the local
// registry by hosts.toml. It makes one request per tag plus the listing, and blocks until
// they are done or ctx ends.
func (s *Server) AddFromRegistry(ctx context.Context, registryAddr, registryRepo, parent, image string) error {
	if !parentRE.MatchString(parent) {
		return fmt.Errorf("add from registry: malformed parent %q", parent)
	}
	repo, err := name.NewRepository(registryAddr+"/"+registryRepo, name.Insecure)
	if err != nil {
		return fmt.Errorf("add from registry: %w", err)
	}
	tags, err := remote.List(repo, remote.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("list tags of %s: %w", repo, err)
	}
	slices.Sort(tags)

	type version struct {
		tags []string
		size int64
	}
	byDigest := make(map[string]*version)
	var order []string
	for _, tag := range tags {
		ref := repo.Tag(tag)
		desc, err := remote.Get(ref, remote.WithContext(ctx))
		if err != nil {
			return fmt.Errorf("get %s: %w", ref, err)
		}
		digest := desc.Digest.String()
		v, ok := byDigest[digest]
		if !ok {
			v = &version{size: manifestSize(desc)}
			byDigest[digest] = v
			order = append(order, digest)
		}
		v.tags = append(v.tags, tag)
	}
	for _, digest := range order {
		s.Add(parent, image, digest, byDigest[digest].tags, byDigest[digest].size)
	}
	return nil
}

// manifestSize is an image's config and layer sizes, or the manifest's size when it is not
// an image manifest.
func manifestSize(desc *remote.Descriptor) int64 {
	if !desc.MediaType.IsImage() {
		return desc.Size
	}
	m, err := desc.Image()
	if err != nil {
		return desc.Size
	}
	mf, err := m.Manifest()
	if err != nil {
		return desc.Size
	}
	return sizeOf(mf)
}

func sizeOf(mf *v1.Manifest) int64 {
	n := mf.Config.Size
	for _, l := range mf.Layers {
		n += l.Size
	}
	return n
}
