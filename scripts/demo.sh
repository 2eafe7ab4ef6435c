#!/usr/bin/env bash
# `make demo`: the main job on the embedded two-node default, no cluster needed.
# Sets up the machine and the services like `make test`, builds the agent, the shim,
# the static sample service and the demo runner, then runs `ms2m-demo`: two nodes
# (network namespaces), one ms2m-agent in each, the sample consumer live-migrated from
# nodeA to nodeB by `ms2m-shim migrate` under load. It prints phase timings, checkpoint
# size, transfer rate, downtime and message accounting, and ends with one JSON line.
# Everything is torn down at the end, also on failure or Ctrl-C. Idempotent.
#   scripts/demo.sh [ms2m-demo flags]   e.g. --strategy stop-and-copy, --transfer direct,
#                                       --rate 50 --delay-ms 10, --ballast-mib 512,
#                                       --consumer python (Python + pika, prefetch 50, no
#                                       dedup, 3 s reconnect), --load bursty,
#                                       --broker nats (NATS JetStream instead of RabbitMQ)
#   make demo CONSUMER=python BROKER=nats DEMO_ARGS="--load bursty"   (make takes no --flags)
set -euo pipefail
source "$(dirname "$0")/common.sh"

bash scripts/setup.sh
start_services_for_this_run
build_sample_service
printf '[build] ms2m-agent, ms2m-shim, ms2m-demo\n' >&2
cargo build -q -p ms2m-agent -p ms2m-shim -p ms2m-tests --bin ms2m-agent --bin ms2m-shim --bin ms2m-demo

# The runner removes what it made when it ends, even after a failed step. If it is
# killed instead (Ctrl-C), remove what it leaves: its agents and containers, the
# namespaces of the subnet it claimed (lock files name its PID), its lock files.
demo_pid=
cleanup_demo() {
  [ -n "$demo_pid" ] || return 0
  kill -TERM -- "-$demo_pid" 2>/dev/null || true
  sleep 1
  kill -KILL -- "-$demo_pid" 2>/dev/null || true
  local id lock k ns
  for id in $(runc list -q 2>/dev/null | grep -E "^(ms2m-e2e-src-|e2e-)${demo_pid}x" || true); do
    runc delete -f "$id" >/dev/null 2>&1 || true
  done
  for lock in /run/ms2m-test-nodes/k*; do
    [ -f "$lock" ] && [ "$(cat "$lock" 2>/dev/null)" = "$demo_pid" ] || continue
    k=${lock##*/k}
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^ms2m-k${k}-" || true); do
      ip netns delete "$ns" 2>/dev/null || true
    done
    ip addr del "10.231.${k}.254/32" dev "m2k${k}a" 2>/dev/null || true
    rm -f "$lock"
  done
  demo_pid=
}
trap 'rc=$?; cleanup_demo; [ "$MS2M_STARTED_SERVICES" -eq 1 ] && bash "$ROOT/scripts/services.sh" stop; exit $rc' EXIT

printf '[demo] migrating a live, stateful queue consumer between two nodes\n' >&2
# Own process group, so a Ctrl-C cleanup can stop the agents it started too.
set +e
setsid "$ROOT/target/debug/ms2m-demo" "$@" &
demo_pid=$!
wait "$demo_pid"
rc=$?
set -e
# It ended by itself: its own teardown ran.
demo_pid=
exit "$rc"
