#!/usr/bin/env bash
# The main job: install dependencies, build splitway, run the lab with its
# default topology (the KTCP paper's path). Extra arguments go to `splitway lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release -p splitway --features lab   # the lab is a feature: the relay alone has none
# Outputs go to target/<host tuple>/ ([build] target in .cargo/config.toml).
exec "./target/$(rustc --print host-tuple)/release/splitway" lab "$@"
