package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ContainerdVersion names a containerd release line the lab runs. The zero value is
// Containerd16.
type ContainerdVersion string

const (
	// Containerd16 is Debian's containerd package (1.6.20), found in PATH like the other
	// binaries Require checks.
	Containerd16 ContainerdVersion = "1.6"
	// Containerd17 is containerd v1.7.35 built from the Go module proxy by
	// scripts/build-containerd.sh: the line GKE runs up to 1.32.
	Containerd17 ContainerdVersion = "1.7"
	// Containerd2 is containerd v2.4.2 built from the Go module proxy by
	// scripts/build-containerd.sh: the 2.x line GKE runs from 1.33 on.
	Containerd2 ContainerdVersion = "2.4"
)

// builtReleases are the releases scripts/install-deps.sh builds; a test checks they agree.
var builtReleases = map[ContainerdVersion]string{
	Containerd17: "v1.7.35",
	Containerd2:  "v2.4.2",
}

// ContainerdVersions lists every containerd the lab runs, oldest first. Tests that must hold on
// every runtime a node may have run one subtest per version; NewContainerd skips (fails under
// CI=true) a version whose binary is missing.
func ContainerdVersions() []ContainerdVersion {
	return []ContainerdVersion{Containerd16, Containerd17, Containerd2}
}

// OnEveryContainerd runs f as one subtest per containerd version, named "containerd-1.6",
// "containerd-1.7", "containerd-2.4". f calls t.Parallel itself when it may run beside the others,
// and starts its node with ContainerdOptions{Version: v}, which skips (fails under CI=true) a
// version that is not installed or built.
func OnEveryContainerd(t *testing.T, f func(t *testing.T, v ContainerdVersion)) {
	t.Helper()
	for _, v := range ContainerdVersions() {
		t.Run("containerd-"+v.String(), func(t *testing.T) { f(t, v) })
	}
}

// String returns the release line, e.g. "2.4"; Debian's is "1.6" (also for the zero value).
func (v ContainerdVersion) String() string {
	if v == "" {
		return string(Containerd16)
	}
	return string(v)
}

// Release is the pinned release built from source ("v2.4.2"), or "" for Debian's package.
func (v ContainerdVersion) Release() string { return builtReleases[v] }

// Binary returns the path of the containerd binary for v: Debian's from PATH, or a built one
// from the cache (BuiltContainerdPath). It errors, saying how to get it, when it is missing.
func (v ContainerdVersion) Binary() (string, error) {
	switch v {
	case "", Containerd16:
		return lookPath("containerd")
	}
	rel := v.Release()
	if rel == "" {
		return "", fmt.Errorf("containerd %q: unknown version; want one of %v", string(v), ContainerdVersions())
	}
	p, err := BuiltContainerdPath(rel)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("containerd %s not built: %s is missing; build it with `scripts/build-containerd.sh %s` (make deps builds it)", rel, p, rel)
	}
	return p, nil
}

// CacheDir is where the lab keeps what it builds (containerd releases, the Kubernetes lab's
// binaries), outside any checkout so that every worktree and run reuses it:
// $CACHEMACHINE_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/cachemachine.
func CacheDir() (string, error) {
	if d := os.Getenv("CACHEMACHINE_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("lab cache: %w", err)
	}
	return filepath.Join(d, "cachemachine"), nil
}

// BuiltContainerdPath is where scripts/build-containerd.sh puts containerd release rel (e.g.
// "v2.4.2"): CacheDir()/containerd-REL/bin/containerd.
func BuiltContainerdPath(rel string) (string, error) {
	dir, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "containerd-"+rel, "bin", "containerd"), nil
}

// RequireContainerd is Require plus the binary of containerd v: it skips t when one is missing,
// and fails t instead under CI=true, where make test has built every version.
func RequireContainerd(t testing.TB, v ContainerdVersion) {
	t.Helper()
	Require(t)
	if _, err := v.Binary(); err != nil {
		SkipOrFail(t, "lab: "+err.Error())
	}
}

// versionCache holds what binaryVersion found, by binary path, with the file's size and
// modification time then: a test binary starts many containerds of a few binaries.
var versionCache sync.Map // path → cachedVersion

type cachedVersion struct {
	size    int64
	modTime time.Time
	version string
	major   int
}

// binaryVersion returns the version containerd binary bin reports ("1.6.20~ds1", "v2.4.2")
// and its major number: it runs `bin --version` once per binary, again when the file
// changed.
func binaryVersion(ctx context.Context, bin string) (version string, major int, err error) {
	fi, statErr := os.Stat(bin)
	if statErr == nil {
		if v, ok := versionCache.Load(bin); ok {
			if c := v.(cachedVersion); c.size == fi.Size() && c.modTime.Equal(fi.ModTime()) {
				return c.version, c.major, nil
			}
		}
	}
	version, major, err = runVersion(ctx, bin)
	if err == nil && statErr == nil {
		versionCache.Store(bin, cachedVersion{size: fi.Size(), modTime: fi.ModTime(), version: version, major: major})
	}
	return version, major, err
}

// runVersion runs `bin --version` and parses what it prints.
func runVersion(ctx context.Context, bin string) (version string, major int, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", 0, fmt.Errorf("%s --version: %w", bin, err)
	}
	// "containerd github.com/containerd/containerd/v2 v2.4.2 <revision>"
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return "", 0, fmt.Errorf("%s --version: unexpected output %q", bin, out)
	}
	version = fields[2]
	if _, err := fmt.Sscanf(strings.TrimPrefix(version, "v"), "%d.", &major); err != nil {
		return "", 0, fmt.Errorf("%s --version: no major version in %q", bin, out)
	}
	return version, major, nil
}
