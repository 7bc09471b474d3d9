#!/usr/bin/env bash
# A hongbao cluster on this machine, on loopback: three NATS JetStream servers (Debian's
# nats-server) replicating each partition's journal R3, and `hongbao serve --cluster` nodes
# (HONGBAO_NODES, default 3) sharing the partitions (HONGBAO_PARTITIONS, default 3) out by their
# leases. Any node answers any request, forwarding it to the node serving its partition.
#
#   scripts/cluster.sh start     build, start everything, print which node serves what
#   scripts/cluster.sh status    which processes run, and which partitions each node serves
#   scripts/cluster.sh stop      stop everything (state stays in ./cluster-demo)
#   scripts/cluster.sh clean     stop, and remove ./cluster-demo
#
# Ports: NATS clients 14222-14224 (routes 16222-16224), hongbao nodes 18081, 18082… Tokens are
# signed with ./cluster-demo/hongbao-host.key (`hongbao token --key … --host`).
# HONGBAO_BIN names a hongbao binary to use instead of building one (the tests do);
# HONGBAO_CLUSTER_DIR a state directory instead of ./cluster-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${HONGBAO_CLUSTER_DIR:-cluster-demo}
bin=${HONGBAO_BIN:-target/release/hongbao}
nodes=${HONGBAO_NODES:-3}
urls="nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224"
routes="nats://127.0.0.1:16222,nats://127.0.0.1:16223,nats://127.0.0.1:16224"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  command -v nats-server >/dev/null || { echo "nats-server is missing (Debian: apt-get install nats-server)" >&2; exit 1; }
  [ -n "${HONGBAO_BIN:-}" ] || cargo build --release -q -p hongbao-server
  mkdir -p "$state"
  [ -f "$state/hongbao-host.pub" ] || "$bin" keygen --dir "$state" >/dev/null
  for i in 0 1 2; do
    running "$state/nats$i.pid" && continue
    nats-server --jetstream --store_dir "$state/nats$i" --server_name "n$i" --addr 127.0.0.1 \
      --port $((14222 + i)) --cluster_name hongbao --cluster "nats://127.0.0.1:$((16222 + i))" \
      --routes "$routes" >"$state/nats$i.log" 2>&1 &
    echo $! >"$state/nats$i.pid"
  done
  for i in $(seq 0 $((nodes - 1))); do
    running "$state/node$i.pid" && continue
    "$bin" serve --listen "127.0.0.1:$((18081 + i))" --public-key "$state/hongbao-host.pub" \
      --cluster "$urls" --node "node$i" --partitions "${HONGBAO_PARTITIONS:-3}" >"$state/node$i.log" 2>&1 &
    echo $! >"$state/node$i.pid"
  done
  # Every node listens at once, then takes the partitions it can.
  for _ in $(seq 1 300); do
    if [ "$(grep -l "serves partitions \[[0-9]" "$state"/node*.log 2>/dev/null | wc -l)" -ge "$nodes" ]; then break; fi
    sleep 0.1
  done
  status
}

status() {
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    if running "$f"; then echo "$name  running (pid $(cat "$f"))"; else echo "$name  stopped"; fi
  done
  for log in "$state"/node*.log; do
    [ -e "$log" ] || continue
    name=$(basename "$log" .log)
    if running "$state/$name.pid" && grep -q " listening on " "$log"; then
      url=$(grep -o " listening on [^ ]*" "$log" | tail -1 | cut -d' ' -f4)
      echo "$name at $url: $(grep -o "serves partitions .*" "$log" | tail -1)"
    fi
  done
}

stop() {
  # hongbao nodes first (each flushes its journal and gives its lease up, which needs NATS),
  # then the NATS servers.
  stop_all "$state"/node*.pid
  stop_all "$state"/nats*.pid
}

stop_all() {
  for f in "$@"; do
    [ -e "$f" ] && running "$f" && kill "$(cat "$f")"
  done
  for f in "$@"; do
    [ -e "$f" ] || continue
    for _ in $(seq 1 150); do running "$f" || break; sleep 0.1; done
    rm -f "$f"
  done
}

case "${1:-}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  clean) stop; rm -rf "$state" ;;
  *) echo "usage: $0 start|status|stop|clean" >&2; exit 2 ;;
esac
