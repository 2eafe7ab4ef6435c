#!/usr/bin/env bash
# Installs everything the ms2m test suite, demo and benchmarks need on a Debian 12
# machine of the project's kind, as root. Idempotent: a second run checks and returns
# in about a second. Fails loudly, naming the prerequisite, when something cannot be had.
#
# What and why (see docs/environment.md for the long form):
#  - Debian packages: runc, iptables (CRIU locks the network with iptables-restore),
#    iproute2 (netns "nodes"), docker-registry, rabbitmq-server, nats-server (JetStream,
#    the second broker), buildah/skopeo/umoci
#    (interop checks and baselines; skopeo also imports checkpoints into containers-storage),
#    containerd (ctr: checkpoint import into containerd, against a private containerd
#    the tests start), busybox-static (test container rootfs), pigz/zstd (benchmark
#    baselines), systemd (systemd-analyze verify), curl, kubectl (kubernetes-client, when
#    none is installed: the deploy/ tests build every kustomize variant with it),
#    prometheus and python3-prometheus-client (promtool lints the agent's /metrics in the text
#    format, the Python client's strict parser reads the OpenMetrics one; the
#    server itself is never started).
#  - pika (pinned, hash-checked) from PyPI into $CACHE_DIR/pika-<version> with Debian's
#    python3 and pip (`pip install --target`): the Python reference consumer
#    (tests/consumers/pika_consumer.py) runs on the host's /usr/bin/python3, bind-mounted
#    read-only into its container, with this directory copied into the rootfs.
#  - CRIU >= 4.2: bookworm's 3.17 fails on kernels >= 6.13 and 4.1 cannot dump TCP on
#    >= 6.16, so we build the newest >= 4.2 source that Debian sid offers, verify its
#    checksum against the signed Sources index, and cache the binary outside the tree.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, needs CRIU/runc privileges)"

CACHE_DIR=${MS2M_CACHE_DIR:-/var/cache/ms2m}
CRIU_MIN=4.2
CRIU_BIN=/usr/local/sbin/criu
export DEBIAN_FRONTEND=noninteractive

PKGS=(runc iptables iproute2 docker-registry rabbitmq-server nats-server buildah skopeo umoci containerd
      busybox-static pigz zstd curl ca-certificates openssl systemd procps psmisc
      jq libseccomp-dev pkg-config apache2-utils prometheus python3-prometheus-client
      python3 python3-pip)
CRIU_BUILD_DEPS=(libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
      python3-protobuf libnl-3-dev libnet1-dev libcap-dev pkg-config libbsd-dev
      libgnutls28-dev libnftables-dev uuid-dev libaio-dev build-essential xz-utils)

missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

apt_updated=0
apt_install() {
  local want
  want=$(missing_pkgs "$@")
  [ -z "$want" ] && return 0
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed (no route to Debian's package registry?)"
    apt_updated=1
  fi
  # shellcheck disable=SC2086
  log "installing: $(echo $want)"
  # rabbitmq-server's postinst tries to start it via invoke-rc.d; there is no init here,
  # and we start our own private broker anyway.
  # shellcheck disable=SC2086
  RUNLEVEL=1 apt-get install -y -qq --no-install-recommends $want >/dev/null \
    || die "apt-get install failed for: $(echo $want)"
  for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || die "package $p did not install"
  done
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

criu_version() {
  "$1" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1
}

criu_ok() {
  local bin=$1 v
  [ -x "$bin" ] || return 1
  v=$(criu_version "$bin")
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" && "$bin" check >/dev/null 2>&1
}

debian_uri() {
  # The URI the machine already uses for Debian (never hard-code a host).
  local u
  u=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
      | tr ' ' '\n' | grep -v security | head -n1)
  if [ -z "$u" ] && [ -f /etc/apt/sources.list ]; then
    u=$(awk '$1=="deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  [ -n "$u" ] || die "cannot find the Debian mirror URI in /etc/apt (needed to fetch CRIU source)"
  echo "$u"
}

build_criu() {
  apt_install "${CRIU_BUILD_DEPS[@]}"
  local work="$CACHE_DIR/criu-src" uri lists
  rm -rf "$work"; mkdir -p "$work/lists/partial"
  uri=$(debian_uri)
  echo "deb-src $uri sid main" > "$work/sources.list"
  local aptopts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
                 -o "Dir::State::Lists=$work/lists" -o Debug::NoLocking=1)
  log "fetching the sid Sources index for criu"
  apt-get "${aptopts[@]}" update -qq || die "could not read Debian sid Sources (CRIU >= $CRIU_MIN source)"
  local ver
  ver=$(apt-cache "${aptopts[@]}" showsrc criu 2>/dev/null | sed -n 's/^Version: *//p' | sort -V | tail -n1)
  [ -n "$ver" ] || die "Debian sid offers no criu source package"
  local upstream=${ver#*:}; upstream=${upstream%-*}
  version_ge "$upstream" "$CRIU_MIN" || die "Debian sid's criu $ver is older than $CRIU_MIN"
  log "downloading criu $ver source"
  # apt may exit non-zero when the debian tarball is missing; the orig tarball is what we need.
  (cd "$work" && apt-get "${aptopts[@]}" source --download-only "criu=$ver" >/dev/null 2>&1) || true
  local tarball
  tarball=$(ls "$work"/criu_"$upstream".orig.tar.* 2>/dev/null | head -n1)
  [ -n "$tarball" ] || die "criu_$upstream.orig tarball did not download"
  # Verify against the checksum in the (signature-checked) Sources index.
  local want got name
  name=$(basename "$tarball")
  want=$(apt-cache "${aptopts[@]}" showsrc criu 2>/dev/null \
         | awk '/^Checksums-Sha256:/{f=1;next} /^[^ ]/{f=0} f && $3=="'"$name"'" {print $1; exit}')
  got=$(sha256sum "$tarball" | cut -d' ' -f1)
  [ -n "$want" ] && [ "$want" = "$got" ] || die "checksum mismatch for $name (index: ${want:-none}, file: $got)"
  log "building criu $upstream (make -j$(nproc) criu)"
  tar -C "$work" -xf "$tarball"
  local src
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name "criu-[0-9]*" | head -n1)
  make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; die "CRIU build failed (log: $work/build.log)"; }
  mkdir -p "$CACHE_DIR/criu-$upstream"
  install -m 0755 "$src/criu/criu" "$CACHE_DIR/criu-$upstream/criu"
  ln -sfn "criu-$upstream" "$CACHE_DIR/criu-current"
  rm -rf "$work"
}

