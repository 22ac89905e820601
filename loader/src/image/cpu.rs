/*!
The CPU extensions the loader's kernels use: one type decides the dispatch of the resize
passes, the geometry samplers and the RandAugment blends.

A [`CpuExt`] is proof that the CPU has what it names: only [`CpuExt::detect`] and
[`CpuExt::current`] make one with AVX2, after checking the CPU, so the safe functions that take
one may call AVX2 code soundly (no `simd: bool` a caller could get wrong). Every kernel gives
the same bytes whatever the extension, and tests hold the SIMD kernels to the portable ones.
`loader --cpu-ext none` caps the whole process at the portable kernels, as fast_image_resize's
benchmarks do, to measure what the SIMD kernels buy.
*/

use std::sync::atomic::{AtomicU8, Ordering};

/// What a kernel may use; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuExt(Level);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    None = 0,
    Avx2 = 1,
}

/// The process-wide cap, as a [`Level`]; `u8::MAX`: none.
static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

impl CpuExt {
    /// Portable code only.
    pub const NONE: CpuExt = CpuExt(Level::None);

    /// The most this CPU has.
    pub fn detect() -> CpuExt {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return CpuExt(Level::Avx2);
        }
        CpuExt::NONE
    }

    /// What kernels made now should use: [`CpuExt::detect`], capped by [`CpuExt::cap`].
    pub fn current() -> CpuExt {
        let detected = CpuExt::detect();
        match CAP.load(Ordering::Relaxed) {
            0 => CpuExt::NONE,
            _ => detected,
        }
    }

    /// Caps what [`CpuExt::current`] returns for the rest of the process (kernels already made
    /// keep theirs).
    ///
    /// # Errors
    /// [`CpuExtError`] if `choice` asks for an extension this CPU lacks.
    pub fn cap(choice: CpuExtChoice) -> Result<(), CpuExtError> {
        let cap = match choice {
            CpuExtChoice::Auto => u8::MAX,
            CpuExtChoice::None => Level::None as u8,
            CpuExtChoice::Avx2 if CpuExt::detect().has_avx2() => Level::Avx2 as u8,
            CpuExtChoice::Avx2 => return Err(CpuExtError("avx2")),
        };
        CAP.store(cap, Ordering::Relaxed);
        Ok(())
    }

    /// Whether AVX2 kernels may run.
    pub fn has_avx2(self) -> bool {
        self.0 == Level::Avx2
    }

    /// The name, as `--cpu-ext` takes it.
    pub fn name(self) -> &'static str {
        match self.0 {
            Level::None => "none",
            Level::Avx2 => "avx2",
        }
    }
}

/// An extension asked for that this CPU lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--cpu-ext {0}: this CPU does not have it (use auto or none)")]
pub struct CpuExtError(&'static str);

/// `--cpu-ext`: what the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuExtChoice {
    /// The most the CPU has.
    #[default]
    Auto,
    /// Portable kernels only.
    None,
    /// AVX2 (an error where the CPU lacks it).
    Avx2,
}

impl std::str::FromStr for CpuExtChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<CpuExtChoice, String> {
        match s {
            "auto" => Ok(CpuExtChoice::Auto),
            "none" => Ok(CpuExtChoice::None),
            "avx2" => Ok(CpuExtChoice::Avx2),
            _ => Err(format!("{s:?} is not auto, none or avx2")),
        }
    }
}

impl std::fmt::Display for CpuExtChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuExtChoice::Auto => "auto",
            CpuExtChoice::None => "none",
            CpuExtChoice::Avx2 => "avx2",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_avx2_is_only_granted_by_the_cpu() {
        assert_eq!("none".parse(), Ok(CpuExtChoice::None));
        assert!("sse9".parse::<CpuExtChoice>().is_err());
        assert!(!CpuExt::NONE.has_avx2());
        let detected = CpuExt::detect();
        assert_eq!(
            CpuExt::cap(CpuExtChoice::Avx2).is_ok(),
            detected.has_avx2(),
            "avx2 is granted exactly when the CPU has it"
        );
        // The cap is process-wide; other tests of this binary run with `auto`, which this
        // leaves in place.
        CpuExt::cap(CpuExtChoice::Auto).unwrap();
        assert_eq!(CpuExt::current(), detected);
    }
}
