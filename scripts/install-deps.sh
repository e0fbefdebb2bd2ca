#!/usr/bin/env bash
# Install what splitway's tests, lab and benchmarks need on a Debian machine.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
want nft nftables
want iptables-nft iptables
want ip iproute2
want curl curl
want nginx nginx-light
want sshd openssh-server
want ssh openssh-client
want ping iputils-ping
want pgrep procps
want socat socat
want haproxy haproxy
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
want sysctl procps
want python3 python3
want openssl openssl        # lab --scenario web: per-run CA and certificate
want chromium chromium      # lab --scenario web: headless browser
want debootstrap debootstrap   # the Debian package's install test (scripts/package-test.sh)
want script bsdutils          # a pty for the log-colour test
# Fleet mode: etcd for the fleet tests, protoc to build the etcd client.
want etcd etcd-server
want etcdctl etcd-client
want protoc protobuf-compiler
# protoc's well-known types (google/protobuf/*.proto), imported by etcd's protos.
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)

if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (stable Rust >= 1.80) is required; install it with rustup" >&2
  exit 1
fi
