//! The network and its weights: the network of whichever family a run trains ([`network`]),
//! timm's ResNet family ([`resnet`]) with PyTorch's batch norm as a
//! module ([`batch_norm`], whose CPU kernel, like the convolution's, pooling's and the residual
//! join's, is in the `cpu-kernels` crate), timm's mixed precision ([`amp`]), weights as
//! timm-named safetensors ([`timm_weights`], read header first by [`safetensors_file`], their
//! float types checked by [`float_types`]), and the same initial weights on every device
//! ([`seeded`]). Where a model runs is [`crate::device`].

pub mod amp;
pub mod attention;
pub mod batch_norm;
pub mod conv_init;
pub mod drop_path;
pub mod efficientnet;
pub mod family;
pub mod float_types;
pub mod network;
pub mod params;
pub mod regnet;
pub mod resnet;
pub mod safetensors_file;
pub mod seeded;
pub mod timm_weights;
pub mod vit;

pub use network::{Network, NetworkConfig};
pub use resnet::{ResNet, ResNetConfig};
