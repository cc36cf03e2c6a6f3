#!/usr/bin/env bash
# The benchmark as a controlled experiment (issue 15), in one run on this machine:
#
#   bench/run-all.sh
#
# Every Natter figure is measured next to a control that does the same durable work with
# no Natter code, in the same run, and the whole cycle is repeated (A B A B A B) so the
# box's drift shows:
#
#   raw-before      natter-bench raw write (≥ 5 s): plain R3 writes/s, and W (server CPU/write)
#   floor           raw floor: two republished inbox items per message, live subscriber, tail reader
#   sweep           Natter dm at increasing rates until it stops keeping up, then at half the peak
#   raw-lat         raw lat at that half-peak rate: publish → republished arrival
#   fanout, raw-fan Natter 1,024-member group vs 1,023 republished items
#   idle            Natter gateways holding idle sockets (bench/gateways.sh)
#   idle-control    the same client and sockets on `natter-bench control-server` processes
#   storm           Natter reconnect storm
#   storm-control   the same storm on `control-server --storm` processes
#   raw-after       raw write again: a repeat whose raw-before and raw-after differ by more
#                   than 15 % is void (summarize)
#
# then, once, FINAL_STEPS (ejabberd without archive and with the PostgreSQL archive, and
# the latency plot), and `natter-bench summarize`, which writes summary.md: medians over
# the non-void repeats, every Natter figure next to its control and their ratio.
#
# Natter comes up once with `scripts/up` (release build, send limit off) and stays up for
# every repeat: the raw and control steps share its NATS cluster. Every step is given
# --watch with the PIDs of the 3 nats-servers, the gateway(s), the workers and Redis, so
# each report has the CPU per message of each process. /proc/loadavg is recorded before
# and after the run and each repeat; a 1-minute load above 1 at the start is flagged.
#
# Results: $OUT (default docs/bench-results/$RUN_ID), r<N>/<step>.json per repeat,
# ejabberd/, loadavg-start/-end, summary.md, latency-vs-load.png.
#
# Knobs (environment), e.g. for a quick smoke run:
#   REPEATS=1 STEPS="raw-before floor raw-after" FINAL_STEPS="" bench/run-all.sh
# RUN_ID (UTC date-time), OUT, REPEATS (3), STEPS (the cycle above), FINAL_STEPS
# ("ejabberd plot"; "durability" re-runs the sweep with fsync on every write), RATES
# (Natter sweep), DM_SECONDS (10), PAIRS (50), RAW_SECONDS (6, ≥ 5), FLOOR_SECONDS (6),
# LAT_SECONDS (10), HALF_RATE (raw-lat rate when no sweep ran: 1000), FANOUT_MEMBERS
# (1024), FANOUT_ROUNDS (30), IDLE_GATEWAYS (10), IDLE_PER_GATEWAY (19500), IDLE_REST (30),
# STORM_GATEWAYS (3), STORM_USERS (50000), XMPP_RATES_NOMAM, XMPP_RATES_PG, XMPP_SECONDS (10),
# SETTLE_BUSY (15) and SETTLE_MAX (90): before each step the run waits, at most SETTLE_MAX
# seconds, until the CPU is at most SETTLE_BUSY % busy over a second (the teardown of a
# step with 195,000 sockets otherwise ran into the next: every repeat of the first run
# was void, raw-after 18-69 % below raw-before).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_PROFILE=release NATTER_SEND_PER_SEC=0
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
RUN_ID=${RUN_ID:-$(date -u +%Y-%m-%dT%H%M%SZ)}
OUT=${OUT:-$ROOT/docs/bench-results/$RUN_ID}
REPEATS=${REPEATS:-3}
read -r -a CYCLE <<<"${STEPS:-raw-before floor sweep raw-lat fanout raw-fan idle idle-control storm storm-control raw-after}"
read -r -a FINAL <<<"${FINAL_STEPS-ejabberd plot}"
RATES=${RATES:-250,500,1000,1500,2000,3000,4000,5000,6000}
DM_SECONDS=${DM_SECONDS:-10}
PAIRS=${PAIRS:-50}
RAW_SECONDS=${RAW_SECONDS:-6}
FLOOR_SECONDS=${FLOOR_SECONDS:-6}
LAT_SECONDS=${LAT_SECONDS:-10}
FANOUT_MEMBERS=${FANOUT_MEMBERS:-1024}
FANOUT_ROUNDS=${FANOUT_ROUNDS:-30}
IDLE_GATEWAYS=${IDLE_GATEWAYS:-10}
IDLE_PER_GATEWAY=${IDLE_PER_GATEWAY:-19500}
IDLE_REST=${IDLE_REST:-30}
STORM_GATEWAYS=${STORM_GATEWAYS:-3}
STORM_USERS=${STORM_USERS:-50000}
XMPP_RATES_NOMAM=${XMPP_RATES_NOMAM:-1000 2000 4000 8000 12000 16000 20000}
XMPP_RATES_PG=${XMPP_RATES_PG:-500 1000 2000 3000 4000}
XMPP_SECONDS=${XMPP_SECONDS:-10}
SETTLE_BUSY=${SETTLE_BUSY:-15}
SETTLE_MAX=${SETTLE_MAX:-90}
mkdir -p "$OUT" "$ROOT/.run/logs"
echo "results in $OUT" >&2

