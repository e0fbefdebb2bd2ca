#!/usr/bin/env bash
# The test command: install dependencies, then run every test (unit,
# property, and integration tests in network namespaces; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Flood and many-flow tests hold hundreds of sockets at once: lift the soft
# open-file limit to the hard one (shells often start at 1 024).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# `splitway/fleet`: fleet mode (off in the default build) and its etcd tests.
cargo test --workspace --all-targets --features splitway/fleet "$@"
# The fuzz targets live outside the workspace (cargo-fuzz's layout), so the
# line above never compiles them: check that they still build (≈ 40 s).
cargo check --manifest-path fuzz/Cargo.toml --bins
