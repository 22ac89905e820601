//! The network and where it runs: timm's ResNet ([`resnet`]) with PyTorch's batch norm
//! ([`batch_norm`]), its convolution ([`conv`]), stem pooling ([`max_pool`]) and residual
//! joins ([`residual`]), each our own on the CPU, timm's mixed precision ([`amp`]), weights
//! as timm-named safetensors ([`timm_weights`], read header first by [`safetensors_file`]), the device kinds and float types a model can use ([`device`]), the
//! same initial weights on every device ([`seeded`]), and the CubeCL CPU runtime's settings
//! for `--device cube-cpu` (`cube_cpu`, with the `cube-cpu` feature).

pub mod amp;
pub mod batch_norm;
pub mod conv;
#[cfg(feature = "cube-cpu")]
pub mod cube_cpu;
pub mod device;
pub(crate) mod flex_slices;
pub mod float_types;
pub mod host_memory;
pub mod max_pool;
pub mod residual;
pub mod resnet;
pub mod safetensors_file;
pub mod seeded;
#[cfg(test)]
pub(crate) mod testing;
pub mod timm_weights;

pub use device::{DeviceKind, Precision};
pub use resnet::{ResNet, ResNetConfig};
