#!/usr/bin/env bash
# The shipped loader unit (configs/rsb-loader.service) under a real systemd as PID 1: a Debian
# bookworm root made by debootstrap from Debian's packages, booted with systemd-nspawn. It
# checks what the unit promises, on the live unit:
#   1. `systemctl start` returns once the daemon notified READY=1 (Type=notify);
#   2. its socket has the unit's group (rsb) and mode (0660), in /run/rsb (0750);
#   3. a client in group rsb fetches batches through it, the same bytes as `loader fetch`
#      gives anywhere;
#   4. `systemctl kill -s KILL` is followed by a restart (Restart=always), and a client that
#      was reading goes on where it was: its batches are an uninterrupted fetch's;
#   5. `systemd-analyze security` scores the live unit;
#   6. the journal's lines of the unit.
# Then the container powers off.
#
# Usage: tests/systemd_unit.sh [BIN_DIR]   (default target/debug; root, debootstrap and
#                                      systemd-container, which it installs if it can)
#
# The root is kept in $RSB_SYSTEMD_ROOT (default /var/tmp/rsb-systemd-root) between runs.
# Exits 0 with "skipped: ..." where it cannot run (not root, no way to get the tools or the
# packages, or a container that systemd cannot boot in), 1 on a failed check.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug}")
root=${RSB_SYSTEMD_ROOT:-/var/tmp/rsb-systemd-root}
skip() { echo "skipped: $*"; exit 0; }
fail() { echo "FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || skip "booting a container needs root"
for tool in debootstrap systemd-nspawn nsenter; do
  if ! command -v "$tool" >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq debootstrap systemd-container) >/dev/null 2>&1 ||
      skip "$tool is not installed and could not be (apt-get install debootstrap systemd-container)"
  fi
done
for b in loader shard-tool; do [ -x "$bin/$b" ] || fail "$bin/$b is not built"; done

if [ ! -x "$root/lib/systemd/systemd" ]; then
  echo "making a Debian bookworm root in $root (debootstrap, about a minute)"
  rm -rf "$root"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,passwd bookworm "$root" \
    http://deb.debian.org/debian >/dev/null ||
    skip "debootstrap could not make a Debian root (no network to Debian's mirror?)"
fi

# The unit and config as shipped, the config's dataset path set; the binaries of this build.
install -m 0755 "$bin/loader" "$bin/shard-tool" "$root/usr/local/bin/"
install -D -m 0644 configs/rsb-loader.service "$root/etc/systemd/system/rsb-loader.service"
mkdir -p "$root/etc/rsb"
sed 's#^shards = .*#shards = "/srv/shards"#' configs/loader.toml >"$root/etc/rsb/loader.toml"
chroot "$root" sh -c 'getent group rsb >/dev/null || groupadd rsb
                      id trainer >/dev/null 2>&1 || useradd -m -G rsb trainer'
rm -rf "$root/srv/shards" "$root/srv/src"
"$bin/shard-tool" synth --out "$root/srv/src" --classes 4 --train-per-class 70 \
  --val-per-class 4 --size 64 >/dev/null
"$bin/shard-tool" pack "$root/srv/src" --out "$root/srv/shards" --quiet >/dev/null 2>&1 || true
[ -f "$root/srv/shards/manifest.json" ] || fail "the dataset did not pack"

log=$(mktemp)
systemd-nspawn -D "$root" --boot --register=no --keep-unit --console=pipe \
  --machine=rsb-unit-test >"$log" 2>&1 </dev/null &
nspawn=$!
cleanup() {
  kill "$nspawn" 2>/dev/null || true
  wait "$nspawn" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT
# The container's PID 1 is nspawn's child once it has become systemd (before that, the child
# is nspawn's own helper): looked up again until systemd answers there, for at most 90 s.
init=""
inside() { nsenter --target "$init" --mount --uts --ipc --net --pid -- "$@"; }
state=""
for _ in $(seq 900); do
  kill -0 "$nspawn" 2>/dev/null || skip "systemd-nspawn could not boot a container here: $(tail -3 "$log")"
  init=$(pgrep -P "$nspawn" -x systemd | head -1 || true)
  if [ -n "$init" ]; then
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
  fi
  sleep 0.1
done
case "$state" in running | degraded) ;; *) skip "systemd did not come up in the container (state '$state', PID 1 ${init:-none}): $(tail -3 "$log")" ;; esac
echo "container booted: $(inside systemctl --version | head -1), system $state, PID 1 $(inside cat /proc/1/comm)"

