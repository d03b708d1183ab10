// Command mkimage builds the cachemachine agent's OCI image without a container engine
// (`make image`): to an OCI image layout directory, to a registry, or both. The image is
// reproducible: the same commit, version and source date give the same digest.
//
//	go run ./internal/mkimage -version v1.2.3 -source-date-epoch 1700000000 -oci-layout bin/image
//	go run ./internal/mkimage -push us-central1-docker.pkg.dev/PROJECT/cachemachine/cachemachine:v1.2.3
//
// -push uses the Docker credentials of the machine (~/.docker/config.json and its helpers).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/cachemachine/cachemachine/internal/ociimage"
)

func main() {
	version := flag.String("version", "dev", "the binary's version (main.version) and the image's version label")
	revision := flag.String("revision", "", "the commit, for the org.opencontainers.image.revision label")
	epoch := flag.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "the image's creation time in Unix seconds (the commit time); default $SOURCE_DATE_EPOCH, else 0")
	ociLayout := flag.String("oci-layout", "", "write the image to this OCI image layout directory (replaced if it holds one)")
	push := flag.String("push", "", "push the image to this reference (REGISTRY/REPO:TAG)")
	insecure := flag.Bool("insecure", false, "with -push: the registry speaks plain HTTP")
	arch := flag.String("arch", "", "GOARCH and image architecture (default: this machine's)")
	flag.Parse()
	if flag.NArg() > 0 || *ociLayout == "" && *push == "" {
		fmt.Fprintln(os.Stderr, "mkimage: want -oci-layout DIR and/or -push REF, and no arguments")
		flag.Usage()
		os.Exit(2)
	}
	created := time.Unix(0, 0)
	if *epoch != "" {
		sec, err := strconv.ParseInt(*epoch, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mkimage: -source-date-epoch %q: want Unix seconds\n", *epoch)
			os.Exit(2)
		}
		created = time.Unix(sec, 0)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, ociimage.AgentOptions{Version: *version, Revision: *revision, Created: created, Arch: *arch}, *ociLayout, *push, *insecure); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts ociimage.AgentOptions, ociLayout, push string, insecure bool) error {
	img, err := ociimage.Agent(ctx, opts)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	if ociLayout != "" {
		if err := writeLayout(ociLayout, img, opts.Version); err != nil {
			return err
		}
		fmt.Printf("%s@%s\n", ociLayout, digest)
	}
	if push != "" {
		var nopts []name.Option
		if insecure {
			nopts = append(nopts, name.Insecure)
		}
		ref, err := name.ParseReference(push, nopts...)
		if err != nil {
			return fmt.Errorf("-push %s: %w", push, err)
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		fmt.Printf("%s@%s\n", ref.Context(), digest)
	}
	return nil
}

// writeLayout writes a fresh layout at dir holding only img, tagged version. An existing dir
// is replaced only when it is empty or an OCI layout, so a typo cannot delete a tree.
func writeLayout(dir string, img v1.Image, version string) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
			return fmt.Errorf("-oci-layout %s: exists and is not an OCI image layout; not replacing it", dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("-oci-layout %s: %w", dir, err)
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": version,
	}))
}
