#!/usr/bin/env bash
# Build the Debian package: target/debian/splitway_<version>-1_<arch>.deb.
# Installs cargo-deb (pinned: builds on the project's rustc) if missing,
# renders the man pages and shell completions from the CLI definition
# (`splitway-dist`) into the build's output directory, then runs `cargo deb`
# (metadata: [package.metadata.deb] in crates/splitway/Cargo.toml).
#
#   ./scripts/package.sh                  # release build (fat LTO): what users install
#   PROFILE=dev ./scripts/package.sh      # same files, unoptimised binary (the CI package test)
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-release}"
CARGO_DEB_VERSION=3.8.0   # needs rustc >= 1.85

if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION"
  # gzip instead of the default xz: no C library to build, same package.
  cargo install --quiet --locked cargo-deb --version "$CARGO_DEB_VERSION" \
    --no-default-features --features gzip
fi

tuple="$(rustc --print host-tuple)"   # [build] target in .cargo/config.toml
case "$PROFILE" in dev|debug) dir=debug ;; *) dir="$PROFILE" ;; esac
out="${CARGO_TARGET_DIR:-target}/$tuple/$dir"

# The relay binary alone (cargo-deb would build the whole workspace: it cannot
# tell which package makes the generated assets below).
cargo build --quiet -p splitway --profile "$PROFILE"

# Man pages and completions: cargo-deb takes them from target/release/dist/,
# its name for "$out/dist/".
rm -rf "$out/dist"
cargo run --quiet -p splitway-dist -- all "$out/dist" >/dev/null
gzip -9nf "$out"/dist/man/*.1

# --strip: the release profile keeps debug info (debug = 1) for profiling, and
# cargo-deb would ship it (21 MB instead of 3.3 MB; never loaded, so no RSS).
extra=(--strip)
[ "$PROFILE" = release ] || extra+=(--fast)
# Prints the package's path.
cargo deb --quiet --no-build -p splitway --target "$tuple" --profile "$PROFILE" "${extra[@]}"
