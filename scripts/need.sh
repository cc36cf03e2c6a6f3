#!/usr/bin/env bash
# Installs Debian packages for commands that are missing: each argument is
# `command:package`, e.g. `scripts/need.sh redis-server:redis-server prometheus:prometheus`,
# or `/absolute/file:package` for packages without a command (fonts).
# Needs root (or sudo) only when something is missing. Idempotent.
set -euo pipefail

missing=()
for pair in "$@"; do
  need=${pair%%:*}
  if [[ $need == /* ]]; then
    [ -e "$need" ] || missing+=("${pair#*:}")
  else
    command -v "$need" >/dev/null || missing+=("${pair#*:}")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing from Debian: ${missing[*]}…" >&2
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
