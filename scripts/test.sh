#!/usr/bin/env bash
# The test command: install dependencies, then run every test (unit,
# property, and integration tests in network namespaces; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# `splitway/fleet`: fleet mode (off in the default build) and its etcd tests.
cargo test --workspace --all-targets --features splitway/fleet "$@"
