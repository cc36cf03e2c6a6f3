#!/usr/bin/env bash
# Extra gateways for the socket-heavy scenarios (idle, storm): `bench/gateways.sh K`
# starts K gateway processes on 127.0.0.1:8101…(8100+K), metrics on 9501…, against the
# cluster and Redis of a running `scripts/up`, each allowed 19,900 connections (this
# machine caps open files at 20,000 per process: ../shared/LIMITS.md), with no cap per
# client address (the load tools connect from one) and without the send
# rate limit. Writes their PIDs, comma-separated, to .run/bench-gateways.pids and their
# addresses to .run/bench-gateways.addrs; stops them on Ctrl-C.
# Build first: cargo build --release -p natter-gateway (CARGO_PROFILE picks another).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COUNT=${1:?usage: bench/gateways.sh <count>}
PROFILE=${CARGO_PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/natter-gateway
[ -x "$BIN" ] || { echo "build it first: cargo build --profile $PROFILE -p natter-gateway" >&2; exit 1; }
RUN="$ROOT/.run"
mkdir -p "$RUN/logs"
cat >"$RUN/bench-gateway.toml" <<TOML
[limits]
max_connections = 19900
# The load tools connect from one address.
max_connections_per_address = 0
send_per_sec = 0.0
TOML

PIDS=()
stop() {
  trap - INT TERM EXIT
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$RUN/bench-gateways.pids" "$RUN/bench-gateways.addrs"
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

ADDRS=()
for i in $(seq "$COUNT"); do
  listen=127.0.0.1:$((8100 + i))
  NATTER_NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 \
    NATTER_NATS_USER=gateway NATTER_NATS_PASSWORD=gateway-dev NATTER_DEV=true \
    NATTER_LISTEN=$listen NATTER_METRICS_LISTEN=127.0.0.1:$((9500 + i)) \
    "$BIN" --config "$RUN/bench-gateway.toml" >>"$RUN/logs/bench-gateway-$i.log" 2>&1 &
  PIDS+=($!)
  ADDRS+=("$listen")
done
healthy() {
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n' >&3
  head -n1 <&3 | grep -q ' 200 '
}
for addr in "${ADDRS[@]}"; do
  for _ in $(seq 120); do (healthy "${addr##*:}") 2>/dev/null && break; sleep 0.5; done
  (healthy "${addr##*:}") 2>/dev/null || { echo "gateway $addr not healthy; see $RUN/logs/" >&2; exit 1; }
done
(IFS=,; echo "${PIDS[*]}" >"$RUN/bench-gateways.pids"; echo "${ADDRS[*]}" >"$RUN/bench-gateways.addrs")
echo "gateways up: $(cat "$RUN/bench-gateways.addrs") (PIDs $(cat "$RUN/bench-gateways.pids")); Ctrl-C stops them"
wait
