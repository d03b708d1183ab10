package critest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/cri"
)

// Fixture names the images Conformance uses. References must be fully qualified, as the
// runtime reports them (registry host included, e.g. "127.0.0.1:5000/cm/img:v1").
type Fixture struct {
	// Ref is a repo:tag the registry serves.
	Ref string
	// Digest is the manifest digest of Ref (sha256:…).
	Digest string
	// OtherTag is optional: another tag of the same repository with the same digest, as a
	// full reference or a bare tag.
	OtherTag string
	// MissingRef is a tag that does not exist in the registry.
	MissingRef string
	// Auth, if set, are the credentials the registry requires; the suite then also checks
	// that a pull without them, or with a wrong password, fails with cri.ErrUnauthorized.
	Auth *cri.Auth
}

// ImageService is what Conformance checks: the image calls of cri.Client, which Runtime
// makes too.
type ImageService interface {
	Version(ctx context.Context) (cri.Version, error)
	ListImages(ctx context.Context) ([]cri.Image, error)
	ImageStatus(ctx context.Context, ref string) (*cri.Image, error)
	PullImage(ctx context.Context, ref string, auth *cri.Auth) (string, error)
	RemoveImage(ctx context.Context, ref string) error
	ImageFsInfo(ctx context.Context) ([]cri.FsUsage, error)
}

var (
	_ ImageService = (*cri.Client)(nil)
	_ ImageService = (*Runtime)(nil)
)

