#!/usr/bin/env bash
# Stream modules on loopback relay legs (issue 13): the zero-copy raw leg, the
# null module, compress adaptive / fixed 1 / fixed 9, dedup+compress; Gbit/s
# and CPU s/GB of both relays, side by side in one run. Builds release,
# relays pinned to CPU 0, load and sink to CPU 1. Writes
# target-bench/bench-modules.json and .md. Extra arguments go to
# bench-modules (see --help), e.g.
#   scripts/bench-modules.sh --rounds 5 --mib 512 --only raw-corpus,null-corpus
set -euo pipefail
cd "$(dirname "$0")/.."
command -v taskset >/dev/null && command -v tar >/dev/null || {
  echo "needs taskset (util-linux) and tar" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-bench}"
cargo build --release -q -p splitway -p splitway-bench --bin splitway --bin bench-modules
out="$CARGO_TARGET_DIR/$(rustc --print host-tuple)/release"  # [build] target in .cargo/config.toml
exec "$out/bench-modules" --splitway "$out/splitway" \
  --json "$CARGO_TARGET_DIR/bench-modules.json" --md "$CARGO_TARGET_DIR/bench-modules.md" "$@"
