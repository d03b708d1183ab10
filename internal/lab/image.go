package lab

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Basic is a username and password for HTTP Basic auth to a registry.
type Basic struct {
	Username, Password string
}

// PushRandomImage pushes a random linux/amd64 image of about size bytes in `layers` layers to
// addr/repo (plain HTTP) under every tag (remote.Write for the first, remote.Tag for the others;
// by digest only when tags is empty) and returns the manifest digest "sha256:…". auth nil means
// anonymous.
//
// Layer contents are random, hence incompressible: a layer's blob is about size/layers bytes.
// Layers are generated on the fly from a seed (stored gzip blocks), so memory use does not grow
// with size and a 1 GB image pushes at loopback speed.
func PushRandomImage(ctx context.Context, addr, repo string, tags []string, size int64, layers int, auth *Basic) (string, error) {
	if layers < 1 || size < 0 {
		return "", fmt.Errorf("push random image: want size >= 0 and layers >= 1, got %d and %d", size, layers)
	}
	repoRef, err := name.NewRepository(addr+"/"+repo, name.Insecure)
	if err != nil {
		return "", fmt.Errorf("push random image: %w", err)
	}
	img, err := randomImage(size, layers)
	if err != nil {
		return "", fmt.Errorf("push random image: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("push random image: %w", err)
	}
	opts := remoteOptions(ctx, auth)
	var ref name.Reference = repoRef.Digest(digest.String())
	if len(tags) > 0 {
		ref = repoRef.Tag(tags[0])
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	for _, tag := range tags[min(1, len(tags)):] {
		if err := remote.Tag(repoRef.Tag(tag), img, opts...); err != nil {
			return "", fmt.Errorf("tag %s:%s: %w", repoRef, tag, err)
		}
	}
	return digest.String(), nil
}

// Tag adds tag to the manifest digest in addr/repo (plain HTTP), moving the tag if it exists.
// auth nil means anonymous.
func Tag(ctx context.Context, addr, repo, digest, tag string, auth *Basic) error {
	src, err := name.NewDigest(addr+"/"+repo+"@"+digest, name.Insecure)
	if err != nil {
		return fmt.Errorf("tag %s: %w", tag, err)
	}
	dst := src.Context().Tag(tag)
	opts := remoteOptions(ctx, auth)
	desc, err := remote.Get(src, opts...)
	if err != nil {
		return fmt.Errorf("tag %s: get %s: %w", dst, src, err)
	}
	if err := remote.Tag(dst, desc, opts...); err != nil {
		return fmt.Errorf("tag %s: %w", dst, err)
	}
	return nil
}

// remoteOptions carries ctx and the credentials to go-containerregistry.
func remoteOptions(ctx context.Context, auth *Basic) []remote.Option {
	a := authn.Anonymous
	if auth != nil {
		a = authn.FromConfig(authn.AuthConfig{Username: auth.Username, Password: auth.Password})
	}
	return []remote.Option{remote.WithContext(ctx), remote.WithAuth(a)}
}

// randomImage builds a linux/amd64 image of `layers` random layers totalling size bytes.
func randomImage(size int64, layers int) (v1.Image, error) {
	adds := make([]mutate.Addendum, 0, layers)
	for i := range layers {
		n := size / int64(layers)
		if int64(i) < size%int64(layers) {
			n++
		}
		l, err := newRandomLayer(n)
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: "lab.PushRandomImage"}})
	}
	img, err := mutate.Append(empty.Image, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = "amd64"
	return mutate.ConfigFile(img, cf)
}

// randomLayer is a gzipped tar holding one file of size random bytes. Its content is derived
// from seed, so Compressed and Uncompressed regenerate identical streams on every call instead of
// keeping them in memory (go-containerregistry's random.Image holds every layer in memory and
// gzips it twice at the default level, which takes tens of seconds for 1 GB).
type randomLayer struct {
	seed           [32]byte
	size           int64
	digest, diffID v1.Hash
	compressedSize int64
}

var _ v1.Layer = (*randomLayer)(nil)

// newRandomLayer returns a layer of size random bytes with a fresh seed.
func newRandomLayer(size int64) (*randomLayer, error) {
	var seed [32]byte
	_, _ = rand.Read(seed[:]) // never fails since Go 1.24
	return newSeededLayer(seed, size)
}

// newSeededLayer hashes the layer derived from seed once.
func newSeededLayer(seed [32]byte, size int64) (*randomLayer, error) {
	l := &randomLayer{seed: seed, size: size}
	diffHash := sha256.New()
	compHash := sha256.New()
	n, err := io.Copy(compHash, newGzipReader(io.TeeReader(l.tarStream(), diffHash)))
	if err != nil {
		return nil, err
	}
	l.compressedSize = n
	l.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(compHash.Sum(nil))}
	l.diffID = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(diffHash.Sum(nil))}
	return l, nil
}

// Digest implements v1.Layer.
func (l *randomLayer) Digest() (v1.Hash, error) { return l.digest, nil }

// DiffID implements v1.Layer.
func (l *randomLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }

// Compressed implements v1.Layer.
func (l *randomLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(newGzipReader(l.tarStream())), nil
}

// Uncompressed implements v1.Layer.
func (l *randomLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(l.tarStream()), nil
}

// Size implements v1.Layer.
func (l *randomLayer) Size() (int64, error) { return l.compressedSize, nil }

// MediaType implements v1.Layer.
func (l *randomLayer) MediaType() (types.MediaType, error) { return types.DockerLayer, nil }

// tarStream returns the layer's tar: one header block, the random file, padding to a 512-byte
// block and the two zero blocks that end an archive.
func (l *randomLayer) tarStream() io.Reader {
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	// WriteHeader writes the header block straight through; Close is not called because it would
	// complain that the file body was not written through tw.
	_ = tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     "random-" + hex.EncodeToString(l.seed[:8]),
		Mode:     0o644,
		Size:     l.size,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatUSTAR,
	})
	pad := (512 - l.size%512) % 512
	return io.MultiReader(&hdr, io.LimitReader(mrand.NewChaCha8(l.seed), l.size), bytes.NewReader(make([]byte, pad+2*512)))
}

// gzipReader gzips src as it is read, without a goroutine. It uses stored (uncompressed) deflate
// blocks: the data is random, so compressing would only cost CPU.
type gzipReader struct {
	src   io.Reader
	zw    *gzip.Writer
	out   bytes.Buffer // compressed bytes not yet read
	chunk []byte
	done  bool
	err   error
}

func newGzipReader(src io.Reader) *gzipReader {
	g := &gzipReader{src: src, chunk: make([]byte, 64<<10)}
	g.zw, _ = gzip.NewWriterLevel(&g.out, gzip.NoCompression) // the level is valid
	return g
}

// Read implements io.Reader.
func (g *gzipReader) Read(p []byte) (int, error) {
	for g.out.Len() == 0 && !g.done {
		n, err := g.src.Read(g.chunk)
		if n > 0 {
			_, _ = g.zw.Write(g.chunk[:n]) // writes to a bytes.Buffer cannot fail
		}
		switch {
		case errors.Is(err, io.EOF):
			_ = g.zw.Close()
			g.done = true
		case err != nil:
			g.done, g.err = true, err
		}
	}
	if g.out.Len() > 0 {
		return g.out.Read(p)
	}
	if g.err != nil {
		return 0, g.err
	}
	return 0, io.EOF
}
