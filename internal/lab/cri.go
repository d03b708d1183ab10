package lab

import (
	"context"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// TagDigests lists the images of the runtime behind c and returns, for every "repo:tag" it
// holds, the manifest digest it records for that repository: the tests' and benchmarks' own
// view of a node, independent of the agent's.
func TagDigests(ctx context.Context, c *cri.Client) (map[string]string, error) {
	imgs, err := c.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, img := range imgs {
		for _, tag := range img.Tags {
			repo, _ := image.SplitTagRef(tag)
			for _, d := range img.Digests {
				if r, digest, ok := image.SplitDigestRef(d); ok && r == repo {
					out[tag] = digest
				}
			}
		}
	}
	return out, nil
}
