//! Which device a model runs on: `flex` (burn's flex CPU backend; `cpu` is the same),
//! `cuda[:N]` (the `cuda` feature) or `cube-cpu` (the `cube-cpu` feature: the CUDA backend's
//! CubeCL kernels compiled for the CPU, a stand-in that runs the GPU's code path here), and in
//! which float types; the CubeCL CPU runtime's settings for `--device cube-cpu` (`cube_cpu`,
//! with the `cube-cpu` feature), and how the host's allocator keeps the CPU backend's freed
//! memory ([`host_memory`]).

#[cfg(feature = "cube-cpu")]
pub mod cube_cpu;
pub mod host_memory;

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, FloatDType};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// burn's flex CPU backend, on all cores (`flex`, or `cpu`).
    Flex,
    /// An NVIDIA GPU by index.
    Cuda(usize),
    /// burn's CubeCL CPU runtime: the kernels, fusion, autotune and memory manager the CUDA
    /// backend runs, compiled by LLVM for this CPU. Slow to start (kernels compile on first
    /// use), for checking the GPU's code path where there is no GPU.
    CubeCpu,
}

/// Floating-point precision of parameters and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats everywhere.
    F32,
    /// bfloat16 parameters and activations (the device's default float type).
    Bf16,
    /// timm's `--amp` in bf16: f32 parameters, gradients, optimizer state, batch norm and loss;
    /// convolutions and the classifier in bf16 (the trainer's `amp` module). A recipe's `amp =
    /// true`.
    Amp,
}

/// The float type the convolutions and matmuls of an amp model (`model::amp`) compute in.
pub(crate) const AMP_COMPUTE: FloatDType = FloatDType::BF16;

impl Precision {
    /// The float type convolutions and matmuls compute in, when it is not the parameters'.
    pub fn compute(self) -> Option<FloatDType> {
        match self {
            Precision::Amp => Some(AMP_COMPUTE),
            Precision::F32 | Precision::Bf16 => None,
        }
    }

    /// Machine epsilon of the type the convolutions round to (f32's 2⁻²³, bf16's 2⁻⁷): the
    /// relative size of the smallest change a rounding of theirs makes.
    pub fn epsilon(self) -> f64 {
        match self {
            Precision::F32 => f64::from(f32::EPSILON),
            Precision::Bf16 | Precision::Amp => 2f64.powi(-7),
        }
    }

    /// The precision of a run: `--dtype` when given, else the recipe's `amp` (amp, or f32);
    /// with a line to say once when the two disagree or what amp does on the CPU.
    pub fn resolve(
        dtype: Option<Precision>,
        recipe_amp: bool,
        device: DeviceKind,
    ) -> (Precision, Option<String>) {
        let precision = dtype.unwrap_or(if recipe_amp {
            Precision::Amp
        } else {
            Precision::F32
        });
        let note = match (dtype, recipe_amp, precision, device) {
            (Some(d), true, _, _) if d != Precision::Amp => Some(format!(
                "the recipe says amp = true; --dtype {} trains in pure {} instead",
                d.name(),
                d.name()
            )),
            (_, _, Precision::Amp, DeviceKind::Flex) => Some(
                "amp on the CPU: convolutions and the classifier round to bf16 as on a GPU, but \
                 burn-flex computes them in f32 and converts, so amp is no faster here"
                    .into(),
            ),
            _ => None,
        };
        (precision, note)
    }

    /// As `--dtype` names it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Amp => "amp",
        }
    }
}

/// Errors choosing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not `flex`, `cpu`, `cuda`, `cuda:N` or `cube-cpu`.
    #[error("unknown device '{0}': use flex (or cpu), cuda, cuda:N or cube-cpu")]
    Parse(String),
    /// CUDA asked of a build without it.
    #[error(
        "this trainer was built without CUDA support; build it with trainer/cuda/build.sh \
         (cargo build --features cuda) to use '{0}'"
    )]
    NoCuda(DeviceKind),
    /// The CubeCL CPU stand-in asked of a build without it.
    #[error(
        "this trainer was built without the CubeCL CPU runtime; build it with \
         trainer/cuda/build.sh (cargo build --features cube-cpu) to use 'cube-cpu'"
    )]
    NoCubeCpu,
    /// No NVIDIA driver library on this machine.
    #[error(
        "{0}: the NVIDIA driver library (libcuda.so.1) cannot be loaded; is this a GPU machine \
         with the driver installed, and is its directory on LD_LIBRARY_PATH?"
    )]
    NoDriver(DeviceKind),
    /// The backend refused the precision.
    #[error("device {device} cannot use {precision:?}: {reason}")]
    Precision {
        /// The device.
        device: DeviceKind,
        /// What was asked.
        precision: Precision,
        /// burn's reason.
        reason: String,
    },
}

impl DeviceError {
    /// Whether the user asked for what this build or backend cannot give (a device name, CUDA
    /// in a build without it, a float type the backend refuses), rather than the machine
    /// failing (no driver).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, DeviceError::NoDriver(_))
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Flex => f.write_str("flex"),
            DeviceKind::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceKind::CubeCpu => f.write_str("cube-cpu"),
        }
    }
}

