#!/usr/bin/env bash
# timm's architectures through the loader daemon: each model trains the smoke recipe on a
# generated 10-class dataset for STEPS steps, then again for half of them and resumed to all;
# prints, per model, its parameters, the mean loss of the first and the last five steps, and
# whether the resumed run's losses equal the uninterrupted run's. Exits 1 if a loss did not go
# down or a resume differs.
#
# Usage: tests/family.sh [STEPS [MODEL...]]
#   STEPS: 60 by default (two epochs of the smoke recipe). MODELs: timm's names, by default
#   resnet18 resnet50d resnext50_32x4d seresnet50 ecaresnet50t regnety_040 efficientnet_b0
#   vit_small_patch16_224. Uses target/release binaries
#   (RSB_BIN_DIR to use others; built with cargo build --release --locked when absent) and
#   target/family (RSB_FAMILY_DIR).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
steps=${1:-60}
shift || true
models=("$@")
(( ${#models[@]} )) || models=(resnet18 resnet50d resnext50_32x4d seresnet50 ecaresnet50t
  regnety_040 efficientnet_b0 vit_small_patch16_224)
(( steps >= 12 )) || { echo "STEPS must be at least 12 (two windows of five and a resume)" >&2; exit 2; }
work=${RSB_FAMILY_DIR:-target/family}
# shellcheck source=tests/bins.sh
source tests/bins.sh

rm -rf "$work"
mkdir -p "$work"
"$st" synth --out "$work/src" --classes 10 --train-per-class 100 --val-per-class 20 --size 64 \
  >/dev/null 2>"$work/synth.log"
"$st" pack "$work/src" --out "$work/shards" >/dev/null 2>"$work/pack.log"
sock="$work/loader.sock"
"$ld" serve --shards "$work/shards" --socket "$sock" -j 2 >/dev/null 2>"$work/serve.log" &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

failed=0
printf '%-18s %12s %12s %12s  %s\n' model parameters "first 5" "last 5" resume
for model in "${models[@]}"; do
  train() {
    "$tr" train --config configs/smoke.toml --loader "$sock" --model "$model" "$@" >/dev/null 2>>"$work/$model.log"
  }
  train --out "$work/$model-whole" --max-steps "$steps"
  train --out "$work/$model-split" --max-steps $((steps / 2))
  train --out "$work/$model-split" --max-steps "$steps" --resume
  params=$("$tr" info --model "$model" --num-classes 10 --width 0.25 --small-stem | awk '{ print $2 }')
  MODEL=$model PARAMS=$params WHOLE="$work/$model-whole/metrics.jsonl" SPLIT="$work/$model-split/metrics.jsonl" \
    python3 - <<'EOF' || failed=1
import json, os, sys
def losses(path):
    return [(m["step"], m["loss"]) for m in map(json.loads, open(path)) if m["kind"] == "step"]
whole, split = losses(os.environ["WHOLE"]), losses(os.environ["SPLIT"])
first = sum(l for _, l in whole[:5]) / 5
last = sum(l for _, l in whole[-5:]) / 5
same = "equal" if whole == split else "DIFFERENT"
print(f"{os.environ['MODEL']:<18} {os.environ['PARAMS']:>12} {first:>12.4f} {last:>12.4f}  {same}")
sys.exit(0 if last < first and whole == split else 1)
EOF
done
exit "$failed"
