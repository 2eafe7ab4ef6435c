#!/usr/bin/env bash
# `make images REGISTRY=<registry>/<path> [TAG=<tag>] [PUSH=0]`: builds the agent and
# shim images (deploy/Dockerfile.*, multi-stage, context = the repository root minus
# .dockerignore), pushes them, and prints the `images:` stanza for a kustomize overlay.
#
# Needs a container engine that can build: docker (with a reachable daemon; BuildKit for
# the cache mounts) or podman. CONTAINER_ENGINE picks one explicitly.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[images] %s\n' "$*" >&2; }
usage() {
  printf '[images] %s\n' "$*" >&2
  cat >&2 <<'USAGE'
usage: make images REGISTRY=<registry>/<path> [TAG=<tag>] [PUSH=0] [CONTAINER_ENGINE=docker|podman]
  e.g. make images REGISTRY=registry.example.com/ms2m TAG=0.1.0
USAGE
  exit 2
}
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

REGISTRY=${REGISTRY:-}
[ -n "$REGISTRY" ] || usage "REGISTRY is not set"
REGISTRY=${REGISTRY%/}
# A registry and path, no tag or digest: the script appends /ms2m-<name>:<tag>.
if [[ $REGISTRY =~ [[:space:]@] ]] || [[ $REGISTRY == */* && ${REGISTRY##*/} == *:* ]]; then
  usage "REGISTRY must be a registry and path without tag or digest, e.g. registry.example.com/ms2m (got '$REGISTRY')"
fi
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || usage "TAG '$TAG' is not a valid image tag"
PUSH=${PUSH:-1}

# The engine: the one asked for, else the first that answers.
engine=""
why=()
for e in ${CONTAINER_ENGINE:-docker podman}; do
  if ! command -v "$e" >/dev/null 2>&1; then
    why+=("$e: not found on PATH")
    continue
  fi
  if out=$("$e" info 2>&1 >/dev/null); then
    engine=$e
    break
  fi
  why+=("$e: '$e info' failed: $(printf '%s' "$out" | grep -v '^$' | tail -n1)")
done
if [ -z "$engine" ]; then
  printf '[images] ERROR: make images needs a container engine that can build images, and none is usable here:\n' >&2
  printf '[images]   %s\n' "${why[@]}" >&2
  printf '[images] Start the docker daemon or install podman, or set CONTAINER_ENGINE.\n' >&2
  exit 1
fi
log "building with $engine"

export DOCKER_BUILDKIT=1
for name in agent shim; do
  ref="$REGISTRY/ms2m-$name:$TAG"
  log "building $ref (deploy/Dockerfile.$name)"
  "$engine" build -f "deploy/Dockerfile.$name" -t "$ref" . || die "building $ref failed"
  if [ "$PUSH" = 1 ]; then
    log "pushing $ref"
    "$engine" push "$ref" || die "pushing $ref failed (logged in to $REGISTRY?)"
  fi
done

cat <<STANZA
# For your overlay's kustomization.yaml (copy deploy/overlays/example):
images:
  - name: ms2m-agent
    newName: $REGISTRY/ms2m-agent
    newTag: "$TAG"
  - name: ms2m-shim
    newName: $REGISTRY/ms2m-shim
    newTag: "$TAG"
STANZA