# 1. Started, and active only once it said READY=1.
inside systemctl daemon-reload
started=$(date +%s.%N)
inside systemctl start rsb-loader || { inside journalctl -u rsb-loader --no-pager | tail -20; fail "the unit did not start"; }
echo "systemctl start returned after $(echo "$(date +%s.%N) - $started" | bc) s:" \
  "$(inside systemctl show rsb-loader -p Type -p ActiveState -p SubState -p StatusText | paste -sd ' ')"
[ "$(inside systemctl show rsb-loader -p ActiveState --value)" = active ] || fail "not active"

# 2. The socket: group rsb, mode 0660, in a 0750 /run/rsb.
sock=$(inside stat -c 'uid %u %G %a %F' /run/rsb/loader.sock)
dir=$(inside stat -c 'uid %u %G %a' /run/rsb)
echo "socket /run/rsb/loader.sock: $sock; /run/rsb: $dir"
case "$sock" in *" rsb 660 socket") ;; *) fail "socket is $sock, not group rsb mode 660" ;; esac
case "$dir" in *" rsb 750") ;; *) fail "/run/rsb is $dir, not group rsb mode 750" ;; esac

# 3. A client in group rsb reads batches; the same as an uninterrupted fetch anywhere.
fetch() { inside runuser -u trainer -- /usr/local/bin/loader fetch --socket /run/rsb/loader.sock \
  --transform a1 -b 4 --seed 7 --digests --job-id "unit-$1" --steps "$2" "${@:3}"; }
fetch ref 60 >"$root/tmp/ref.txt" 2>/dev/null || fail "a client in group rsb could not fetch"
grep -c '^epoch' "$root/tmp/ref.txt" | xargs echo "client in group rsb: fetched batches:"
inside runuser -u nobody -- /usr/local/bin/loader status --socket /run/rsb/loader.sock >/dev/null 2>&1 &&
  fail "a user outside group rsb reached the socket"
echo "a user outside group rsb is refused at the socket"

# 4. SIGKILL mid-fetch: systemd restarts the daemon, the client reconnects and goes on.
before=$(inside systemctl show rsb-loader -p NRestarts --value)
fetch killed 60 --reconnect-timeout 30 >"$root/tmp/killed.txt" 2>"$root/tmp/killed.err" &
reader=$!
for _ in $(seq 200); do
  read_so_far=$(grep -c '^epoch' "$root/tmp/killed.txt" 2>/dev/null || true)
  [ "${read_so_far:-0}" -ge 10 ] && break
  sleep 0.05
done
pid_before=$(inside systemctl show rsb-loader -p MainPID --value)
inside systemctl kill -s KILL rsb-loader
wait "$reader" || fail "the client did not survive the restart: $(tail -3 "$root/tmp/killed.err")"
after=$(inside systemctl show rsb-loader -p NRestarts --value)
pid_after=$(inside systemctl show rsb-loader -p MainPID --value)
echo "systemctl kill -s KILL after the client's batch ${read_so_far:-?}: daemon pid $pid_before ->" \
  "$pid_after, NRestarts $before -> $after; the client: $(grep -o '[0-9]* reconnect(s)' \
  "$root/tmp/killed.txt" || echo '?')"
[ "$after" -gt "$before" ] || fail "no restart after SIGKILL"
diff <(grep '^epoch' "$root/tmp/ref.txt" | sed 's/^/ /') \
  <(grep '^epoch' "$root/tmp/killed.txt" | sed 's/^/ /') >/dev/null ||
  fail "the batches after the restart are not an uninterrupted fetch's"
echo "the killed-and-restarted fetch gave the uninterrupted fetch's 60 batches, byte for byte"

# 5. The live unit's exposure score.
echo "systemd-analyze security rsb-loader: $(inside systemd-analyze security rsb-loader --no-pager | tail -1)"

# 6. The journal.
echo "journal (journalctl -u rsb-loader):"
inside journalctl -u rsb-loader --no-pager -o short-monotonic | tail -15

inside systemctl poweroff || true
wait "$nspawn" 2>/dev/null || true
echo "ok"
