//! How the process's allocator treats the CPU backend's tensors: freed memory is kept for the
//! next step instead of being handed back to the kernel.
//!
//! A training step on burn-flex allocates and frees every activation and gradient, tens of
//! megabytes each. glibc's malloc serves blocks above its mmap threshold (adjusted as it goes,
//! but each thread's arena on its own) with fresh mappings and returns them at `free`, so each
//! step faulted in and zeroed its memory again page by page: 33,000 page faults a ResNet-50
//! step at batch 8 (130 MB), 4 % of its time. With the threshold at its maximum and trimming
//! off, the steady state takes about 1,300.

/// Keeps freed memory in the process for reuse (glibc's `M_MMAP_THRESHOLD` at its 32 MiB
/// maximum, `M_TRIM_THRESHOLD` at 2 GiB). Blocks above 32 MiB are still mapped and returned.
/// A no-op on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD_MAX: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;
        // SAFETY: mallopt only changes malloc's tuning parameters; both values are in range
        // (a rejected one returns 0 and leaves glibc's default, which is harmless).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
