#!/bin/sh
# Bounded fuzz runs of the decoders that read bytes from peers, one after
# the other, each for FUZZ_SECS seconds:
#   header  relay-leg header (wire::parse, wire::header_len, KeyRing::open)
#   frame   v2 frames (frame::decode, frame::Decoder)
#   proxy_handshake  SOCKS5 and HTTP CONNECT requests (socks5::Handshake,
#           http_connect::parse)
#   module_compress  the compress module's decoder (records, bounds)
#   module_dedup     the dedup module's decoder (ops, answers, held input)
# Targets are fuzz/fuzz_targets/NAME.rs, seeds in fuzz/corpus/NAME/seed-*.
#
#   scripts/fuzz.sh                 # every target, 30 s each (CI: 5 × 30 s = 2.5 min)
#   FUZZ_SECS=600 scripts/fuzz.sh frame
#
# cargo-fuzz (0.13) with `-s none` (no sanitizer) builds and runs on the
# stable toolchain: no nightly, no RUSTC_BOOTSTRAP. Installs cargo-fuzz from
# crates.io if missing. The build goes to fuzz/target (about 7 minutes the
# first time on 2 busy cores). New inputs a run finds go to a scratch copy of
# the corpus, so the checked-in seeds stay small; a crash leaves its input in
# fuzz/artifacts/NAME/ and makes this script fail.
set -eu
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECS:-30}"
targets="${*:-header frame proxy_handshake module_compress module_dedup}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for t in $targets; do
    scratch="$(mktemp -d)"
    cp corpus/"$t"/seed-* "$scratch/"
    echo "fuzz: $t for ${secs}s"
    cargo fuzz run -s none "$t" "$scratch" corpus/"$t" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1 ||
        { rm -rf "$scratch"; exit 1; }
    rm -rf "$scratch"
done
