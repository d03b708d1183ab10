#!/usr/bin/env bash
# Installs the real components the tests and the demo run (containerd, runc, docker-registry,
# chromium for the status page's browser test, and for the lab Kubernetes node the CNI
# plugins, iptables, conntrack and ip) when they are missing, and builds the pinned containerd
# releases the lab runs beside Debian's 1.6 (scripts/build-containerd.sh, cached outside the
# repository). Quiet and idempotent: does nothing when all are present.
# kubectl is not installed: the manifest checks use the one `make k8s-lab` builds (the lab
# cluster's version), since Debian's kubernetes-client (1.20) cannot render the overlays.
set -euo pipefail

# The containerd releases built from the Go module proxy; internal/lab pins the same ones
# (lab.Containerd17, lab.Containerd2; a lab test checks that they agree).
# 1.7: GKE nodes up to 1.32; 2.x: GKE 1.33 and later.
CONTAINERD_BUILDS=(v1.7.35 v2.4.2)

missing=()
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
# Headless Chromium renders the status page in status's browser test (and a screenshot).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The lab Kubernetes node (internal/k8slab): pod networking and kube-proxy.
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
command -v conntrack >/dev/null 2>&1 || [ -x /usr/sbin/conntrack ] || missing+=(conntrack)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Pub/Sub emulator (Google Cloud SDK) and java run the freshness end-to-end test; they are
# not in Debian, so this script cannot install them: only warn (under CI=true that test fails).
emulator=""
for root in ${CLOUDSDK_ROOT_DIR:-} \
  "$(dirname "$(dirname "$(readlink -f "$(command -v gcloud 2>/dev/null || echo /nonexistent/bin/gcloud)")")")" \
  /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk; do
  if [ -f "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]; then
    emulator="$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    break
  fi
done
if [ -z "$emulator" ] || ! command -v java >/dev/null 2>&1; then
  what=$([ -z "$emulator" ] && echo "the Pub/Sub emulator" || true)
  command -v java >/dev/null 2>&1 || what="${what:+$what and }java"
  echo "install-deps: warning: $what missing: the Pub/Sub freshness e2e test skips (fails under CI=true); install google-cloud-cli-pubsub-emulator (Google Cloud SDK apt repository) and a JRE (default-jre-headless)" >&2
fi

cache=${CACHEMACHINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cachemachine}
for v in "${CONTAINERD_BUILDS[@]}"; do
  if [ ! -x "$cache/containerd-$v/bin/containerd" ]; then
    echo "install-deps: building containerd $v into $cache (once, 1-3 minutes)" >&2
    "$(dirname "$0")/build-containerd.sh" "$v" >/dev/null
  fi
done
