package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"debug/elf"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func digestOf(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	require.NoError(t, err)
	return d.String()
}

func TestBuildIsReproducible(t *testing.T) {
	t.Parallel()
	files := []File{
		{Path: "/bin/app", Mode: 0o555, Data: []byte("binary")},
		{Path: "/etc/app/config", Mode: 0o444, Data: []byte("x: 1\n")},
	}
	opts := Options{Files: files, Entrypoint: []string{"/bin/app"}, User: "0:0", Created: time.Unix(1700000000, 0)}
	a, err := Build(opts)
	require.NoError(t, err)
	require.NoError(t, validate.Image(a))

	// Input order, time zone and sub-second parts of Created do not matter.
	opts2 := opts
	opts2.Files = []File{files[1], files[0]}
	opts2.Created = time.Unix(1700000000, 999).In(time.FixedZone("x", 3600))
	b, err := Build(opts2)
	require.NoError(t, err)
	assert.Equal(t, digestOf(t, a), digestOf(t, b), "same inputs, same digest")

	for _, tt := range []struct {
		name   string
		mutate func(*Options)
	}{
		{"created", func(o *Options) { o.Created = time.Unix(1700000001, 0) }},
		{"content", func(o *Options) {
			o.Files = []File{files[0], {Path: "/etc/app/config", Mode: 0o444, Data: []byte("x: 2\n")}}
		}},
		{"mode", func(o *Options) {
			o.Files = []File{files[0], {Path: "/etc/app/config", Mode: 0o440, Data: files[1].Data}}
		}},
		{"entrypoint", func(o *Options) { o.Entrypoint = []string{"/bin/other"} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := opts
			tt.mutate(&o)
			c, err := Build(o)
			require.NoError(t, err)
			assert.NotEqual(t, digestOf(t, a), digestOf(t, c))
		})
	}
}

func TestBuildRejectsBadFiles(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		files []File
	}{
		{"relative", []File{{Path: "bin/app", Mode: 0o555}}},
		{"unclean", []File{{Path: "/bin/../app", Mode: 0o555}}},
		{"twice", []File{{Path: "/a", Mode: 0o444}, {Path: "/a", Mode: 0o444}}},
		{"file and dir", []File{{Path: "/a", Mode: 0o444}, {Path: "/a/b", Mode: 0o444}}},
		{"setuid", []File{{Path: "/a", Mode: 0o4555 | os.ModeSetuid}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Build(Options{Files: tt.files})
			assert.Error(t, err)
		})
	}
}

// entry is one tar entry of the layer.
type entry struct {
	hdr  *tar.Header
	data []byte
}

func layerEntries(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	layers, err := img.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	out := map[string]entry{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		out["/"+strings.TrimSuffix(hdr.Name, "/")] = entry{hdr: hdr, data: data}
	}
}

// TestAgentImage builds the agent image twice from this checkout (the second go build is
// cached) and checks what `make image` promises: the same digest for the same commit, a
// static binary, CA certificates, nothing writable, the Dockerfile's entrypoint and user.
func TestAgentImage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the agent binary")
	}
	opts := AgentOptions{Dir: "../..", Version: "v0.0.0-test", Created: time.Unix(1700000000, 0), Arch: "amd64"}
	img, err := Agent(t.Context(), opts)
	require.NoError(t, err)
	require.NoError(t, validate.Image(img))
	again, err := Agent(t.Context(), opts)
	require.NoError(t, err)
	require.Equal(t, digestOf(t, img), digestOf(t, again), "two builds of the same commit give the same digest")

	mt, err := img.MediaType()
	require.NoError(t, err)
	assert.Equal(t, types.OCIManifestSchema1, mt)

	cf, err := img.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, "linux", cf.OS)
	assert.Equal(t, "amd64", cf.Architecture)
	assert.Equal(t, "v0.0.0-test", cf.Config.Labels["org.opencontainers.image.version"])
	assert.Equal(t, time.Unix(1700000000, 0).UTC(), cf.Created.UTC())
	assert.Contains(t, cf.Config.Env, "SSL_CERT_FILE="+CABundlePath)

	// The Dockerfile, kept for people with Docker, builds the same contract.
	df, err := os.ReadFile("../../Dockerfile")
	require.NoError(t, err)
	assert.Equal(t, dockerfileExec(t, df, "ENTRYPOINT"), cf.Config.Entrypoint, "ENTRYPOINT")
	assert.Equal(t, dockerfileExec(t, df, "CMD"), cf.Config.Cmd, "CMD")
	assert.Equal(t, dockerfileWord(t, df, "USER"), cf.Config.User, "USER")

	entries := layerEntries(t, img)
	for name, e := range entries {
		assert.Zero(t, e.hdr.Uid, "%s uid", name)
		assert.Zero(t, e.hdr.Gid, "%s gid", name)
		assert.Zero(t, e.hdr.Mode&0o222, "%s is writable (mode %o)", name, e.hdr.Mode)
		assert.Zero(t, e.hdr.Mode&0o7000, "%s has setuid, setgid or sticky bits", name)
		assert.Equal(t, time.Unix(1700000000, 0).UTC(), e.hdr.ModTime.UTC(), "%s mtime", name)
	}

	bin, ok := entries["/cachemachine"]
	require.True(t, ok, "/cachemachine in the layer")
	assert.EqualValues(t, 0o555, bin.hdr.Mode)
	ef, err := elf.NewFile(bytes.NewReader(bin.data))
	require.NoError(t, err)
	for _, p := range ef.Progs {
		assert.NotEqual(t, elf.PT_INTERP, p.Type, "the binary is static (no dynamic loader)")
	}
	assert.Nil(t, ef.Section(".symtab"), "the binary is stripped (-s -w), as the Dockerfile builds it")

	ca, ok := entries[CABundlePath]
	require.True(t, ok, "%s in the layer", CABundlePath)
	n := 0
	for rest := ca.data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		_, err := x509.ParseCertificate(block.Bytes)
		require.NoError(t, err)
		n++
	}
	assert.Greater(t, n, 100, "CA certificates")

	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		e, ok := entries[f]
		if assert.True(t, ok, f) {
			assert.True(t, strings.HasPrefix(string(e.data), "root:x:0:"), f)
		}
	}
}

// dockerfileExec returns the last exec-form (JSON) instance of instr.
func dockerfileExec(t *testing.T, df []byte, instr string) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^`+instr+`\s+(\[.*\])\s*$`).FindAllSubmatch(df, -1)
	require.NotEmpty(t, m, "Dockerfile has no %s in exec form", instr)
	var out []string
	require.NoError(t, json.Unmarshal(m[len(m)-1][1], &out))
	return out
}

// dockerfileWord returns the argument of the last instance of instr.
func dockerfileWord(t *testing.T, df []byte, instr string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^`+instr+`\s+(\S+)\s*$`).FindAllSubmatch(df, -1)
	require.NotEmpty(t, m, "Dockerfile has no %s", instr)
	return string(m[len(m)-1][1])
}
