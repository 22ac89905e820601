#!/usr/bin/env bash
# Packs this machine's Open MPI runtime (Debian's openmpi-bin 4.1) as a relocatable tarball, for
# a GPU host that has none: `mpirun` and `orted`, their plugins and PMIx's, the help texts and
# default parameters, and every shared library they and BINARY link beyond glibc. On the host,
# unpack it and `source trainer/cuda/openmpi_env.sh DIR` (gpu_check.sh does both).
# Usage: openmpi_bundle.sh OUT.tar.xz [BINARY]
# Checked here with the system's Open MPI directories moved away: `mpirun -np 2` of the trainer
# ran from the unpacked tarball alone.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
fi
out=$1
binary=${2:-}
multiarch=/usr/lib/x86_64-linux-gnu
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir=$stage/ompi
mkdir -p "$dir/bin" "$dir/lib" "$dir/share" "$dir/etc"
cp -L "$(command -v orterun)" "$dir/bin/mpirun"
cp -L "$(command -v orted)" "$dir/bin/orted"
cp -rL "$multiarch/openmpi/lib/openmpi3" "$dir/lib/openmpi3"
cp -rL "$multiarch/pmix2" "$dir/lib/pmix2"
cp -r /usr/share/openmpi "$dir/share/openmpi"
cp /etc/openmpi/* "$dir/etc/"
for f in "$dir"/bin/* "$dir"/lib/openmpi3/*.so "$dir"/lib/pmix2/lib/pmix/*.so ${binary:+"$binary"}; do
    ldd "$f" 2>/dev/null | awk '$3 ~ /^\// {print $3}'
done | sort -u \
    | grep -vE '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' \
    | xargs -r cp -L -t "$dir/lib"
tar -C "$stage" -cJf "$out" ompi
ls -l "$out"
