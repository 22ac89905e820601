#!/usr/bin/env bash
# The shard-tool checks on real data that a unit test cannot afford, with the release binary:
# pack imagenet-sample and CIFAR-10, verify, extract every record and compare SHA-256 with the
# sources; the odd-file tree; kill -9 mid-pack and resume; a flipped byte; the pack benchmark;
# peak RSS. Usage: tests/shard_tool_real_data.sh [SHARED_DATA_DIR] (default ../shared/data).
# Scratch space: target/real-data (about 1 GB).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
data=$(cd "${1:-${RSB_SHARED_DATA:-../shared/data}}" && pwd)
cargo build --locked --release -p shard-tool
st=$PWD/target/release/shard-tool
work=$PWD/target/real-data
mkdir -p "$work"
cd "$work"
for t in imagenet-sample cifar10-jpeg; do
  [ -d "${t%-jpeg}" ] || tar xf "$data/$t.tar"
done
timed() { /usr/bin/time -f "$1: wall %e s, user %U s, sys %S s, peak RSS %M KB" "${@:2}"; }

# sha256 of every extracted record against its source file, skipping converted files.
compare() { # src dataset
  rm -rf "$2.extracted"
  "$st" extract "$2" --all --out "$2.extracted" -q
  grep '  converted: ' "$2/report.txt" | sed 's/^  converted: \([^:]*\):.*/\1/' > "$2.converted" || true
  (cd "$2.extracted" && find . -type f | sed 's|^\./||' | sort | grep -vxF -f "$2.converted" | xargs -d '\n' sha256sum) > "$2.extracted.sha256"
  (cd "$1" && sha256sum -c --quiet "$2.extracted.sha256")
  echo "$2: $(wc -l < "$2.extracted.sha256") records kept as is, all byte-identical (sha256) to their sources; $(wc -l < "$2.converted") converted"
}

echo "== pack, verify, extract: imagenet-sample and cifar10 (2 threads), sources stored byte for byte"
# --restart-interval 0: the byte-for-byte comparison below needs the sources' own bytes (the
# default re-encodes train/ losslessly with restart markers: tests/restart_pixels.sh checks those).
rm -rf imagenet-rsb cifar10-rsb imagenet-rst
timed "pack imagenet-sample" "$st" pack imagenet-sample --out imagenet-rsb -j 2 -q --restart-interval 0
timed "pack imagenet-sample with restart markers (the default)" "$st" pack imagenet-sample --out imagenet-rst -j 2 -q
"$st" verify imagenet-rsb -j 2
compare "$work/imagenet-sample" "$work/imagenet-rsb"
timed "pack cifar10" "$st" pack cifar10 --out cifar10-rsb -j 2 --shard-size 8MiB -q --restart-interval 0
"$st" verify cifar10-rsb -j 2
compare "$work/cifar10" "$work/cifar10-rsb"
"$st" inspect cifar10-rsb | tail -8

echo "== odd files: a PNG named .JPEG, a CMYK, a grayscale, a truncated and a zero-byte file"
rm -rf odd odd-rsb
"$st" synth --out odd --classes 2 --train-per-class 5 --val-per-class 2 --size 32 --odd-files -q
status=0
"$st" pack odd --out odd-rsb -j 2 || status=$?
echo "exit status: $status (3 = complete, some files not stored)"
[ "$status" -eq 3 ]
"$st" verify odd-rsb

echo "== kill -9 during a pack of cifar10, then the same command again"
rm -rf killed-rsb
"$st" pack cifar10 --out killed-rsb -j 2 --shard-size 8MiB -q &
pid=$!
sleep 0.8
kill -9 "$pid"
wait "$pid" || true
echo "after kill -9: $(ls killed-rsb | grep -c '\.rsb$') finished shard(s), $(ls killed-rsb | grep -c '\.tmp$') .tmp file(s), manifest: $(test -e killed-rsb/manifest.json && echo present || echo absent)"
test ! -e killed-rsb/manifest.json
"$st" inspect killed-rsb 2>&1 | tail -1 || true
"$st" pack cifar10 --out killed-rsb -j 2 --shard-size 8MiB 2>&1 | grep -E 'resuming|removed' || true
"$st" verify killed-rsb -j 2
(cd killed-rsb && sha256sum *.rsb *.idx) > killed.sha256
(cd cifar10-rsb && sha256sum -c --quiet "$work/killed.sha256")
echo "resumed dataset: every shard and index file is byte-identical to the uninterrupted pack"

echo "== one flipped byte in a shard"
shard=cifar10-rsb/train-00002.rsb
at=$(( $(stat -c %s "$shard") / 2 ))
flip() { python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^0x20]))" "$shard" "$at"; }
flip
status=0
"$st" verify cifar10-rsb -j 2 || status=$?
echo "verify exit status with byte $at of $shard flipped: $status"
flip
[ "$status" -eq 1 ]
"$st" verify cifar10-rsb -j 2

echo "== pack throughput against decode-only, 1 and 2 threads"
"$st" bench imagenet-sample -j 1 --rounds 2 --scratch "$work/bench"
"$st" bench imagenet-sample -j 2 --rounds 3 --scratch "$work/bench"
