//! The one SIMD dispatch policy of every kernel in this crate.
//!
//! The crate is compiled for baseline x86-64; each kernel's inner loop runs through [`run`],
//! which compiles it again for the widest vectors the CPU has (pulp's dispatch, the one gemm
//! uses under the convolution) and picks the version at run time. `trainer --cpu-ext none`
//! caps the process at the baseline code ([`cap`]), as `loader --cpu-ext none` does for the
//! loader's kernels, to measure what the vectors buy; the kernels give the same bits either
//! way (tests/same_bits.rs), since every sum keeps its order whatever the vector width. gemm's
//! own kernels, under the convolution's matrix products, keep their own dispatch.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level a kernel may be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuExt {
    /// Baseline x86-64 (SSE2), or whatever the target has elsewhere.
    None = 0,
    /// x86-64-v3: AVX2 and FMA.
    Avx2 = 1,
    /// x86-64-v4: AVX-512 (F, BW, CD, DQ, VL).
    Avx512 = 2,
}

/// `--cpu-ext`: what the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuExtChoice {
    /// The most the CPU has.
    #[default]
    Auto,
    /// One level at most (an error where the CPU lacks it).
    Cap(CpuExt),
}

/// An extension asked for that this CPU lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--cpu-ext {0}: this CPU does not have it (use auto or none)")]
pub struct CpuExtError(&'static str);

/// The process-wide cap, as a [`CpuExt`] discriminant; `u8::MAX`: none.
static CAP: AtomicU8 = AtomicU8::new(u8::MAX);
const CAP_NONE: u8 = CpuExt::None as u8;
const CAP_AVX2: u8 = CpuExt::Avx2 as u8;

impl CpuExt {
    /// The most this CPU has.
    pub fn detect() -> CpuExt {
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V4::try_new().is_some() {
                return CpuExt::Avx512;
            }
            if pulp::x86::V3::try_new().is_some() {
                return CpuExt::Avx2;
            }
        }
        CpuExt::None
    }

    /// What kernels run with now: [`CpuExt::detect`], capped by [`cap`].
    pub fn current() -> CpuExt {
        let detected = CpuExt::detect();
        match CAP.load(Ordering::Relaxed) {
            CAP_NONE => CpuExt::None,
            CAP_AVX2 => detected.min(CpuExt::Avx2),
            _ => detected,
        }
    }

    /// The name, as `--cpu-ext` takes it.
    pub fn name(self) -> &'static str {
        match self {
            CpuExt::None => "none",
            CpuExt::Avx2 => "avx2",
            CpuExt::Avx512 => "avx512",
        }
    }
}

/// Caps the level every kernel runs with from now on, for the whole process.
///
/// # Errors
/// [`CpuExtError`] if `choice` asks for a level this CPU lacks.
pub fn cap(choice: CpuExtChoice) -> Result<(), CpuExtError> {
    let level = match choice {
        CpuExtChoice::Auto => u8::MAX,
        CpuExtChoice::Cap(ext) if ext <= CpuExt::detect() => ext as u8,
        CpuExtChoice::Cap(ext) => return Err(CpuExtError(ext.name())),
    };
    CAP.store(level, Ordering::Relaxed);
    Ok(())
}

/// `body()` compiled for the level [`CpuExt::current`] names.
///
/// Give it a closure marked `#[inline(always)]`, and write the hot loops in it or in
/// `#[inline(always)]` functions it calls: anything that stays a call is compiled for
/// baseline x86-64 outside the dispatch.
#[inline(always)]
pub fn run<R>(body: impl FnOnce() -> R) -> R {
    arch().dispatch(body)
}

/// pulp's dispatch for the current level: the cap read once per call, the CPU's features
/// detected by pulp alone (a cached check).
#[inline(always)]
fn arch() -> pulp::Arch {
    #[cfg(target_arch = "x86_64")]
    match CAP.load(Ordering::Relaxed) {
        CAP_NONE => pulp::Arch::Scalar,
        CAP_AVX2 => pulp::x86::V3::try_new().map_or(pulp::Arch::Scalar, pulp::Arch::V3),
        _ => pulp::Arch::new(),
    }
    #[cfg(not(target_arch = "x86_64"))]
    pulp::Arch::new()
}

impl std::str::FromStr for CpuExtChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<CpuExtChoice, String> {
        match s {
            "auto" => Ok(CpuExtChoice::Auto),
            "none" => Ok(CpuExtChoice::Cap(CpuExt::None)),
            "avx2" => Ok(CpuExtChoice::Cap(CpuExt::Avx2)),
            "avx512" => Ok(CpuExtChoice::Cap(CpuExt::Avx512)),
            _ => Err(format!("{s:?} is not auto, none, avx2 or avx512")),
        }
    }
}

impl std::fmt::Display for CpuExtChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuExtChoice::Auto => "auto",
            CpuExtChoice::Cap(ext) => ext.name(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_as_the_flag_takes_them() {
        for name in ["auto", "none", "avx2", "avx512"] {
            let choice: CpuExtChoice = name.parse().unwrap();
            assert_eq!(choice.to_string(), name);
        }
        let err = "sse9".parse::<CpuExtChoice>().unwrap_err();
        assert!(err.contains("auto, none, avx2 or avx512"), "{err}");
    }

    #[test]
    fn a_level_the_cpu_lacks_is_refused_and_changes_nothing() {
        // Only the refusal is tested here: setting the cap would change it under the other
        // tests of this binary (tests/same_bits.rs caps it in a binary of its own).
        if CpuExt::detect() < CpuExt::Avx512 {
            let err = cap(CpuExtChoice::Cap(CpuExt::Avx512)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "--cpu-ext avx512: this CPU does not have it (use auto or none)"
            );
        }
        assert_eq!(CpuExt::current(), CpuExt::detect());
    }

    #[test]
    fn run_returns_what_the_body_returns() {
        let v = [1.0f32, 2.0, 3.0];
        assert_eq!(
            run(
                #[inline(always)]
                || v.iter().sum::<f32>()
            ),
            6.0
        );
    }
}