impl FromStr for DeviceKind {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flex" | "cpu" => Ok(DeviceKind::Flex),
            "cuda" => Ok(DeviceKind::Cuda(0)),
            "cube-cpu" => Ok(DeviceKind::CubeCpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceKind::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl DeviceKind {
    /// Whether its backend can all-reduce across devices (burn's `DistributedContext`): NCCL on
    /// CUDA. flex has no collectives; the CubeCL CPU runtime has one device and its server
    /// answers an all-reduce with cubecl's `NoDeviceTransport`.
    pub fn has_collectives(self) -> bool {
        matches!(self, DeviceKind::Cuda(_))
    }

    /// The device without gradient recording, with `precision` as its default float type.
    pub fn device(self, precision: Precision) -> Result<Device, DeviceError> {
        let mut device = match self {
            DeviceKind::Flex => Device::flex(),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda(i) => {
                // cubecl panics on a worker thread when the driver is missing; say it plainly.
                if !driver_loadable() {
                    return Err(DeviceError::NoDriver(self));
                }
                Device::cuda(i)
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda(_) => return Err(DeviceError::NoCuda(self)),
            #[cfg(feature = "cube-cpu")]
            DeviceKind::CubeCpu => {
                crate::device::cube_cpu::one_sample_autotune();
                Device::cpu()
            }
            #[cfg(not(feature = "cube-cpu"))]
            DeviceKind::CubeCpu => return Err(DeviceError::NoCubeCpu),
        };
        // A float type the backend cannot compute in would fail deep inside an op (a panic);
        // refuse it here, naming it. (burn-cpu's docs say its runtime drops bf16, but
        // cubecl-cpu 0.11.3 registers it and it runs: the backend's own answer decides.)
        let wanted = match precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(FloatDType::BF16),
            Precision::Amp => precision.compute(),
        };
        if let Some(dtype) = wanted.filter(|d| !device.supports_dtype(*d)) {
            return Err(DeviceError::Precision {
                device: self,
                precision,
                reason: format!("the backend has no {dtype:?} type to compute in"),
            });
        }
        if precision == Precision::Bf16 {
            device
                .configure(FloatDType::BF16)
                .map_err(|e| DeviceError::Precision {
                    device: self,
                    precision,
                    reason: format!("{e:?}"),
                })?;
        }
        Ok(device)
    }
}

/// Makes burn's default device flex for this process, whatever backends the build holds.
///
/// The trainer names every device it uses; only burn itself falls back on `Device::default()`,
/// which picks CUDA first in a build with the `cuda` feature (then cube-cpu, then flex). One
/// such place is on every resume: burn-optim 0.22.1's `ModuleOptimizer::load_record` builds the
/// optimizer state there, to move it to each parameter's device at the next step. In a CUDA
/// build that opened a CUDA context on GPU 0 for a run on flex, `cube-cpu` or `cuda:3`, and
/// panicked where there is no driver (found by trainer/cuda/standin.sh: `--resume` on
/// cube-cpu). On flex the state is host memory, moved once to the run's device.
///
/// # Safety
/// Changes the process environment: call it before any other thread exists (first in `main`).
pub unsafe fn pin_default_device() {
    // SAFETY: the caller guarantees no other thread reads or writes the environment now.
    unsafe { std::env::set_var("BURN_DEVICE", "flex") };
}

/// The device the backend-sensitive unit tests run on: `RSB_TEST_DEVICE` (default `flex`).
/// trainer/cuda/standin.sh runs them again with `cube-cpu`, in a build with that feature.
#[cfg(test)]
pub(crate) fn under_test() -> DeviceKind {
    match std::env::var("RSB_TEST_DEVICE") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("RSB_TEST_DEVICE={name}: {e}")),
        Err(_) => DeviceKind::Flex,
    }
}

/// Whether the dynamic loader finds the NVIDIA driver, as cudarc will look for it.
#[cfg(feature = "cuda")]
fn driver_loadable() -> bool {
    ["libcuda.so.1", "libcuda.so"]
        .iter()
        .any(|name| library_loadable(name))
}

/// Whether the dynamic loader finds the shared library `name` (cudarc loads the driver, NVRTC
/// and NCCL at run time, and panics on a worker thread when one is missing).
#[cfg(feature = "cuda")]
pub(crate) fn library_loadable(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: dlopen with a valid C string; the handle is only tested and closed. Loading these
    // libraries runs no code of ours.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            false
        } else {
            libc::dlclose(handle);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceKind>().ok(), Some(DeviceKind::Flex));
        assert_eq!("flex".parse::<DeviceKind>().ok(), Some(DeviceKind::Flex));
        assert_eq!(DeviceKind::Flex.to_string(), "flex");
        assert_eq!("cuda".parse::<DeviceKind>().ok(), Some(DeviceKind::Cuda(0)));
        assert_eq!(
            "cuda:3".parse::<DeviceKind>().ok(),
            Some(DeviceKind::Cuda(3))
        );
        assert_eq!(
            "cube-cpu".parse::<DeviceKind>().ok(),
            Some(DeviceKind::CubeCpu)
        );
        assert_eq!(DeviceKind::CubeCpu.to_string(), "cube-cpu");
        let err = "gpu".parse::<DeviceKind>().expect_err("not a device");
        assert!(
            err.to_string()
                .contains("flex (or cpu), cuda, cuda:N or cube-cpu")
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let err = DeviceKind::Cuda(0)
            .device(Precision::F32)
            .expect_err("no cuda");
        assert!(err.to_string().contains("trainer/cuda/build.sh"), "{err}");
    }

    #[cfg(not(feature = "cube-cpu"))]
    #[test]
    fn cube_cpu_without_the_feature_says_how_to_build_it() {
        let err = DeviceKind::CubeCpu
            .device(Precision::F32)
            .expect_err("no cube-cpu");
        assert!(err.to_string().contains("--features cube-cpu"), "{err}");
    }
}
