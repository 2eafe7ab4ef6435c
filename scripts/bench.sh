#!/usr/bin/env bash
# `make bench`: every benchmark in benches/, each comparing ms2m with the tools users
# use today in the same run and printing ratios. Sets up the machine and the services
# like the test command does, and stops what it started.
#   MS2M_BENCH_SIZE_MB          synthetic checkpoint size (default 1024)
#   scripts/bench.sh NAME...    only these bench targets (e.g. encoder transfer)
set -euo pipefail
source "$(dirname "$0")/common.sh"

bash scripts/setup.sh
start_services_for_this_run
build_sample_service
if [ $# -gt 0 ]; then
  for b in "$@"; do cargo bench -p ms2m-benches --bench "$b"; done
else
  cargo bench -p ms2m-benches
fi
