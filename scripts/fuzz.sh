#!/usr/bin/env bash
# `make fuzz`: every cargo-fuzz target of image-format for a bounded time each
# (FUZZ_SECONDS, default 60), when cargo-fuzz and a toolchain that accepts `-Z` flags
# (nightly, or stable with RUSTC_BOOTSTRAP=1) are available. Without cargo-fuzz it says
# so and runs the stable harnesses instead (the same generator and containment oracle,
# bounded, as in `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-60}"

stable_harness() {
    cargo test -p ms2m-image-format --test containment --test fuzz_style
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    printf '[fuzz] cargo-fuzz is NOT installed: coverage-guided fuzzing did not run.\n' >&2
    printf '[fuzz] install it with `cargo install cargo-fuzz --locked`; running the stable harnesses instead.\n' >&2
    stable_harness
    exit 0
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    run() { (cd image-format/fuzz && cargo +nightly fuzz run "$@"); }
    printf '[fuzz] using the nightly toolchain\n' >&2
else
    run() { (cd image-format/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$@"); }
    printf '[fuzz] no nightly toolchain: stable with RUSTC_BOOTSTRAP=1\n' >&2
fi

targets=$(cd image-format/fuzz && cargo fuzz list)
for t in $targets; do
    printf '[fuzz] %s for %ss\n' "$t" "$secs" >&2
    run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
printf '[fuzz] all targets ran %ss without a finding\n' "$secs" >&2
