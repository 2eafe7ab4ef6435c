#!/usr/bin/env bash
# The README's test command (`make test`): set up the machine, start the services the
# suite needs, run the whole suite, and stop what this run started — also when tests
# fail. Idempotent: a second run reinstalls nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { printf '[test] %s\n' "$*" >&2; }

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup.sh

RUN=${MS2M_RUN_DIR:-$ROOT/.run}
started=0
if ! { [ -f "$RUN/registry/pid" ] && kill -0 "$(cat "$RUN/registry/pid")" 2>/dev/null \
    && [ -f "$RUN/rabbitmq/pid" ] && kill -0 "$(cat "$RUN/rabbitmq/pid")" 2>/dev/null; }; then
  started=1
fi
cleanup() {
  local rc=$?
  if [ "$started" -eq 1 ]; then bash scripts/services.sh stop || true; fi
  exit $rc
}
trap cleanup EXIT INT TERM
eval "$(bash scripts/services.sh start)"

# The sample service runs inside runc containers with a busybox rootfs: build it as a
# static binary (glibc, crt-static; no musl target can be installed here) in its own
# target dir so the flag doesn't reach the workspace's proc-macros.
if [ -f tests/sample-service/Cargo.toml ] && grep -q '\[\[bin\]\]' tests/sample-service/Cargo.toml; then
  log "building the static sample service"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p ms2m-sample-service \
    --target x86_64-unknown-linux-gnu --target-dir target/static
  export MS2M_SAMPLE_BIN_DIR="$ROOT/target/static/x86_64-unknown-linux-gnu/release"
fi

log "cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"
