#!/usr/bin/env bash
# Side-by-side relay benchmark: splitway (copy and splice engines) against
# socat, HAProxy (plain and forced splice), nginx stream and ssh -L.
# Installs what is missing, builds release, runs `splitway-bench` in a private
# network namespace (needs root), relay pinned to CPU 0, load to CPU 1.
# Writes target-bench/bench.json and target-bench/bench.md; the table also
# goes to stdout. Extra arguments go to splitway-bench (see --help), e.g.
#   scripts/bench.sh --rounds 3 --only nginx,splitway-splice --tests flow
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || {
  echo "nginx stream module missing (apt-get install libnginx-mod-stream)" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-bench}"
cargo build --release -q -p splitway -p splitway-bench
out="$CARGO_TARGET_DIR/$(rustc --print host-tuple)/release"  # [build] target in .cargo/config.toml
exec "$out/splitway-bench" \
  --splitway "$out/splitway" \
  --json "$CARGO_TARGET_DIR/bench.json" --md "$CARGO_TARGET_DIR/bench.md" "$@"
