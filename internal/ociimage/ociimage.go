// Package ociimage builds container images without a container engine: one layer of files
// (a static binary, CA certificates, passwd and group files) on an empty base, assembled with
// go-containerregistry. The result is reproducible: the same inputs give the same manifest
// digest, whatever the host's clock, umask or file timestamps, because every timestamp in the
// tar, the gzip stream and the config is fixed, entries are sorted and owned by root, and the
// gzip stream is made here at a fixed level.
//
// Agent builds the cachemachine image itself (the Go binary built with fixed flags, and the CA
// bundle from golang.org/x/crypto/x509roots/fallback, pinned in go.mod); Build assembles any
// such image (the lab's pause image too).
package ociimage

import (
	"archive/tar"
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one regular file of the image's layer. Parent directories are added by Build.
type File struct {
	// Path is absolute, slash-separated and clean: "/cachemachine".
	Path string
	// Mode holds the permission bits only (0o555 for a binary, 0o444 for data).
	Mode fs.FileMode
	Data []byte
}

// Options describe one single-layer image. The zero value of every field but Files is valid.
type Options struct {
	Files []File
	// Entrypoint, Cmd, User, Env, WorkingDir and Labels go to the image config as given.
	Entrypoint, Cmd []string
	User            string
	Env             []string
	WorkingDir      string
	Labels          map[string]string
	// Created stamps the config, its history and every tar entry. Zero means the Unix epoch,
	// so that two builds of the same inputs are equal; callers pass the commit time
	// (SOURCE_DATE_EPOCH) to make it meaningful.
	Created time.Time
	// OS and Architecture of the config. Default linux and amd64.
	OS, Architecture string
	// CreatedBy is the history entry's description. Default "cachemachine ociimage".
	CreatedBy string
}

// dirMode is the mode of every directory: no write bit, so even root without
// CAP_DAC_OVERRIDE (the DaemonSet drops every capability) cannot add files, whether or not
// the root filesystem is mounted read-only.
const dirMode = 0o555

// Build assembles an OCI image (OCI manifest and config media types) with one gzipped layer
// holding opts.Files and their parent directories. It does no I/O beyond memory.
func Build(opts Options) (v1.Image, error) {
	created := opts.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	created = created.UTC().Truncate(time.Second)
	layer, err := newLayer(opts.Files, created)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	createdBy := opts.CreatedBy
	if createdBy == "" {
		createdBy = "cachemachine ociimage"
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: created}, CreatedBy: createdBy},
	})
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS = cmp.Or(opts.OS, "linux")
	cf.Architecture = cmp.Or(opts.Architecture, "amd64")
	cf.Config = v1.Config{
		Entrypoint: slices.Clone(opts.Entrypoint),
		Cmd:        slices.Clone(opts.Cmd),
		User:       opts.User,
		Env:        slices.Clone(opts.Env),
		WorkingDir: opts.WorkingDir,
		Labels:     opts.Labels,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	return img, nil
}

// layer is a gzipped tar held in memory. go-containerregistry's own layer constructors
// compress as they go; making the gzip stream here keeps the digest independent of its
// compression choices.
type layer struct {
	gz, tar        []byte
	digest, diffID v1.Hash
}

var _ v1.Layer = (*layer)(nil)

func newLayer(files []File, mtime time.Time) (*layer, error) {
	tarData, err := tarOf(files, mtime)
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	// The gzip header's name, comment and ModTime stay empty: a zero ModTime is written as 0.
	if _, err := zw.Write(tarData); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return &layer{gz: gz.Bytes(), tar: tarData, digest: sha(gz.Bytes()), diffID: sha(tarData)}, nil
}

func sha(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// tarOf writes the files and every parent directory, sorted by path, owned by 0:0 with no
// user or group names, all stamped mtime, in PAX-free USTAR where the names allow it.
func tarOf(files []File, mtime time.Time) ([]byte, error) {
	type entry struct {
		name string
		file *File
	}
	seen := map[string]bool{}
	var entries []entry
	for i := range files {
		f := &files[i]
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("file %q: want a clean absolute path", f.Path)
		}
		if f.Mode&^fs.ModePerm != 0 {
			return nil, fmt.Errorf("file %s: mode %v: want permission bits only", f.Path, f.Mode)
		}
		name := strings.TrimPrefix(f.Path, "/")
		if seen[name] {
			return nil, fmt.Errorf("file %s: listed twice", f.Path)
		}
		seen[name] = true
		entries = append(entries, entry{name: name, file: f})
		for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
			if seen[dir+"/"] {
				break
			}
			seen[dir+"/"] = true
			entries = append(entries, entry{name: dir + "/"})
		}
	}
	for _, e := range entries {
		if e.file != nil && seen[e.name+"/"] {
			return nil, fmt.Errorf("file /%s: also a directory", e.name)
		}
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, ModTime: mtime, Format: tar.FormatUSTAR}
		if e.file == nil {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, dirMode
		} else {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, int64(e.file.Mode), int64(len(e.file.Data))
		}
		if len(e.name) > 100 {
			hdr.Format = tar.FormatPAX // long names; still deterministic
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("tar %s: %w", e.name, err)
		}
		if e.file != nil {
			if _, err := tw.Write(e.file.Data); err != nil {
				return nil, fmt.Errorf("tar %s: %w", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Digest implements v1.Layer.
func (l *layer) Digest() (v1.Hash, error) { return l.digest, nil }

// DiffID implements v1.Layer.
func (l *layer) DiffID() (v1.Hash, error) { return l.diffID, nil }

// Compressed implements v1.Layer.
func (l *layer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.gz)), nil
}

// Uncompressed implements v1.Layer.
func (l *layer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.tar)), nil
}

// Size implements v1.Layer.
func (l *layer) Size() (int64, error) { return int64(len(l.gz)), nil }

// MediaType implements v1.Layer.
func (l *layer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