ensure_criu() {
  if criu_ok "$CRIU_BIN"; then return 0; fi
  if command -v criu >/dev/null && criu_ok "$(command -v criu)"; then
    ln -sf "$(command -v criu)" "$CRIU_BIN"; return 0
  fi
  if ! criu_ok "$CACHE_DIR/criu-current/criu"; then
    apt_install iptables iproute2  # criu check needs them present
    build_criu
  fi
  criu_ok "$CACHE_DIR/criu-current/criu" || die "CRIU >= $CRIU_MIN built but 'criu check' fails on this kernel"
  install -m 0755 "$CACHE_DIR/criu-current/criu" "$CRIU_BIN"
  log "criu $(criu_version "$CRIU_BIN") installed at $CRIU_BIN"
}

# The Python reference consumer's client library: one pinned wheel, checked against its
# hash, installed without dependencies (pika has none) into a cached --target dir.
PIKA_VERSION=1.3.2
PIKA_SHA256=0779a7c1fafd805672796085560d290213a465e4f6f76a6fb19e378d8041a14f
ensure_pika() {
  local dir="$CACHE_DIR/pika-$PIKA_VERSION" req
  [ -f "$dir/pika/__init__.py" ] && return 0
  log "installing pika $PIKA_VERSION from PyPI into $dir"
  req=$(mktemp)
  echo "pika==$PIKA_VERSION --hash=sha256:$PIKA_SHA256" >"$req"
  rm -rf "$dir.tmp"
  /usr/bin/python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
      --require-hashes --only-binary=:all: --target "$dir.tmp" -r "$req" \
    || { rm -f "$req"; die "pip could not install pika==$PIKA_VERSION from PyPI"; }
  rm -f "$req"
  [ -f "$dir.tmp/pika/__init__.py" ] || die "pika did not install into $dir.tmp"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

# kubectl builds deploy/'s kustomize variants in the tests. They use kustomize
# *components*, which kubectl's built-in kustomize knows from kubectl 1.21 on, so the
# check is that capability, not a version. Debian's kubernetes-client is installed when
# there is no kubectl; bookworm's is 1.20.2 ("json: unknown field components"), so there
# the message says where a newer one comes from.
kustomize_components_ok() {
  local d rc
  d=$(mktemp -d)
  mkdir -p "$d/c"
  printf 'apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\ncommonAnnotations: {probe: "1"}\n' >"$d/c/kustomization.yaml"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n' >"$d/cm.yaml"
  printf 'resources: [cm.yaml]\ncomponents: [c]\n' >"$d/kustomization.yaml"
  kubectl kustomize "$d" >/dev/null 2>&1 && rc=0 || rc=1
  rm -rf "$d"
  return $rc
}

ensure_kubectl() {
  command -v kubectl >/dev/null || apt_install kubernetes-client
  command -v kubectl >/dev/null || die "kubectl not found after installing kubernetes-client"
  kustomize_components_ok || die "$(kubectl version --client 2>/dev/null | head -n1) cannot build kustomize components (deploy/overlays use them; Debian bookworm's kubernetes-client is 1.20): install kubectl >= 1.21 (https://kubernetes.io/docs/tasks/tools/) first on PATH"
}

ensure_rust() {
  command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] \
    || die "cargo not found: this machine kind ships a Rust toolchain; install rustup's stable toolchain"
}

main() {
  mkdir -p "$CACHE_DIR"
  apt_install "${PKGS[@]}"
  ensure_criu
  ensure_pika
  ensure_kubectl
  ensure_rust
  log "ok: $(runc --version | head -n1), criu $(criu_version "$CRIU_BIN"), $(docker-registry --version 2>/dev/null | head -n1), kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p')"
}

main "$@"
