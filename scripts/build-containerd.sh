#!/usr/bin/env bash
# Builds a pinned containerd from the Go module proxy, once, into a cache outside the repository,
# and prints the binary's path. Later calls find it there and print the path at once.
#
#   scripts/build-containerd.sh v2.4.2   # module github.com/containerd/containerd/v2
#   scripts/build-containerd.sh v1.7.35  # module github.com/containerd/containerd
#
# Cache: ${CACHEMACHINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cachemachine}/containerd-VERSION/bin/containerd
# (internal/lab looks there too). The build is static (CGO_ENABLED=0, so without btrfs), uses
# the module versions containerd's own go.mod selects (checked against the checksum database),
# -trimpath and no VCS or build ID stamps, so the same Go gives the same binary. It is built
# beside its final path and renamed into place: an interrupted build leaves nothing that looks
# finished, and concurrent callers wait for each other on a lock. Quiet on success; on failure it
# prints the tail of the build log and exits 1.
set -euo pipefail

version=${1:?usage: build-containerd.sh vX.Y.Z}
case "$version" in
  v2.*) module=github.com/containerd/containerd/v2 ;;
  v1.*) module=github.com/containerd/containerd ;;
  *) echo "build-containerd: want a version like v2.4.2 or v1.7.35, got $version" >&2; exit 2 ;;
esac

cache=${CACHEMACHINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cachemachine}
dir=$cache/containerd-$version
bin=$dir/bin/containerd
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir/bin"
exec 9>"$dir/.lock"
flock 9
if [ -x "$bin" ]; then # built by the caller we waited for
  echo "$bin"
  exit 0
fi

work=$(mktemp -d "$dir/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$dir/build.log
{
  cd "$work"
  export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOWORK=off
  # A throwaway main module that requires only containerd: `go install pkg@version` refuses
  # containerd 1.7, whose go.mod has an exclude directive.
  go mod init cachemachine.local/build-containerd
  go get "$module/cmd/containerd@$version"
  go build -trimpath \
    -tags 'no_btrfs no_devmapper no_zfs no_aufs' \
    -ldflags "-s -w -buildid= -X $module/version.Version=$version" \
    -o "$work/containerd" "$module/cmd/containerd"
  "$work/containerd" --version
} >"$log" 2>&1 || {
  echo "build-containerd: building containerd $version failed; last lines of $log:" >&2
  tail -n 30 "$log" >&2
  exit 1
}
mv -f "$work/containerd" "$bin"
echo "$bin"
