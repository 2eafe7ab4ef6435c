#!/usr/bin/env bash
# The README's test command (`make test`): set up the machine, start the services the
# suite needs, run the whole suite, and stop what this run started — also when tests
# fail. Idempotent: a second run reinstalls nothing. Extra args go to `cargo test`.
set -euo pipefail
source "$(dirname "$0")/common.sh"

bash scripts/setup.sh
start_services_for_this_run
printf '[test] cargo test --workspace\n' >&2
cargo test --workspace --no-fail-fast "$@"
