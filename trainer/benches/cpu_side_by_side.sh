#!/usr/bin/env bash
# Our training step against PyTorch + timm's on this CPU: the same model, batch, image size and
# threads, measured one after the other in one run. Prints both samples/s, the ratio, and each
# side's milliseconds per step in each phase (upload, mix, forward, loss, backward, optimizer;
# timed on extra steps with a synchronization after each phase).
#
# Usage: trainer/benches/cpu_side_by_side.sh [THREADS [MODEL...]]
#   Without MODELs: eighth-width ResNet-18 at 32 px and ResNet-50 at 224 px. With them (timm's
#   names: resnet50d resnext50_32x4d seresnet50 ecaresnet50t ...): each at 224 px, batch 8.
#   Needs python3 with torch and timm (pip install torch timm) and a release trainer
#   (cargo build --release --locked -p trainer; TRAINER=path to use another).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
threads=${1:-2}
trainer=${TRAINER:-target/release/trainer}
here=$(dirname "$0")
[[ -x $trainer ]] || { echo "no $trainer: cargo build --release --locked -p trainer" >&2; exit 1; }
python3 -c "import torch, timm" 2>/dev/null || { echo "python3 lacks torch/timm: pip install torch timm" >&2; exit 1; }

# name | model flags (both sides) | batch | image size | warm-up | timed steps
cases=(
    "resnet18/8 32px b64|--model resnet18 --width 0.125 --small-stem --num-classes 10|64|32|3|30"
    "resnet50 224px b8|--model resnet50|8|224|2|6"
)
if (( $# > 1 )); then
    cases=()
    for model in "${@:2}"; do
        cases+=("$model 224px b8|--model $model|8|224|2|6")
    done
fi
for case in "${cases[@]}"; do
    IFS='|' read -r name model batch size warmup steps <<< "$case"
    # shellcheck disable=SC2086
    ours=$(RAYON_NUM_THREADS=$threads "$trainer" bench --device cpu $model --batch "$batch" \
        --img-size "$size" --warmup "$warmup" --steps "$steps" --json)
    # shellcheck disable=SC2086
    theirs=$(python3 "$here/torch_step.py" --device cpu --threads "$threads" $model \
        --batch "$batch" --img-size "$size" --warmup "$warmup" --steps "$steps" --phases)
    NAME=$name THREADS=$threads OURS=$ours THEIRS=$theirs python3 - <<'EOF'
import json, os
ours, theirs = json.loads(os.environ["OURS"]), json.loads(os.environ["THEIRS"])
print(f"== {os.environ['NAME']}, {os.environ['THREADS']} threads: rsb {ours['samples_per_s']:.1f} "
      f"samples/s, {theirs['framework']} {theirs['samples_per_s']:.1f}; "
      f"rsb / torch = {ours['samples_per_s'] / theirs['samples_per_s']:.2f}")
phases = ["upload", "mix", "forward", "loss", "backward", "optimizer"]
print("   ms per step  " + "".join(f"{p:>10}" for p in phases) + f"{'sum':>10}")
for who, r in (("rsb", ours), ("torch", theirs)):
    p = r.get("phases_ms") or {}
    print(f"   {who:<12}" + "".join(f"{p.get(k, float('nan')):>10.2f}" for k in phases)
          + f"{sum(p.values()):>10.2f}")
EOF
done