cargo build --release -p natter-bench -p natter-gateway -p natter-workers -p natter-cli

UP_PID=""
GW_PID=""
CTRL_PIDS=()
CTRL_ADDRS=()
stop_controls() {
  for pid in "${CTRL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${CTRL_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CTRL_PIDS=()
  CTRL_ADDRS=()
}
stop_gateways() {
  [ -n "$GW_PID" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  GW_PID=""
}
stop_all() {
  stop_controls
  stop_gateways
  [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  UP_PID=""
}
trap stop_all EXIT
pid_of() {  # the oldest process whose command line matches $1; fails if there is none
  local pid
  pid=$(pgrep -o -f "$1") || { echo "no process matches $1" >&2; return 1; }
  echo "$pid"
}
up() {  # starts scripts/up with extra environment ($@), waits for it, notes the PIDs to watch
  stop_all
  env "$@" "$ROOT/scripts/up" >"$ROOT/.run/logs/bench-up.log" 2>&1 &
  UP_PID=$!
  for _ in $(seq 600); do
    if grep -q "Natter is up" "$ROOT/.run/logs/bench-up.log"; then
      WATCH="nats-1=$(pid_of nats/node-1.conf),nats-2=$(pid_of nats/node-2.conf)"
      WATCH+=",nats-3=$(pid_of nats/node-3.conf),gateway=$(pid_of "$TARGET/natter-gateway")"
      WATCH+=",workers=$(pid_of "$TARGET/natter-workers"),redis=$(pid_of 'redis-server.*6379')"
      return 0
    fi
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
gateway_watch() {  # name=pid of the extra gateways
  local i=0 list=() pids=() pid
  IFS=, read -r -a pids <"$ROOT/.run/bench-gateways.pids"
  for pid in "${pids[@]}"; do i=$((i + 1)); list+=("gateway-$i=$pid"); done
  (IFS=,; echo "${list[*]}")
}
controls() {  # starts $1 control-server processes on 127.0.0.1:8201…, more flags after
  local count=$1 i addr
  shift
  for i in $(seq "$count"); do
    addr=127.0.0.1:$((8200 + i))
    "$TARGET/natter-bench" control-server --listen "$addr" "$@" \
      >>"$ROOT/.run/logs/bench-control-$i.log" 2>&1 &
    CTRL_PIDS+=($!)
    CTRL_ADDRS+=("$addr")
  done
  for addr in "${CTRL_ADDRS[@]}"; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && break; sleep 0.1; done
    (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null || { echo "control-server $addr did not start; see .run/logs/" >&2; exit 1; }
  done
}
control_watch() {  # name=pid of the control servers
  local i list=()
  for i in "${!CTRL_PIDS[@]}"; do list+=("control-$((i + 1))=${CTRL_PIDS[i]}"); done
  (IFS=,; echo "${list[*]}")
}
joined() { (IFS=,; echo "$*"); }
bench() { "$TARGET/natter-bench" "$@"; }
# The offered rate of the sweep's half-peak run in $1 (its top-level "peak_per_s" / 2).
half_rate() { sed -n 's/^  "peak_per_s": \([0-9.]*\),\{0,1\}$/\1/p' "$1" | awk '{printf "%d", $1 / 2 + 0.5}'; }
load_flag() { awk '$1 > 1 {print "  (1-minute load above 1 at start: flagged)"}' "$1"; }
busy_percent() {  # CPU busy % over the next second, from /proc/stat
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%d", 100 * busy / (busy + idle + 1e-9)}'
}
settle() {  # waits (at most SETTLE_MAX s) until the CPU is quiet: the last step's teardown
  # (195,000 sockets closing, say) must not run into the next step's measurement
  local i busy=100
  for i in $(seq "$SETTLE_MAX"); do
    busy=$(busy_percent)
    [ "$busy" -le "$SETTLE_BUSY" ] && break
  done
  echo "settled: CPU ${busy} % busy after ${i} s" >&2
}

cp /proc/loadavg "$OUT/loadavg-start"
echo "load at start: $(cat "$OUT/loadavg-start")$(load_flag "$OUT/loadavg-start")" >&2
up
for repeat in $(seq "$REPEATS"); do
  DIR="$OUT/r$repeat"
  mkdir -p "$DIR"
  cp /proc/loadavg "$DIR/loadavg-start"
  half=${HALF_RATE:-1000}
  for step in "${CYCLE[@]}"; do
    settle
    echo "== r$repeat $step ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))" >&2
    case $step in
      raw-before|raw-after)
        bench raw write --seconds "$RAW_SECONDS" --watch "$WATCH" >"$DIR/$step.json" ;;
      floor)
        bench raw floor --seconds "$FLOOR_SECONDS" --pairs "$PAIRS" --watch "$WATCH" >"$DIR/floor.json" ;;
      sweep)
        bench sweep --pairs "$PAIRS" --seconds "$DM_SECONDS" --rates "$RATES" --watch "$WATCH" \
          >"$DIR/sweep.json"
        rate=$(half_rate "$DIR/sweep.json")
        if [ -n "$rate" ] && [ "$rate" -gt 0 ]; then half=$rate; fi ;;
      raw-lat)
        bench raw lat --rate "$half" --seconds "$LAT_SECONDS" --pairs "$PAIRS" --watch "$WATCH" \
          >"$DIR/raw-lat.json" ;;
      fanout)
        bench fanout --members "$FANOUT_MEMBERS" --rounds "$FANOUT_ROUNDS" --watch "$WATCH" \
          >"$DIR/fanout.json" ;;
      raw-fan)
        bench raw fan --members "$FANOUT_MEMBERS" --rounds "$FANOUT_ROUNDS" --watch "$WATCH" \
          >"$DIR/raw-fan.json" ;;
      idle)
        gateways "$IDLE_GATEWAYS"
        bench idle --gateways "$(cat .run/bench-gateways.addrs)" \
          --gateway-pids "$(cat .run/bench-gateways.pids)" --per-gateway "$IDLE_PER_GATEWAY" \
          --rest-seconds "$IDLE_REST" --watch "$WATCH" >"$DIR/idle.json"
        stop_gateways ;;
      idle-control)
        controls "$IDLE_GATEWAYS"
        bench idle --system control --gateways "$(joined "${CTRL_ADDRS[@]}")" \
          --gateway-pids "$(joined "${CTRL_PIDS[@]}")" --per-gateway "$IDLE_PER_GATEWAY" \
          --rest-seconds "$IDLE_REST" --watch "$WATCH" >"$DIR/idle-control.json"
        stop_controls ;;
      storm)
        gateways "$STORM_GATEWAYS"
        bench storm --gateways "$(cat .run/bench-gateways.addrs)" --users "$STORM_USERS" \
          --watch "$WATCH,$(gateway_watch)" >"$DIR/storm.json"
        stop_gateways ;;
      storm-control)
        controls "$STORM_GATEWAYS" --storm
        bench storm-control --servers "$(joined "${CTRL_ADDRS[@]}")" --users "$STORM_USERS" \
          --watch "$WATCH,$(control_watch)" >"$DIR/storm-control.json"
        stop_controls ;;
      *) echo "unknown step $step" >&2; exit 2 ;;
    esac
  done
  cp /proc/loadavg "$DIR/loadavg-end"
