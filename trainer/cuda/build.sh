#!/usr/bin/env bash
# Builds `trainer` with the `cuda` feature from crates.io and Debian packages only.
#
# burn 0.22.1's CUDA backend (cubecl-cuda 0.11) always links cubecl-llvm, whose build script
# (tracel-llvm-bundler 23.1.0-4) downloads an LLVM bundle from GitHub. Offline, we lay Debian's
# LLVM 22 where the bundler looks and drop its "installed" marker, so nothing is downloaded.
# Kernels are compiled at run time by NVRTC (cubecl-cuda's `cpp` compiler, enabled by our `cuda`
# feature), so the LLVM 22 / 23.1 difference only touches code that the CUDA path never calls.
#
# Output: target/dist/trainer (stripped) and target/dist/trainer.xz (what travels to a GPU host).
# Needs: apt-get install llvm-22-dev libpolly-22-dev libzstd-dev libz3-dev
# Runs in about 30 minutes from clean on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
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

start=$(date +%s)
cargo build --locked --profile dist -p trainer --features cuda "$@"
echo "built in $(( $(date +%s) - start )) s"
bin=target/dist/trainer
ls -l "$bin"
# What travels: the compressed binary, and the shared libraries it links beyond glibc and
# libstdc++ (LLVM's system libraries such as libz3), which a GPU image may lack.
bundle=target/gpu-bundle
rm -rf "$bundle" && mkdir -p "$bundle/lib"
xz -T0 -6 -c "$bin" > "$bundle/trainer.xz"
ldd "$bin" | awk '$3 ~ /^\// {print $3}' \
    | grep -vE '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' \
    | xargs -r cp -L -t "$bundle/lib"
ls -l "$bundle" "$bundle/lib"
du -sh "$bundle"
