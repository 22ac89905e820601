#!/usr/bin/env bash
# Builds `trainer` with the `cuda`, `cube-cpu` and `mpi` features from crates.io and Debian
# packages only: one binary that trains on an NVIDIA GPU (`--device cuda`), runs the same CubeCL
# kernels on this CPU (`--device cube-cpu`, the stand-in that trainer/cuda/standin.sh checks),
# and joins the processes of `mpirun` (several processes on the GPU host, gpu_check.sh (h)).
#
# CUDA kernels are compiled at run time by NVRTC (cubecl-cuda's `cpp` compiler, enabled by our
# `cuda` feature), so the LLVM 22 / 23.1 difference does not touch the CUDA path; the CPU
# stand-in's kernels are compiled by this LLVM 22, at run time, on first use (cubecl keeps what
# it compiled and tuned under target/environment/ for the next process).
#
# Output: target/dist/trainer (stripped) and target/dist/trainer.xz (what travels to a GPU host).
# Needs: apt-get install llvm-22-dev libpolly-22-dev libzstd-dev libz3-dev openmpi-bin
# libopenmpi-dev libclang-dev
# Runs in about 30 minutes from clean on 2 cores.
#
# The offline LLVM recipe (trainer/cuda/llvm_env.sh): burn's CubeCL backends (cubecl-cuda 0.11
# and cubecl-cpu) link cubecl-llvm, whose build script (tracel-llvm-bundler 23.1.0-4) downloads
# an LLVM bundle from GitHub. Offline, we lay Debian's LLVM 22 where the bundler looks and drop
# its "installed" marker, so nothing is downloaded.
#
# Usage: trainer/cuda/build.sh
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
# Debian's LLVM where the bundler looks, and the CUDA API version (shared with standin.sh);
# from here on, the working directory is the repository root, $root.
source "$(dirname "$0")/llvm_env.sh"

start=$(date +%s)
cargo build --locked --profile dist -p trainer --features cuda,cube-cpu,mpi "$@"
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
# Open MPI's runtime, relocatable, for a GPU host without one (trainer/cuda/openmpi_env.sh).
"$root/trainer/cuda/openmpi_bundle.sh" "$bundle/openmpi.tar.xz" "$bin"
ls -l "$bundle" "$bundle/lib"
du -sh "$bundle"
