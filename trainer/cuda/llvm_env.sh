# Sourced by build.sh and standin.sh: the environment in which cargo builds the `cuda` and
# `cube-cpu` features offline, from Debian's LLVM 22. Sets $root to the repository root and
# makes it the working directory.
#
# Usage: source trainer/cuda/llvm_env.sh
# (No `set -euo pipefail`: sourced, it would change the caller's shell options.)
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  # Run rather than sourced (or with --help): say how it is used.
  awk 'NR > 0 && /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  exit 0
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
llvm=/usr/lib/llvm-22
if [[ ! -x $llvm/bin/llvm-config ]]; then
    echo "error: $llvm/bin/llvm-config not found." >&2
    echo "fix:   apt-get install llvm-22-dev libpolly-22-dev libzstd-dev libz3-dev" >&2
    exit 1
fi

# The bundler resolves its directory through XDG_DATA_HOME; keep it inside target/ so that the
# build touches nothing outside the repository.
export XDG_DATA_HOME=$root/target/tracel-data
bundle=$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4
mkdir -p "$bundle"
for d in bin include lib; do ln -sfn "$llvm/$d" "$bundle/$d"; done
# Only once: its mtime is a rerun-if-changed input, and touching it rebuilds half the world.
[[ -e $bundle/.tracel-llvm-installed ]] || touch "$bundle/.tracel-llvm-installed"

# llvm-config lists some system libraries by path, which the bundler passes on as
# `-l<file stem>` (`-llibz3`): give the linker a `liblibz3.so` to find.
links=$root/target/tracel-data/link
mkdir -p "$links"
for lib in $("$llvm/bin/llvm-config" --link-static --system-libs); do
    if [[ $lib == /* ]]; then
        stem=$(basename "$lib"); stem=${stem%%.*}
        ln -sfn "$lib" "$links/lib$stem.so"
    fi
done
export RSB_EXTRA_LINK_DIR=$links

# cudarc loads libcuda/libnvrtc at run time; pin its API to CUDA 13.0 (the GPU hosts' toolkit).
export CUDARC_CUDA_VERSION=13000

