#!/usr/bin/env bash
# One convolution at the CPU benchmarks' shapes, burn-flex against PyTorch in the same run, same
# threads: the minimal reproduction of the CPU step's gap (README, trainer section). Needs torch.
# Usage: trainer/benches/conv_repro.sh [THREADS]
set -euo pipefail
threads=${1:-2}
cargo build --release --locked -p trainer --example conv_repro
ours=$(RAYON_NUM_THREADS=$threads target/release/examples/conv_repro)
theirs=$(printf "%s\n" "$ours" | python3 trainer/benches/conv_repro.py --threads "$threads")
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours = [json.loads(l) for l in sys.argv[1].splitlines()]
theirs = {d["shape"]: d for d in map(json.loads, sys.argv[2].splitlines())}
print(f"{'shape':<26} {'fwd ms burn / torch':>22} {'ratio':>6} {'fwd+bwd ms burn / torch':>26} {'ratio':>6}")
for o in ours:
    t = theirs[o["shape"]]
    print(f"{o['shape']:<26} {o['forward_ms']:>10.2f} / {t['forward_ms']:<9.2f} {o['forward_ms'] / t['forward_ms']:>6.2f}"
          f" {o['forward_backward_ms']:>12.2f} / {t['forward_backward_ms']:<11.2f} {o['forward_backward_ms'] / t['forward_backward_ms']:>6.2f}")
PY
