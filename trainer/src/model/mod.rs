//! The network and where it runs: timm's ResNet ([`resnet`]) with PyTorch's batch norm
//! ([`batch_norm`]), timm's mixed precision ([`amp`]), weights as timm-named safetensors
//! ([`timm_weights`]), the device kinds and float types a model can use ([`device`]), and the
//! same initial weights on every device ([`seeded`]).

pub mod amp;
pub mod batch_norm;
pub mod device;
pub mod resnet;
pub mod seeded;
pub mod timm_weights;

pub use device::{DeviceKind, Precision};
pub use resnet::{ResNet, ResNetConfig};
