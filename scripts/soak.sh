#!/bin/sh
# Soak: 1 000 000 short flows (32-byte request, 64-byte response, a new
# connection each) through the two-relay chain (client -> ingress -> egress
# -> server, network namespaces, real relay processes, splice engine, every
# KTCP feature on; the egress runs with max_skew_ms = 5000), reporting fd
# count and RSS of each relay at start and end.
# Not part of CI (a few minutes on 2 cores, plus the build). Needs root.
#
#   scripts/soak.sh                 # 1 000 000 flows
#   SOAK_FLOWS=200000 scripts/soak.sh
#   SOAK_WORKERS=64 scripts/soak.sh # concurrent client loops (default 32)
#   SOAK_INGRESS_EXTRA='[features]
#   early_syn = false' scripts/soak.sh   # TOML appended to the ingress config
#
# The test is `soak_short_flows` in crates/splitway/tests/faults.rs. A
# warm-up of 100 000 flows runs first and is not part of SOAK_FLOWS; "start"
# is measured after it, "start" and "end" once no connection is active, fds
# without the idle pool legs. It fails if either relay's fd count grows by
# more than 8 or its RSS by more than 8 MiB from start to end, or if more
# than 0.01 % of SOAK_FLOWS fail (failures during the warm-up count too).
set -eu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-faults}"
export SOAK_FLOWS="${SOAK_FLOWS:-1000000}"
exec cargo test -p splitway --test faults -- --ignored --exact soak_short_flows --nocapture
