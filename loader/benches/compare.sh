#!/usr/bin/env bash
# loader bench (A1, 1 and 2 threads) next to the Pillow pipeline (1 core) on the same machine,
# in one run. Usage: loader/benches/compare.sh IMAGENET_SAMPLE_DIR SHARDS_DIR
# (SHARDS_DIR: `shard-tool pack IMAGENET_SAMPLE_DIR --out SHARDS_DIR`). Needs Pillow and numpy.
set -euo pipefail
cd "$(dirname "$0")/../.."
src=$1
shards=$2
cargo build --release -p loader
for j in 1 2; do
  target/release/loader bench "$shards" --transform a1 -j "$j" --samples 768
done
python3 loader/benches/pillow_pipeline.py "$src" --samples 768
