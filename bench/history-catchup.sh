#!/usr/bin/env bash
# History write throughput through the worker: a fresh history worker (its own consumer and
# store) catches up on everything in MSGS; messages/s = MSGS messages / catch-up time.
# Needs a running system (CARGO_PROFILE=release scripts/up) with messages in MSGS, e.g.
# after `natter-bench history --messages 20000`. Stops the worker it starts.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/natter-workers
[ -x "$BIN" ] || { echo "build it first: cargo build --release -p natter-workers" >&2; exit 1; }
METRICS=127.0.0.1:9475

messages=$(curl -sf "http://127.0.0.1:8222/jsz?streams=true" | python3 -c '
import json, sys
jsz = json.load(sys.stdin)
print(sum(s["state"]["messages"] for a in jsz.get("account_details", [])
          for s in a.get("stream_detail", []) if s["name"] == "MSGS"))')
echo "MSGS holds $messages messages"

DIR=$(mktemp -d)
start=$(date +%s.%N)
NATTER_NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224 \
  NATTER_NATS_USER=workers NATTER_NATS_PASSWORD=workers-dev \
  "$BIN" history --history-dir "$DIR" --history-instance "catchup-$$" \
  --metrics-listen "$METRICS" >"$DIR.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR" "$DIR.log"' EXIT

written=0
for _ in $(seq 6000); do
  written=$(curl -sf "http://$METRICS/metrics" 2>/dev/null \
    | awk '$1 == "natter_history_messages_total" {print int($2)}' || true)
  [ -n "$written" ] && [ "$written" -ge "$messages" ] && break
  sleep 0.05
done
end=$(date +%s.%N)
python3 -c "
m, s = $written, $end - $start
print(f'{m} messages written in {s:.2f} s (process start included): {m / s:.0f} messages/s')"
