#!/usr/bin/env bash
# The main job, end to end, on a small generated dataset, on the CPU:
#   synth (a 10-class ImageFolder tree with ImageNet's odd files) -> pack -> verify -> inspect
#   -> extract -> loader preview and bench (A1 augmentation, in-process) -> loader serve (the
#   daemon), fetch through its ring, status -> trainer train (configs/smoke.toml) through the
#   daemon -> trainer eval of the last checkpoint -> trainer plot of the run -> stop the daemon.
#
# Environment: RSB_DEMO_DIR (default target/demo) for the output; RSB_BIN_DIR to use already
# built binaries instead of building release ones (the end-to-end test does this).
#
# Usage: tests/demo.sh
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
work=${RSB_DEMO_DIR:-target/demo}
# shellcheck source=tests/bins.sh
source tests/bins.sh
# Training steps (the whole smoke recipe by default; the end-to-end test, on debug builds, asks
# for a few).
train_steps=${RSB_DEMO_TRAIN_STEPS:-}

rm -rf "$work"
mkdir -p "$work"
echo "== synth: a 10-class tree with a PNG named .JPEG, a CMYK, a grayscale, a truncated and an empty file"
"$st" synth --out "$work/src" --classes 10 --train-per-class 100 --val-per-class 20 --size 64 --odd-files

echo "== pack (exit status 3: complete, but the truncated and the empty file could not be stored)"
status=0
"$st" pack "$work/src" --out "$work/shards" --shard-size 1MiB || status=$?
if [ "$status" -ne 3 ]; then
  echo "pack exited with $status, expected 3" >&2
  exit 1
fi

echo "== verify"
"$st" verify "$work/shards"

echo "== inspect"
"$st" inspect "$work/shards"

echo "== extract val record 0"
"$st" extract "$work/shards" --split val --index 0 --out "$work/val-0.jpg"

echo "== loader preview: 12 A1-augmented samples (RRC 224, flip, rand-m7-mstd0.5-inc1, 3 repeats)"
"$ld" preview "$work/shards" --transform a1 --out "$work/preview.png" --count 12 --cols 6

echo "== loader bench: A1 batches in-process, 2 threads; and 3 ranks of one job made alone, then sharing decodes"
"$ld" bench "$work/shards" --transform a1 -j 2 --samples 256 --batch-size 32 --ranks 3

echo "== loader serve: the daemon, in the background, on a private socket"
sock="$work/loader.sock"
"$ld" serve --shards "$work/shards" --socket "$sock" -j 2 >/dev/null 2>"$work/serve.log" &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true' EXIT

echo "== loader fetch: 8 A1 batches of 32 through the daemon's shared-memory ring"
"$ld" fetch --socket "$sock" --transform a1 -b 32 --steps 8

echo "== loader status"
"$ld" status --socket "$sock"

echo "== trainer train: configs/smoke.toml (quarter-width ResNet-18, 32 px, RandAugment, Mixup/CutMix, BCE, LAMB, cosine) through the daemon"
"$tr" train --config configs/smoke.toml --loader "$sock" --out "$work/run" ${train_steps:+--max-steps "$train_steps"}
echo "== trainer eval: the latest checkpoint on the val split"
"$tr" eval --config configs/smoke.toml --loader "$sock" "$work/run/latest"

echo "== trainer plot: loss, learning rate, accuracy and speed of the run as a PNG"
"$tr" plot "$work/run" --out "$work/curves.png"
test -s "$work/curves.png"

echo "== loader status after training (no connection should have been refused)"
"$ld" status --socket "$sock" | tee "$work/status-after.txt"

echo "== stop the daemon (SIGTERM: it removes its socket)"
kill -TERM "$serve_pid"
wait "$serve_pid"
test ! -e "$sock"

echo "== done: dataset in $work/shards, preview in $work/preview.png, run in $work/run (metrics.jsonl, checkpoints), curves in $work/curves.png"
