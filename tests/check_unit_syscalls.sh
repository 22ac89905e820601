#!/usr/bin/env bash
# Does the loader make only the system calls configs/rsb-loader.service allows?
#
# The unit's SystemCallFilter= answers any other call with EPERM, which the daemon would see as
# a failure in production only. This traces `loader serve` under strace while clients connect
# the ways they do (a fetch through a ring, a group of ranks, status, one that leaves mid-fill,
# a Prometheus scrape of `metrics_listen`, SIGTERM), then checks every call it made against the
# filter as systemd expands it. Run it after changing the daemon or the unit.
#
# Usage: tests/check_unit_syscalls.sh [BIN_DIR]   (default target/debug; needs strace and
#                                                  systemd-analyze)
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
bin=${1:-target/debug}
for tool in strace systemd-analyze; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install $tool)" >&2; exit 2; }
done
if ! strace -f -o /dev/null true 2>/dev/null; then
  echo "skipped: strace cannot trace processes here (ptrace is not permitted in this container)"
  exit 0
fi
work=$(mktemp -d)
trap 'kill "$serve" "${daemon:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/shard-tool" synth --out "$work/src" --classes 4 --train-per-class 70 --val-per-class 4 --size 48 >/dev/null 2>&1
"$bin/shard-tool" pack "$work/src" --out "$work/shards" >/dev/null 2>&1
sock="$work/loader.sock"
strace -f -qq -o "$work/trace" "$bin/loader" serve --shards "$work/shards" --socket "$sock" -j 2 \
  --metrics-listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
serve=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
# strace forwards no signal: the daemon is its child.
daemon=$(pgrep -P "$serve")
"$bin/loader" fetch --socket "$sock" --transform a1 -b 8 --steps 6 >/dev/null
"$bin/loader" fetch --socket "$sock" --transform eval -b 8 --steps 2 --split val >/dev/null
ranks=()
for rank in 0 1; do
  "$bin/loader" fetch --socket "$sock" --transform a3 -b 4 --steps 3 --world-size 2 --rank "$rank" >/dev/null &
  ranks+=($!)
done
wait "${ranks[@]}"
timeout 2 "$bin/loader" fetch --socket "$sock" --transform a1 -b 32 --steps 1000 >/dev/null 2>&1 || true
"$bin/loader" status --socket "$sock" >/dev/null
# The endpoint's port (0 above: any free one), from the daemon's start line.
metrics=$(grep -oE 'http://[0-9.:]+/metrics' "$work/serve.log" | head -n 1)
python3 -c 'import sys, urllib.request; assert b"loader_samples_total" in urllib.request.urlopen(sys.argv[1]).read()' "$metrics"
sleep 1.5 # one trim after the producers ended
kill -TERM "$daemon"
wait "$serve" || true

# Every call name strace saw (its lines are "PID name(args) = result").
grep -oE '^[0-9]+ +[a-z_0-9]+\(' "$work/trace" | sed -E 's/^[0-9]+ +//; s/\($//' | sort -u >"$work/made"
# The unit's filter, as systemd expands its groups: allowed, then denied.
# A group lists its member groups by name: expanded recursively.
members() {
  systemd-analyze syscall-filter "$1" | tail -n +2 | grep -vE '^ *(#|$)' | tr -d ' ' | while read -r w; do
    if [[ $w == @* ]]; then members "$w"; else echo "$w"; fi
  done
}
expand() { for g in "$@"; do if [[ $g == @* ]]; then members "$g"; else echo "$g"; fi; done | sort -u; }
mapfile -t filter < <(sed -n 's/^SystemCallFilter=//p' configs/rsb-loader.service)
allow=(); deny=()
for line in "${filter[@]}"; do
  if [[ $line == ~* ]]; then read -ra words <<<"${line#\~}"; deny+=("${words[@]}"); else read -ra words <<<"$line"; allow+=("${words[@]}"); fi
done
expand "${allow[@]}" >"$work/allow"
if [ "${#deny[@]}" -gt 0 ]; then expand "${deny[@]}" >"$work/deny"; else : >"$work/deny"; fi
comm -23 "$work/allow" "$work/deny" >"$work/allowed"
refused=$(comm -23 "$work/made" "$work/allowed")
echo "loader serve made $(wc -l <"$work/made") distinct system calls; the unit allows $(wc -l <"$work/allowed")"
if [ -n "$refused" ]; then
  echo "refused by configs/rsb-loader.service's SystemCallFilter=: $(echo "$refused" | tr '\n' ' ')" >&2
  exit 1
fi
echo "every one is allowed by configs/rsb-loader.service"
