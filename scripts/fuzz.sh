#!/bin/sh
# Bounded fuzz run of the relay-leg header decoder (wire::parse,
# wire::header_len, KeyRing::open): fuzz/fuzz_targets/header.rs, seeds in
# fuzz/corpus/header/seed-*.
#
#   scripts/fuzz.sh          # 60 s (CI)
#   FUZZ_SECS=600 scripts/fuzz.sh
#
# cargo-fuzz (0.13) with `-s none` (no sanitizer) builds and runs on the
# stable toolchain: no nightly, no RUSTC_BOOTSTRAP. Installs cargo-fuzz from
# crates.io if missing. The build goes to fuzz/target (about 7 minutes the
# first time on 2 busy cores). New inputs the run finds go to a scratch copy of the corpus, so
# the checked-in seeds stay small; a crash leaves its input in
# fuzz/artifacts/header/ and makes this script fail.
set -eu
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECS:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp corpus/header/seed-* "$scratch/"
cargo fuzz run -s none header "$scratch" corpus/header -- \
    -max_total_time="$secs" -max_len=256 -timeout=10 -print_final_stats=1
