#!/usr/bin/env bash
# A soak of the loader daemon: one client reads as a trainer does for the whole run while
# others join and leave around it (some read a few batches and say bye, some are killed
# mid-fill, some ask for a ring and vanish before reading), and every 10 s the daemon's memory
# (anon heap, ring pages), descriptors and threads and the steady reader's rate are sampled.
# At the end: soak.csv, soak.svg (the series over time) and a verdict: nothing may grow
# between the first and the last third of the run beyond a small margin, and the reader's
# rate may not fall.
#
# Usage: tests/soak.sh [MINUTES] [BIN_DIR] [OUT_DIR]    (defaults 30, target/debug, target/soak)
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
minutes=${1:-30}
bin=$(realpath "${2:-target/debug}")
out=$(realpath -m "${3:-target/soak}")
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/shard-tool" synth --out "$work/src" --classes 8 --train-per-class 100 \
  --val-per-class 8 --size 96 >/dev/null
"$bin/shard-tool" pack "$work/src" --out "$work/shards" --quiet >/dev/null 2>&1 || true
sock="$work/loader.sock"
"$bin/loader" serve --shards "$work/shards" --socket "$sock" -j 2 >/dev/null 2>"$work/serve.log" &
daemon=$!
pids+=("$daemon")
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$work/serve.log"; exit 1; }

# The trainer: one client reading a3 batches of 32 as fast as the daemon gives them.
"$bin/loader" fetch --socket "$sock" --job-id soak-trainer --transform a3 -b 32 \
  --steps 1000000000 --reconnect-timeout 0 >/dev/null 2>"$work/trainer.log" &
pids+=($!)

# The others: joining and leaving in every way, a few at a time, until the end.
end=$(($(date +%s) + minutes * 60))
churn() {
  local i=0
  while [ "$(date +%s)" -lt "$end" ]; do
    i=$((i + 1))
    case $((i % 3)) in
      0) # a few batches, then bye
        timeout 20 "$bin/loader" fetch --socket "$sock" --job-id "churn-$i" --transform a1 \
          -b 8 --steps $((1 + i % 7)) --reconnect-timeout 0 >/dev/null 2>&1 || true ;;
      1) # killed mid-fill (the shell's "Killed" notice silenced)
        { timeout -s KILL 0.$((2 + i % 7)) "$bin/loader" fetch --socket "$sock" \
          --job-id "killed-$i" --transform eval --split val -b 16 --steps 100 \
          --reconnect-timeout 0 >/dev/null 2>&1; } 2>/dev/null || true ;;
      2) # status, and a ring asked for and left unread
        "$bin/loader" status --socket "$sock" >/dev/null 2>&1 || true
        { timeout -s KILL 0.05 "$bin/loader" fetch --socket "$sock" --job-id "gone-$i" \
          -b 64 --steps 1 --reconnect-timeout 0 >/dev/null 2>&1; } 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  echo "$i" >"$work/churned.$1"
}
for c in 1 2; do churn "$c" & pids+=($!); done

csv="$out/soak.csv"
echo "seconds,anon_kib,shmem_kib,fds,threads,clients,trainer_samples" >"$csv"
start=$(date +%s)
field() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$daemon/status"; }
while [ "$(date +%s)" -lt "$end" ]; do
  kill -0 "$daemon" 2>/dev/null || { echo "the daemon died"; cat "$work/serve.log"; exit 1; }
  samples=$("$bin/loader" status --socket "$sock" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(len(s["clients"]), sum(c["samples"] for c in s["clients"] if c["job_id"] == "soak-trainer"))
' 2>/dev/null || echo "0 0")
  echo "$(($(date +%s) - start)),$(field RssAnon),$(field RssShmem),$(ls "/proc/$daemon/fd" | wc -l),$(field Threads),${samples/ /,}" >>"$csv"
  sleep 10
done
wait_churn=0
for c in 1 2; do [ -f "$work/churned.$c" ] || wait_churn=1; done
[ "$wait_churn" = 0 ] || sleep 25
churned=$(cat "$work"/churned.* 2>/dev/null | paste -sd+ | bc)

python3 - "$csv" "$out/soak.svg" "$minutes" "$churned" <<'PY'
import csv, sys
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(sys.argv[1]))]
t = [r["seconds"] for r in rows]
rate = [0.0] + [(b["trainer_samples"] - a["trainer_samples"]) / max(b["seconds"] - a["seconds"], 1e-9)
                for a, b in zip(rows, rows[1:])]
series = [("anon heap (MiB)", [r["anon_kib"] / 1024 for r in rows]),
          ("ring pages (MiB)", [r["shmem_kib"] / 1024 for r in rows]),
          ("descriptors", [r["fds"] for r in rows]),
          ("threads", [r["threads"] for r in rows]),
          ("clients", [r["clients"] for r in rows]),
          ("trainer samples/s", rate)]
W, H, pad = 900, 150, 40
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * len(series)}" '
       'font-family="sans-serif" font-size="12">']
for i, (name, ys) in enumerate(series):
    y0, top = H * i, max(max(ys), 1e-9)
    svg.append(f'<text x="{pad}" y="{y0 + 15}">{name}: first {ys[1] if len(ys) > 1 else ys[0]:.1f}, '
               f'max {top:.1f}, last {ys[-1]:.1f}</text>')
    pts = " ".join(f"{pad + (W - 2 * pad) * x / max(t[-1], 1):.1f},"
                   f"{y0 + H - 10 - (H - 35) * y / top:.1f}" for x, y in zip(t, ys))
    svg.append(f'<polyline fill="none" stroke="steelblue" points="{pts}"/>')
    svg.append(f'<line x1="{pad}" x2="{W - pad}" y1="{y0 + H - 10}" y2="{y0 + H - 10}" stroke="#999"/>')
svg.append("</svg>")
open(sys.argv[2], "w").write("\n".join(svg))
n = len(rows)
third = max(n // 3, 1)
verdict, ok = [], True
for name, ys in series:
    first, last = ys[1:third + 1] or ys[:1], ys[-third:]
    a, b = sum(first) / len(first), sum(last) / len(last)
    if name == "trainer samples/s":
        good = b >= 0.8 * a
    elif name == "clients":
        good = True
    else:
        good = max(last) <= max(first) * 1.10 + (4 if "MiB" in name else 2)
    ok &= good
    verdict.append(f"{name:20} first third mean {a:10.1f} max {max(first):10.1f} | "
                   f"last third mean {b:10.1f} max {max(last):10.1f}  {'ok' if good else 'GROWS'}")
print(f"soak: {sys.argv[3]} min, {n} samples, {sys.argv[4]} clients joined and left")
print("\n".join(verdict))
print(f"plot: {sys.argv[2]}")
sys.exit(0 if ok else 1)
PY
