# (sourced) Sets st, ld and tr to the shard-tool, loader and trainer binaries of RSB_BIN_DIR,
# or builds them (cargo build --release --locked) into target/release when it is unset.
#
# Usage: source tests/bins.sh   (from the repository root, in a script that set -euo pipefail)
#   No set -euo pipefail of its own: sourced, it would change the options of the script that
#   sources it. --help is its callers'.
if [ -z "${RSB_BIN_DIR:-}" ]; then
  cargo build --locked --release -p shard-tool -p loader -p trainer
  RSB_BIN_DIR=target/release
fi
st="$RSB_BIN_DIR/shard-tool"
ld="$RSB_BIN_DIR/loader"
tr="$RSB_BIN_DIR/trainer"
export st ld tr
