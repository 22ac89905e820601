#!/usr/bin/env bash
# The data gpu_check.sh's upload (d) and A3 (f) parts read: the 1,000-image ImageNet sample of
# ../shared/data, packed with its images downscaled to 192 px on the long side (13 MB, so it
# travels with the bundle under the device's 64 MiB carry limit); and for its smoke part (a2),
# the demo's generated 10-class set (tests/demo.sh), packed. Run from the repository root.
#
# Usage: trainer/cuda/gpu_data.sh [SHARED_DATA_DIR]    (default ../shared/data)
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
shared=${1:-../shared/data}
src=target/real-data/imagenet-sample
if [[ ! -d $src/train ]]; then
    mkdir -p target/real-data
    tar -xf "$shared/imagenet-sample.tar" -C target/real-data
fi
cargo build --release --locked -p shard-tool
target/release/shard-tool pack "$src" --max-side 192 --out target/gpu-data/imagenet-192
rm -rf target/gpu-data/smoke target/gpu-data/smoke-src
target/release/shard-tool synth --out target/gpu-data/smoke-src --classes 10 \
    --train-per-class 100 --val-per-class 20 --size 64
target/release/shard-tool pack target/gpu-data/smoke-src --out target/gpu-data/smoke
rm -rf target/gpu-data/smoke-src
du -sh target/gpu-data/imagenet-192 target/gpu-data/smoke
