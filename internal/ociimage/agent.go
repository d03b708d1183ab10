package ociimage

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// The agent image's contract, the same as the Dockerfile's (a test holds them together) and
// the DaemonSet's command and args.
var (
	// AgentEntrypoint is the image's ENTRYPOINT.
	AgentEntrypoint = []string{"/cachemachine"}
	// AgentCmd is the image's CMD.
	AgentCmd = []string{"agent", "--config", "/etc/cachemachine/config.yaml"}
)

const (
	// AgentUser is the image's USER: root, because the containerd socket is root's (the
	// Dockerfile says why); the DaemonSet drops every capability.
	AgentUser = "0:0"
	// CABundlePath is where the image holds the CA certificates (Debian's and distroless's
	// path, which Go's crypto/x509 reads).
	CABundlePath = "/etc/ssl/certs/ca-certificates.crt"
)

// AgentOptions configure Agent. The zero value builds the module in the current directory.
type AgentOptions struct {
	// Dir is a directory of the cachemachine module (default: the current directory).
	Dir string
	// Version is the binary's main.version and the image's version label. Default "dev".
	Version string
	// Revision, when set, is the image's org.opencontainers.image.revision label.
	Revision string
	// Created stamps the image (see Options.Created): the commit time, for builds that
	// differ only by when they ran to be equal.
	Created time.Time
	// Arch is GOARCH and the image's architecture. Default runtime.GOARCH.
	Arch string
	// Go is the go command. Default "go".
	Go string
}

// Agent builds the cachemachine binary (static, -trimpath, no VCS stamp, stripped: the
// Dockerfile's flags) and assembles the agent's image: the binary at /cachemachine, the CA
// bundle, /etc/passwd and /etc/group, every file and directory read-only, the Dockerfile's
// ENTRYPOINT, CMD and USER. The same commit, Version and Created give the same digest.
func Agent(ctx context.Context, opts AgentOptions) (v1.Image, error) {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	if opts.Go == "" {
		opts.Go = "go"
	}
	bin, err := buildAgentBinary(ctx, opts)
	if err != nil {
		return nil, err
	}
	labels := map[string]string{
		"org.opencontainers.image.title":   "cachemachine",
		"org.opencontainers.image.source":  "https://github.com/cachemachine/cachemachine",
		"org.opencontainers.image.version": opts.Version,
	}
	if opts.Revision != "" {
		labels["org.opencontainers.image.revision"] = opts.Revision
	}
	return Build(Options{
		Files: []File{
			{Path: "/cachemachine", Mode: 0o555, Data: bin},
			{Path: CABundlePath, Mode: 0o444, Data: CABundle()},
			{Path: "/etc/passwd", Mode: 0o444, Data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")},
			{Path: "/etc/group", Mode: 0o444, Data: []byte("root:x:0:\nnobody:x:65534:\n")},
			{Path: "/etc/nsswitch.conf", Mode: 0o444, Data: []byte("hosts: files dns\n")},
		},
		Entrypoint: AgentEntrypoint,
		Cmd:        AgentCmd,
		User:       AgentUser,
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=" + CABundlePath,
		},
		WorkingDir:   "/",
		Labels:       labels,
		Created:      opts.Created,
		OS:           "linux",
		Architecture: opts.Arch,
		CreatedBy:    "cachemachine mkimage " + opts.Version,
	})
}

// buildAgentBinary runs go build into a temp dir and returns the binary's bytes.
func buildAgentBinary(ctx context.Context, opts AgentOptions) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "cmimage")
	if err != nil {
		return nil, fmt.Errorf("build agent binary: %w", err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "cachemachine")
	cmd := exec.CommandContext(ctx, opts.Go, "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X main.version="+opts.Version, "-o", out, "./cmd/cachemachine")
	cmd.Dir = opts.Dir
	// GOFLAGS from the caller's environment (-race, -cover, -mod) would change the binary.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+opts.Arch, "GOFLAGS=", "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("build agent binary: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("build agent binary: %w", err)
	}
	return data, nil
}

// CABundle returns the Mozilla (NSS) roots that golang.org/x/crypto/x509roots/fallback
// carries, as PEM: pinned by go.mod, so the bundle, unlike a copy of the build host's, is
// the same on every machine. Roots with a constraint (a distrust date) are left out: PEM
// cannot carry the constraint, and trusting them without it would trust more than the
// bundle means to.
func CABundle() []byte {
	var b bytes.Buffer
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}) // a bytes.Buffer does not fail
	}
	return b.Bytes()
}
