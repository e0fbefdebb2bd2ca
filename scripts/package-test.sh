#!/usr/bin/env bash
# The Debian package's install test: build the .deb (scripts/package.sh), install
# it with dpkg on a clean Debian root (a debootstrap --variant=minbase chroot of
# this machine's release with the package's dependencies, made once and cached as a tarball in
# /var/cache/splitway-pkgtest/), run `splitway --version` and `splitway check
# /etc/splitway/splitway.toml` from it (as root and as the service's user), check
# the unit, user, conffile, man pages and completions, then remove and purge it
# and check that nothing is left behind. Needs root.
#
#   ./scripts/package-test.sh               # the release package
#   PROFILE=dev ./scripts/package-test.sh   # CI: same files, unoptimised binary
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
deb="$(PROFILE="${PROFILE:-release}" ./scripts/package.sh | tail -1)"
[ -f "$deb" ] || { echo "package-test: no .deb built ($deb)" >&2; exit 1; }
echo "package-test: $deb ($(du -h "$deb" | cut -f1))"

fail() { echo "package-test: FAILED: $*" >&2; exit 1; }

# A clean Debian root.
. /etc/os-release
suite="${VERSION_CODENAME:-bookworm}"
cache_dir=/var/cache/splitway-pkgtest
# minbase plus the package's Depends that minbase lacks (dpkg -i fetches nothing).
include=procps
cache="$cache_dir/$suite-minbase-$include.tar"
mkdir -p "$cache_dir"
if [ ! -s "$cache" ]; then
  echo "package-test: debootstrap $suite (once; cached in $cache)"
  tmp="$(mktemp -d /var/tmp/splitway-debootstrap.XXXXXX)"
  debootstrap --variant=minbase --include="$include" "$suite" "$tmp/root" http://deb.debian.org/debian >"$tmp.log" 2>&1 \
    || { tail -20 "$tmp.log" >&2; rm -rf "$tmp" "$tmp.log"; fail "debootstrap"; }
  tar -C "$tmp/root" -cf "$cache.part" . && mv "$cache.part" "$cache"
  rm -rf "$tmp" "$tmp.log"
fi
root="$(mktemp -d /var/tmp/splitway-pkgtest.XXXXXX)"
cleanup() { rm -rf "$root"; }
trap cleanup EXIT
tar -C "$root" -xf "$cache"
in_root() { chroot "$root" "$@"; }

# What the root holds before (paths, and the user databases).
snapshot() {
  (cd "$root" && find . -xdev \
    -path ./var/lib/dpkg -prune -o -path ./var/log -prune -o -path ./var/cache -prune \
    -o -path ./tmp -prune -o -path ./run -prune -o -path ./proc -prune \
    -o -path './etc/*-' -prune -o -path ./etc/.pwd.lock -prune -o -print | sort)
  for f in etc/passwd etc/group etc/shadow etc/gshadow; do
    echo "== $f"; cat "$root/$f"
  done
}
snapshot >"$root.before"
trap 'cleanup; rm -f "$root.before" "$root.after"' EXIT

cp "$deb" "$root/tmp/splitway.deb"
in_root dpkg -i /tmp/splitway.deb >/dev/null || fail "dpkg -i"

# The binary runs, the example config checks, as root and as the service user.
version="$(in_root splitway --version)"
[[ "$version" == "splitway "* ]] || fail "splitway --version: $version"
in_root splitway check --config /etc/splitway/splitway.toml | grep -q ': ok$' || fail "splitway check"
in_root setpriv --reuid=splitway --regid=splitway --clear-groups \
  splitway check --config /etc/splitway/splitway.toml >/dev/null \
  || fail "the service user cannot read its config"
# The system user: no login, no home.
IFS=: read -r _ _ uid _ _ home shell < <(in_root getent passwd splitway) || fail "no user splitway"
[ "$uid" -lt 1000 ] && [ "$shell" = /usr/sbin/nologin ] && [ "$home" = /nonexistent ] \
  || fail "user splitway: uid $uid home $home shell $shell"
# The config holds keys: root and the service only; a conffile.
mode="$(in_root stat -c '%U:%G %a' /etc/splitway/splitway.toml)"
[ "$mode" = "root:splitway 640" ] || fail "config owner/mode: $mode"
in_root dpkg-query -W -f='${Conffiles}\n' splitway | grep -q '/etc/splitway/splitway.toml' \
  || fail "the config is not a conffile"
# The unit: hardened, reload is SIGHUP, installed but neither enabled nor started.
unit="$(in_root sh -c 'ls /usr/lib/systemd/system/splitway.service /lib/systemd/system/splitway.service 2>/dev/null | head -1')"
[ -n "$unit" ] || fail "no systemd unit"
for want in 'User=splitway' 'ExecReload=/bin/kill -HUP $MAINPID' \
  'AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE' \
  'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE' \
  'NoNewPrivileges=yes' 'ProtectSystem=strict'; do
  grep -qxF "$want" "$root$unit" || fail "unit lacks $want"
done
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/splitway.service" ] || fail "the unit was enabled"
if command -v systemd-analyze >/dev/null; then
  # This machine's systemd checks the unit's syntax and directives (the
  # chroot has no systemd; that binaries are not on the host is expected).
  bad="$(systemd-analyze verify "$root$unit" 2>&1 \
    | grep -v -e 'is not executable' -e "Command 'man " || true)"
  [ -z "$bad" ] || fail "systemd-analyze verify: $bad"
fi
# Man pages (splitway(1) and one per subcommand) and completions.
n_man="$(ls "$root"/usr/share/man/man1/splitway*.1.gz | wc -l)"
[ "$n_man" -ge 4 ] || fail "$n_man man pages"
zcat "$root/usr/share/man/man1/splitway.1.gz" | grep -q 'splitway\\-relay' || fail "splitway.1 names no subcommand"
for f in usr/share/bash-completion/completions/splitway usr/share/zsh/vendor-completions/_splitway \
  usr/share/fish/vendor_completions.d/splitway.fish usr/share/doc/splitway/config.md \
  usr/share/doc/splitway/grafana/splitway.json usr/share/doc/splitway/prometheus/splitway-rules.yml; do
  [ -s "$root/$f" ] || fail "missing $f"
done
echo "package-test: installed: $version, $n_man man pages, completions, unit, user, conffile"

# Remove keeps the conffile (dpkg's rule); purge leaves nothing behind.
in_root dpkg -r splitway >/dev/null || fail "dpkg -r"
[ ! -e "$root/usr/bin/splitway" ] || fail "the binary survived remove"
[ -e "$root/etc/splitway/splitway.toml" ] || fail "remove deleted the conffile"
in_root dpkg -P splitway >/dev/null || fail "dpkg -P"
rm -f "$root/tmp/splitway.deb"
snapshot >"$root.after"
if ! diff -u "$root.before" "$root.after" >&2; then
  fail "purge left the above behind"
fi
echo "package-test: remove and purge left nothing behind"
echo "package-test: 1 passed, 0 failed"
