#!/usr/bin/env bash
# loader bench (1 and 2 threads) next to the Pillow pipeline (1 core) on the same machine,
# in one run, ROUNDS times (default 5) alternating the three, then the medians and the ratios
# the loader-core issue sets goals for. TRANSFORM is a1 (default) or a3. Usage:
#   loader/benches/compare.sh IMAGENET_SAMPLE_DIR SHARDS_DIR [ROUNDS] [TRANSFORM]
# (SHARDS_DIR: `shard-tool pack IMAGENET_SAMPLE_DIR --out SHARDS_DIR`). Needs Pillow and numpy.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/../.."
src=$1
shards=$2
rounds=${3:-5}
transform=${4:-a1}
cargo build --locked --release -p loader
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for round in $(seq "$rounds"); do
  echo "== round $round of $rounds" | tee -a "$log"
  for j in 1 2; do
    target/release/loader bench "$shards" --transform "$transform" -j "$j" --samples 768 | tee -a "$log"
  done
  python3 loader/benches/pillow_pipeline.py "$src" --samples 768 --transform "$transform" | tee -a "$log"
done
python3 - "$log" <<'EOF'
import re, statistics, sys
text = open(sys.argv[1]).read()
runs = {1: [], 2: []}
for block in text.split("loader bench: ")[1:]:
    threads = int(re.search(r", (\d+) thread\(s\)", block).group(1))
    rate = float(re.search(r"samples/s ([\d.]+)", block).group(1))
    ratio = float(re.search(r"decode-only images/s = ([\d.]+)", block).group(1))
    runs[threads].append((rate, ratio))
pillow = [float(x) for x in re.findall(r"Pillow pipeline .*?: ([\d.]+) samples/s", text)]
med = statistics.median
one, two = med(r for r, _ in runs[1]), med(r for r, _ in runs[2])
print(f"medians over {len(pillow)} rounds:")
print(f"  loader 1 thread {one:.1f} samples/s, 2 threads {two:.1f} "
      f"(2 threads / 1 thread {two / one:.2f}, goal >= 1.8)")
print(f"  Pillow pipeline {med(pillow):.1f} samples/s on 1 core: loader per core "
      f"{one / med(pillow):.2f}x Pillow (goal >= 3)")
print(f"  samples/s over decode-only images/s, 1 thread: {med(x for _, x in runs[1]):.2f} "
      f"(per round: {', '.join(f'{x:.2f}' for _, x in runs[1])}; goal >= 1.5); "
      f"2 threads: {med(x for _, x in runs[2]):.2f}")
EOF
