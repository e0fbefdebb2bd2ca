#!/usr/bin/env bash
# Idle RSS of two relay binaries side by side (docs/operations.md, "Building
# with fleet mode"): a plain relay with each, then a fleet-mode relay (etcd on
# loopback) with the first. Needs root, etcd and etcdctl.
#   scripts/fleet-rss.sh WITH_FLEET_BIN WITHOUT_FLEET_BIN
set -u
WITH=${1:?binary built with --features fleet}
WITHOUT=${2:?binary built without}
NS=fleetrss$$
ip netns add $NS; ip -n $NS link set lo up
trap 'ip netns pids $NS | xargs -r kill -9; ip netns del $NS; rm -rf $D' EXIT
D=$(mktemp -d)
KEY=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
cat > $D/plain.toml <<T
[node]
name = "rss"
[auth]
keys = [{ id = 1, secret = "$KEY" }]
[relay]
listen = "127.0.0.1:5565"
[[explicit]]
listen = "127.0.0.1:8080"
target = "127.0.0.2:80"
[[route]]
prefix = "127.0.0.0/8"
via = "direct"
[features]
early_syn = false
turbo_start = false
T
cp $D/plain.toml $D/fleet.toml
cat >> $D/fleet.toml <<T
[fleet]
endpoints = ["http://127.0.0.1:2379"]
prefix = "/rss"
cache_path = "$D/cache.json"
T
rm -rf $D/etcd.data
ip netns exec $NS etcd --data-dir $D/etcd.data --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 --log-level error --logger zap >/dev/null 2>&1 &
sleep 2
ip netns exec $NS env ETCDCTL_API=3 etcdctl put /rss/auth/keys/1 $KEY >/dev/null
ip netns exec $NS env ETCDCTL_API=3 etcdctl put /rss/all/routes/lo '{"prefix":"127.0.0.0/8","via":"direct"}' >/dev/null
measure() { # bin cfg
  rm -f $D/ready
  ip netns exec $NS $1 relay --config $2 --ready-file $D/ready --workers 1 2>/dev/null &
  local pid=$!
  for i in $(seq 100); do [ -e $D/ready ] && break; sleep 0.05; done
  sleep 1
  local s=$(awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s=%s ", $1, $2}' /proc/$pid/status)
  kill $pid; wait $pid 2>/dev/null
  echo "$s"
}
for r in 1 2 3; do
  echo "round $r with    plain: $(measure $WITH $D/plain.toml)"
  echo "round $r without plain: $(measure $WITHout $D/plain.toml)"
  echo "round $r with    fleet: $(measure $WITH $D/fleet.toml)"
done
for b in "$WITH" "$WITHOUT"; do
  echo "$b: file $(stat -c %s "$b") B; $(size -A "$b" | awk '$1==".text"{print "text " $2 " B"}')"
done
