# Sourced: points Open MPI and PMIx at the runtime that openmpi_bundle.sh packed, unpacked in
# directory $1 (every path Open MPI was built with, redirected; its libraries first).
#
# Usage: source trainer/cuda/openmpi_env.sh DIR
# (No `set -euo pipefail`: sourced, it would change the caller's shell options.)
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  # Run rather than sourced (or with --help): say how it is used.
  awk 'NR > 0 && /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  exit 0
fi
ompi=$(cd "$1" && pwd)
export OPAL_PREFIX=$ompi OPAL_BINDIR=$ompi/bin OPAL_LIBDIR=$ompi/lib \
    OPAL_PKGLIBDIR=$ompi/lib/openmpi3 OPAL_DATADIR=$ompi/share \
    OPAL_PKGDATADIR=$ompi/share/openmpi OPAL_SYSCONFDIR=$ompi/etc \
    PMIX_PREFIX=$ompi/lib/pmix2 PMIX_MCA_mca_base_component_path=$ompi/lib/pmix2/lib/pmix
export LD_LIBRARY_PATH=$ompi/lib:${LD_LIBRARY_PATH:-}
export PATH=$ompi/bin:$PATH
