#!/usr/bin/env bash
# TensorBoard's scalars page for the runs under a folder, as headless Chromium renders it.
#
# Usage: trainer/tests/tensorboard/screenshot.sh RUNS_DIR OUT.png [TAG_REGEX]
#
# Needs `pip install tensorboard` and Debian's chromium. TAG_REGEX picks the charts shown
# (default: the training loss, the learning rate and top-1).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
runs=$1
out=$2
tags=${3:-^(train_loss|lr|eval_top1)$}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
tensorboard --logdir "$runs" --host 127.0.0.1 --port "$port" >"$work/tensorboard.log" 2>&1 &
board=$!
trap 'kill "$board" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/data/runs" >/dev/null && break
  sleep 0.5
done
echo "runs: $(curl -s "http://127.0.0.1:$port/data/runs")"
filter=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$tags")
# The flags keep Chromium off the network it cannot reach here, and give the page's scripts
# 20 s of virtual time to fetch and draw the charts.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chrome" --window-size=1600,1400 --virtual-time-budget=20000 \
  --screenshot="$out" "http://127.0.0.1:$port/#scalars&tagFilter=$filter" 2>/dev/null
echo "wrote $out"