// Conformance runs subtests, in order, that check c against the behaviour cachemachine
// relies on, which containerd 1.6, 1.7 and 2.x share: c is a cri.Client connected to a runtime,
// or a Runtime itself. (The runtimes' messages differ: 2.x's pulls go through the transfer
// service and say "failed to resolve image" where 1.x says "failed to resolve reference", and
// 1.7 and 2.x refuse a pull without credentials before asking the registry again,
// "authorization failed: no basic auth credentials", where 1.6 reports the registry's "401
// Unauthorized"; the client maps both to cri.ErrUnauthorized.) The images of fx must be absent
// from the runtime at the start; the suite removes what it pulled, also when it fails, so the
// node is left as found.
// It blocks for as long as the pulls take; ImageFsInfo is polled for up to 30s because
// containerd refreshes used bytes in the background.
func Conformance(t *testing.T, c ImageService, fx Fixture) {
	t.Helper()
	require.NotEmpty(t, fx.Ref, "fixture Ref")
	require.NotEmpty(t, fx.Digest, "fixture Digest")
	require.NotEmpty(t, fx.MissingRef, "fixture MissingRef")
	repo := repoOf(fx.Ref)
	repoDigest := repo + "@" + fx.Digest
	other := fx.OtherTag
	if other != "" && !strings.ContainsAny(other, "/:@") {
		other = repo + ":" + other
	}

	ctx := t.Context()
	for _, ref := range []string{fx.Ref, other} {
		if ref == "" {
			continue
		}
		img, err := c.ImageStatus(ctx, ref)
		require.NoError(t, err)
		require.Nil(t, img, "conformance needs a runtime without %s", ref)
	}
	// Deferred rather than a t.Cleanup, so it runs (also after a failed subtest) while c is
	// still open: the caller's cleanups may close it.
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, ref := range []string{fx.Ref, other} {
			if ref == "" {
				continue
			}
			if err := c.RemoveImage(ctx, ref); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	}()

	var id string // of fx.Ref once pulled

	t.Run("Version", func(t *testing.T) {
		v, err := c.Version(t.Context())
		require.NoError(t, err)
		require.Equal(t, "v1", v.RuntimeAPIVersion)
		require.NotEmpty(t, v.RuntimeName)
		require.NotEmpty(t, v.RuntimeVersion)
	})

	t.Run("ImageStatusUnknown", func(t *testing.T) {
		for _, ref := range []string{fx.MissingRef, ImageID("sha256:unknown")} {
			img, err := c.ImageStatus(t.Context(), ref)
			require.NoError(t, err, ref)
			require.Nil(t, img, ref)
		}
	})

	t.Run("PullMissing", func(t *testing.T) {
		_, err := c.PullImage(t.Context(), fx.MissingRef, fx.Auth)
		require.ErrorIs(t, err, cri.ErrNotFound)
		require.Contains(t, err.Error(), fx.MissingRef)
	})

	t.Run("PullCanceled", func(t *testing.T) {
		canceled, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := c.PullImage(canceled, fx.Ref, fx.Auth)
		require.Error(t, err)
		require.True(t, errors.Is(err, context.Canceled) || errors.Is(err, cri.ErrDeadline), "%v", err)

		expired, cancel := context.WithTimeout(t.Context(), time.Nanosecond)
		defer cancel()
		<-expired.Done()
		_, err = c.PullImage(expired, fx.Ref, fx.Auth)
		require.ErrorIs(t, err, cri.ErrDeadline)

		img, err := c.ImageStatus(t.Context(), fx.Ref)
		require.NoError(t, err)
		require.Nil(t, img, "a failed pull must not leave the image")
	})

	if fx.Auth != nil {
		t.Run("PullUnauthorized", func(t *testing.T) {
			_, err := c.PullImage(t.Context(), fx.Ref, nil)
			require.ErrorIs(t, err, cri.ErrUnauthorized)

			wrong := &cri.Auth{Username: fx.Auth.Username, Password: "wrong-" + fx.Auth.Password}
			_, err = c.PullImage(t.Context(), fx.Ref, wrong)
			require.ErrorIs(t, err, cri.ErrUnauthorized)
			require.NotContains(t, err.Error(), wrong.Password)
			require.NotContains(t, err.Error(), fx.Auth.Password)
		})
	}

	t.Run("Pull", func(t *testing.T) {
		var err error
		id, err = c.PullImage(t.Context(), fx.Ref, fx.Auth)
		require.NoError(t, err)
		require.NotEmpty(t, id)
	})
	if id == "" {
		t.Fatal("pull failed; the remaining subtests need the image")
	}

	t.Run("ListImages", func(t *testing.T) {
		imgs, err := c.ListImages(t.Context())
		require.NoError(t, err)
		img := findID(imgs, id)
		require.NotNil(t, img, "image %s not listed", id)
		require.Contains(t, img.Tags, fx.Ref)
		require.Contains(t, img.Digests, repoDigest)
		require.NotZero(t, img.Size)
	})

	t.Run("ImageStatus", func(t *testing.T) {
		for _, ref := range []string{fx.Ref, id, repoDigest} {
			img, err := c.ImageStatus(t.Context(), ref)
			require.NoError(t, err, ref)
			require.NotNil(t, img, ref)
			require.Equal(t, id, img.ID, ref)
			require.Contains(t, img.Tags, fx.Ref, ref)
			require.Contains(t, img.Digests, repoDigest, ref)
			require.NotZero(t, img.Size, ref)
		}
	})

	t.Run("PullIdempotent", func(t *testing.T) {
		again, err := c.PullImage(t.Context(), fx.Ref, fx.Auth)
		require.NoError(t, err)
		require.Equal(t, id, again)
		imgs, err := c.ListImages(t.Context())
		require.NoError(t, err)
		n := 0
		for _, img := range imgs {
			if img.ID == id {
				n++
				require.Equal(t, 1, countOf(img.Tags, fx.Ref), "tags %v", img.Tags)
				require.Equal(t, 1, countOf(img.Digests, repoDigest), "digests %v", img.Digests)
			}
		}
		require.Equal(t, 1, n)
	})

	if other != "" {
		t.Run("PullOtherTag", func(t *testing.T) {
			otherID, err := c.PullImage(t.Context(), other, fx.Auth)
			require.NoError(t, err)
			require.Equal(t, id, otherID, "a second tag of one digest is the same image")
			img, err := c.ImageStatus(t.Context(), fx.Ref)
			require.NoError(t, err)
			require.NotNil(t, img)
			require.Contains(t, img.Tags, fx.Ref)
			require.Contains(t, img.Tags, other)
			require.Contains(t, img.Digests, repoDigest)
		})
	}

	t.Run("ImageFsInfo", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			fss, err := c.ImageFsInfo(t.Context())
			require.NoError(t, err)
			require.NotEmpty(t, fss)
			for _, fs := range fss {
				require.NotEmpty(t, fs.Mountpoint)
			}
			if slices.ContainsFunc(fss, func(fs cri.FsUsage) bool { return fs.UsedBytes > 0 }) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no image filesystem reports used bytes: %+v", fss)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("RemoveImage", func(t *testing.T) {
		require.NoError(t, c.RemoveImage(t.Context(), fx.Ref))
		for _, ref := range []string{fx.Ref, other, id} {
			if ref == "" {
				continue
			}
			img, err := c.ImageStatus(t.Context(), ref)
			require.NoError(t, err)
			require.Nil(t, img, "%s still present after removing %s", ref, fx.Ref)
		}
		imgs, err := c.ListImages(t.Context())
		require.NoError(t, err)
		require.Nil(t, findID(imgs, id))
		require.NoError(t, c.RemoveImage(t.Context(), fx.Ref), "removing an absent image succeeds")
	})
}

func findID(imgs []cri.Image, id string) *cri.Image {
	for i := range imgs {
		if imgs[i].ID == id {
			return &imgs[i]
		}
	}
	return nil
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
