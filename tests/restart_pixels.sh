#!/usr/bin/env bash
# Pillow's side of issue 40's check that a record re-encoded with restart markers has its source's
# pixels (zune-jpeg's side is shard-tool's real_data test): pack all of imagenet-sample and the
# JPEG corpus with the default --restart-interval, extract every record, and compare each
# re-encoded one with its source in Pillow (tests/restart_pixels.py). Skips with a message where
# the shared data is absent. Usage: tests/restart_pixels.sh [BIN_DIR] [SHARED_DATA_DIR]
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
bin=$(cd "${1:-target/debug}" && pwd)
data=${2:-${RSB_SHARED_DATA:-../shared/data}}
if [ ! -f "$data/imagenet-sample.tar" ] || [ ! -f "$data/jpeg-corpus.tar" ]; then
  echo "restart_pixels: skipped: $data has no imagenet-sample.tar and jpeg-corpus.tar"
  exit 0
fi
if ! python3 -c 'import PIL, numpy' 2>/dev/null; then
  pip install -q pillow==13.0.0 numpy >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xf "$data/imagenet-sample.tar" -C "$work"
tar xf "$data/jpeg-corpus.tar" -C "$work"
mkdir -p "$work/corpus"
ln -s "$work/jpeg-corpus" "$work/corpus/train"
"$bin/shard-tool" pack "$work/imagenet-sample" --out "$work/imagenet-sample-rsb" -q
# The corpus holds damaged files: exit status 3 (some files not stored) is expected.
"$bin/shard-tool" pack "$work/corpus" --out "$work/corpus-rsb" -q --follow-external-symlinks || [ $? = 3 ]
for name in imagenet-sample corpus; do
  "$bin/shard-tool" extract "$work/$name-rsb" --all --out "$work/$name.x" -q
  python3 tests/restart_pixels.py "$work/$name.x" "$work/$name" "$work/$name-rsb"
done
