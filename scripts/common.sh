# Sourced by test.sh, bench.sh and demo.sh: the steps they share.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
RUN=${MS2M_RUN_DIR:-$ROOT/.run}

services_running() {
  local s
  for s in registry rabbitmq; do
    [ -f "$RUN/$s/pid" ] && kill -0 "$(cat "$RUN/$s/pid")" 2>/dev/null || return 1
  done
}

# Starts the services (exporting their addresses) and arranges for them to be stopped
# on exit — only when this run started them, so a developer's running services stay.
start_services_for_this_run() {
  MS2M_STARTED_SERVICES=0
  services_running || MS2M_STARTED_SERVICES=1
  trap 'rc=$?; [ "$MS2M_STARTED_SERVICES" -eq 1 ] && bash "$ROOT/scripts/services.sh" stop; exit $rc' EXIT
  trap 'exit 130' INT TERM
  eval "$(bash "$ROOT/scripts/services.sh" start)"
}

# The sample service runs inside runc containers with a busybox rootfs: a static binary
# (glibc + crt-static; no musl target can be installed here). With an explicit --target,
# RUSTFLAGS reach only target artifacts, never build scripts or proc-macros. The test
# harness (tests/src/e2e.rs) builds the same artifact the same way when it needs it.
build_sample_service() {
  printf '[build] static sample service\n' >&2
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q -p ms2m-sample-service \
    --target x86_64-unknown-linux-gnu
  export MS2M_SAMPLE_BIN_DIR="$ROOT/target/x86_64-unknown-linux-gnu/release"
}
