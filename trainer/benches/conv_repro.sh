#!/usr/bin/env bash
# One convolution at the CPU benchmarks' shapes, burn-flex's and the trainer's own (rsb) against
# PyTorch in the same run, same threads: the minimal reproduction of the CPU step's gap (docs/benchmarks.md). Needs torch.
# Usage: trainer/benches/conv_repro.sh [THREADS]
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
threads=${1:-2}
cargo build --release --locked -p trainer --example conv_repro
ours=$(RAYON_NUM_THREADS=$threads target/release/examples/conv_repro)
# burn-flex's lines name the shapes torch times; rsb's are the trainer's own convolution.
theirs=$(printf "%s\n" "$ours" | grep '"burn-flex' | python3 trainer/benches/conv_repro.py --threads "$threads")
python3 - "$ours" "$theirs" <<'PY'
import json, sys
lines = [json.loads(l) for l in sys.argv[1].splitlines()]
burn = {d["shape"]: d for d in lines if d["framework"].startswith("burn")}
rsb = {d["shape"]: d for d in lines if d["framework"] == "rsb"}
torch = {d["shape"]: d for d in map(json.loads, sys.argv[2].splitlines())}
print(f"{'shape':<26} {'fwd ms burn / rsb / torch':>28} {'rsb/torch':>9} {'fwd+bwd ms burn / rsb / torch':>32} {'rsb/torch':>9}")
for shape, b in burn.items():
    r, t = rsb[shape], torch[shape]
    print(f"{shape:<26} {b['forward_ms']:>8.2f} / {r['forward_ms']:>7.2f} / {t['forward_ms']:<7.2f} {r['forward_ms'] / t['forward_ms']:>9.2f}"
          f" {b['forward_backward_ms']:>10.2f} / {r['forward_backward_ms']:>7.2f} / {t['forward_backward_ms']:<9.2f} {r['forward_backward_ms'] / t['forward_backward_ms']:>9.2f}")
PY
