#!/usr/bin/env bash
# Installs the real components the tests and the demo run (containerd, runc, docker-registry,
# and kubectl for the manifest checks)
# when they are missing. Quiet and idempotent: does nothing when all are present.
set -euo pipefail

missing=()
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
# kubectl renders the manifests in make manifests-check (and make test); Debian ships it as
# kubernetes-client when the machine has none.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
