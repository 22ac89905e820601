//! The CubeCL CPU runtime's autotune, budgeted for a stand-in.
//!
//! cubecl tunes each new matmul shape by launching every candidate kernel, by default a warm-up
//! and three to ten samples each. On the CPU runtime the "unit" matmul candidates pick their
//! units per cube from fixed stage sizes (8 and more), not from the machine's cores, and
//! cubecl-cpu runs each unit of a cube on its own thread, meeting at a spinning `sync_cube`
//! barrier: with more units than cores a launch that takes milliseconds on 16 cores took 15 to
//! 55 s on this machine's 2 (docs/gpu.md "The GPU's code path on the CPU", known issues;
//! `examples/cube_cpu_repro.rs unit-matmul`). `cube-cpu` checks what the GPU's kernels
//! compute, not how fast, so one sample per candidate is enough to let tuning pick one and
//! still runs the same autotune code the GPU runs.

use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

/// Sets cubecl's autotune to one warm-up and one sample per candidate, on top of whatever
/// `cubecl.toml` and the `CUBECL_*` variables say otherwise. Returns whether it took effect:
/// cubecl's configuration is read once per process, so a CubeCL device used before this one
/// (a GPU in the same process) keeps the configuration it was opened with.
pub fn one_sample_autotune() -> bool {
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.autotune.bench.min_samples = 1;
    config.autotune.bench.max_samples = 1;
    CubeClRuntimeConfig::try_set(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_cube_cpu_leaves_one_sample_per_candidate() {
        // Whichever test opened the device first set it; opening it again must keep it so.
        crate::device::DeviceKind::CubeCpu
            .device(crate::device::Precision::F32)
            .expect("cube-cpu opens in a build with the feature");
        let bench = &CubeClRuntimeConfig::get().autotune.bench;
        assert_eq!(bench.samples(), (1, 1));
    }
}
