#!/usr/bin/env bash
# Every benchmark behind docs/BENCHMARKS.md, in one go, on this machine:
#
#   bench/run-all.sh [step…]      steps: sweep ceiling fanout idle storm durability
#                                        ejabberd plot (default: all, in that order)
#
# Starts its own Natter (`scripts/up`, release build, send limit off) and stops it after;
# `idle` and `storm` add gateway processes (bench/gateways.sh); `durability` restarts
# Natter with JetStream fsync on every write (NATTER_JS_SYNC=always); `ejabberd` starts
# the peer in both modes (bench/peer/ejabberd.sh). JSON results go to
# docs/bench-results/<step>*.json, the plot to docs/latency-vs-load.png.
# Knobs: IDLE_GATEWAYS (10), IDLE_PER_GATEWAY (19500), STORM_USERS (50000),
# STORM_GATEWAYS (3), RATES (Natter sweep), XMPP_RATES_NOMAM, XMPP_RATES_PG.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_PROFILE=release NATTER_SEND_PER_SEC=0
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
OUT="$ROOT/docs/bench-results"
mkdir -p "$OUT" "$ROOT/.run/logs"
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(sweep ceiling fanout idle storm durability ejabberd plot)
RATES=${RATES:-250,500,1000,1500,2000,3000,4000,5000,6000}
XMPP_RATES_NOMAM=${XMPP_RATES_NOMAM:-1000 2000 4000 8000 12000 16000 20000}
XMPP_RATES_PG=${XMPP_RATES_PG:-500 1000 2000 3000 4000}

cargo build --release -p natter-bench -p natter-gateway -p natter-workers -p natter-cli

UP_PID=""
GW_PID=""
stop_all() {
  [ -n "$GW_PID" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
  [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  UP_PID=""
}
trap stop_all EXIT
up() {  # starts scripts/up with extra environment ($@) and waits for it
  stop_all
  env "$@" "$ROOT/scripts/up" >"$ROOT/.run/logs/bench-up.log" 2>&1 &
  UP_PID=$!
  for _ in $(seq 600); do
    grep -q "Natter is up" "$ROOT/.run/logs/bench-up.log" && return 0
    kill -0 "$UP_PID" 2>/dev/null || break
    sleep 0.5
  done
  echo "scripts/up did not come up; see .run/logs/bench-up.log" >&2
  exit 1
}
gateways() {  # starts $1 extra gateways and waits for their address file
  bench/gateways.sh "$1" >"$ROOT/.run/logs/bench-gateways.log" 2>&1 &
  GW_PID=$!
  for _ in $(seq 240); do
    [ -s "$ROOT/.run/bench-gateways.addrs" ] && return 0
    kill -0 "$GW_PID" 2>/dev/null || break
    sleep 0.5
  done
  echo "extra gateways did not come up; see .run/logs/" >&2
  exit 1
}
stop_gateways() {
  kill -TERM "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
}
bench() { "$TARGET/natter-bench" "$@"; }
pid_of() { pgrep -f "$1" | head -n1; }

for step in "${STEPS[@]}"; do
  echo "== $step ($(date -u +%H:%M:%S))" >&2
  case $step in
    sweep)
      up
      bench sweep --pairs 50 --seconds 10 --rates "$RATES" >"$OUT/sweep-natter.json" ;;
    ceiling)
      [ -n "$UP_PID" ] || up
      bench ceiling --pairs 50 --rate 6000 --seconds 10 >"$OUT/ceiling.json" ;;
    fanout)
      [ -n "$UP_PID" ] || up
      bench fanout --members 1024 --rounds 30 >"$OUT/fanout.json" ;;
    idle)
      [ -n "$UP_PID" ] || up
      gateways "${IDLE_GATEWAYS:-10}"
      bench idle --gateways "$(cat .run/bench-gateways.addrs)" \
        --gateway-pids "$(cat .run/bench-gateways.pids)" --per-gateway "${IDLE_PER_GATEWAY:-19500}" \
        --rest-seconds 30 \
        --watch "nats-1=$(pid_of nats/node-1.conf),redis=$(pid_of 'redis-server.*6379')" \
        >"$OUT/idle.json"
      stop_gateways ;;
    storm)
      [ -n "$UP_PID" ] || up
      gateways "${STORM_GATEWAYS:-3}"
      bench storm --gateways "$(cat .run/bench-gateways.addrs)" --users "${STORM_USERS:-50000}" \
        >"$OUT/storm.json"
      stop_gateways ;;
    durability)
      up NATTER_JS_SYNC=always
      bench sweep --pairs 50 --seconds 10 --rates "$RATES" --system natter-sync-always \
        >"$OUT/sweep-natter-sync-always.json"
      stop_all ;;
    ejabberd)
      stop_all
      for mode in nomam mam-pg; do
        dir=$(mktemp -d)
        bench/peer/ejabberd.sh start "$mode" "$dir" >&2
        rates=$XMPP_RATES_NOMAM; [ "$mode" = mam-pg ] && rates=$XMPP_RATES_PG
        for rate in $rates; do
          bench xmpp --pairs 50 --rate "$rate" --seconds 10 --system "ejabberd-$mode" \
            >"$OUT/xmpp-$mode-$rate.json"
        done
        bench/peer/ejabberd.sh stop "$dir" >&2
        rm -rf "$dir"
      done ;;
    plot)
      files=("$OUT"/sweep-natter.json "$OUT"/sweep-natter-sync-always.json "$OUT"/xmpp-*.json)
      existing=()
      for f in "${files[@]}"; do [ -e "$f" ] && existing+=("$f"); done
      bench plot --out "$ROOT/docs/latency-vs-load.png" "${existing[@]}" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