done

for step in "${FINAL[@]}"; do
  echo "== $step ($(date -u +%H:%M:%S))" >&2
  case $step in
    durability)
      up NATTER_JS_SYNC=always
      bench sweep --pairs "$PAIRS" --seconds "$DM_SECONDS" --rates "$RATES" \
        --system natter-sync-always --watch "$WATCH" >"$OUT/sweep-natter-sync-always.json" ;;
    ejabberd)
      stop_all
      mkdir -p "$OUT/ejabberd"
      for mode in nomam mam-pg; do
        dir=$(mktemp -d)
        bench/peer/ejabberd.sh start "$mode" "$dir" >&2
        rates=$XMPP_RATES_NOMAM; [ "$mode" = mam-pg ] && rates=$XMPP_RATES_PG
        for rate in $rates; do
          bench xmpp --pairs "$PAIRS" --rate "$rate" --seconds "$XMPP_SECONDS" \
            --system "ejabberd-$mode" >"$OUT/ejabberd/xmpp-$mode-$rate.json"
        done
        bench/peer/ejabberd.sh stop "$dir" >&2
        rm -rf "$dir"
      done ;;
    plot)
      existing=()
      for f in "$OUT"/r1/sweep.json "$OUT"/sweep-natter-sync-always.json "$OUT"/ejabberd/xmpp-*.json; do
        [ -e "$f" ] && existing+=("$f")
      done
      [ ${#existing[@]} -gt 0 ] && bench plot --out "$OUT/latency-vs-load.png" "${existing[@]}" ;;
    *) echo "unknown final step $step" >&2; exit 2 ;;
  esac
done
stop_all
cp /proc/loadavg "$OUT/loadavg-end"
bench summarize "$OUT" | tee "$OUT/summary.md"
