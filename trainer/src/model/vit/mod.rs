//! timm's Vision Transformer (`vision_transformer.VisionTransformer` as `vit_small_patch16_224`
//! builds it): a patch embedding (a convolution with the patch as kernel and stride), a class
//! token, learned position embeddings over the class token and the patches, pre-norm blocks
//! ([`block`]), a final LayerNorm, and the class token's features through the head. timm's
//! parameter names and initialization (`init_weights` with mode `''`).
//!
//! `--width` scales the width (the heads keep their number, each `64 × width` wide) and
//! `--small-stem` takes 4×4 patches, for 32×32 images. The image size must be a multiple of
//! the patch, as timm's `PatchEmbed` asserts.

pub mod block;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, Linear};
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::amp;
use crate::model::drop_path::{linear_rate, mix_key};
use crate::model::family::{ConfigError, Family, Shape, check_bounds};
use block::Block;

/// Which ViT to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// timm's name (`vit_small_patch16_224`), for messages.
    pub name: String,
    /// Classes of the head.
    pub num_classes: usize,
    /// Input side the position embeddings are made for.
    pub img_size: usize,
    /// Side of a patch.
    pub patch: usize,
    /// Width (`embed_dim`).
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width over `dim` (4).
    pub mlp_ratio: usize,
    /// timm's `drop_path_rate`, spread linearly over the blocks.
    pub drop_path_rate: f64,
}

/// The ViTs we build: timm's name, patch, width, depth and heads (image size 224).
const MODELS: &[(&str, usize, usize, usize, usize)] = &[
    ("vit_tiny_patch16_224", 16, 192, 12, 3),
    ("vit_small_patch16_224", 16, 384, 12, 6),
    ("vit_base_patch16_224", 16, 768, 12, 12),
];

/// Whether `name` is one of the ViTs we build.
pub fn is_vit(name: &str) -> bool {
    MODELS.iter().any(|m| m.0 == name)
}

/// The names of the ViTs we build, comma-separated.
pub fn model_names() -> String {
    MODELS.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
}

/// What a ViT state dict (timm's names → shapes) holds, in words: timm's name when it is one of
/// ours at its size (`timm's vit_small_patch16_224, 1000 classes`), else its blocks, width and
/// patch.
pub fn describe(tensors: &std::collections::BTreeMap<String, Vec<usize>>) -> String {
    let dim = |name: &str, i: usize| tensors.get(name).and_then(|s| s.get(i)).copied();
    let depth = (0..)
        .take_while(|i| tensors.contains_key(&format!("blocks.{i}.attn.qkv.weight")))
        .count();
    let width = dim("cls_token", 2).unwrap_or(0);
    let patch = dim("patch_embed.proj.weight", 2).unwrap_or(0);
    let tokens = dim("pos_embed", 1).unwrap_or(0);
    let classes = dim("head.weight", 0).map_or(String::new(), |c| format!(", {c} classes"));
    let grid = (tokens.saturating_sub(1) as f64).sqrt() as usize;
    let named = MODELS.iter().find(|m| {
        (m.1, m.2, m.3) == (patch, width, depth) && grid * m.1 == 224 && grid * grid + 1 == tokens
    });
    match named {
        Some(m) => format!("timm's {}{classes}", m.0),
        None => format!(
            "a ViT with {depth} blocks, width {width}, {patch}-pixel patches, {tokens} tokens{classes}"
        ),
    }
}

impl VitConfig {
    /// timm's `name` at `shape`: classes, width (heads `64 × width` wide, their number kept),
    /// 4×4 patches with the small stem, the image size (its name's 224 when `None`), stochastic
    /// depth; checked.
    ///
    /// # Errors
    /// [`ConfigError::Model`] for a name that is not one of ours; [`ConfigError::Variant`] for
    /// an image size the patch does not divide, naming the model and the fix.
    pub fn named(name: &str, shape: &Shape) -> Result<Self, ConfigError> {
        let &(_, patch, dim, depth, heads) =
            MODELS
                .iter()
                .find(|m| m.0 == name)
                .ok_or_else(|| ConfigError::Model {
                    name: name.to_string(),
                    known: model_names(),
                })?;
        check_bounds(shape.num_classes, shape.width, shape.drop_path_rate)?;
        let head_dim = ((dim / heads) as f64 * shape.width).round().max(1.0) as usize;
        let config = VitConfig {
            name: name.to_string(),
            num_classes: shape.num_classes,
            img_size: shape.img_size.unwrap_or(224),
            patch: if shape.small_stem { 4 } else { patch },
            dim: head_dim * heads,
            depth,
            heads,
            mlp_ratio: 4,
            drop_path_rate: shape.drop_path_rate,
        };
        config.check()?;
        Ok(config)
    }

    /// Checks the values: classes, stochastic depth, and the image size against the patch.
    ///
    /// # Errors
    /// [`ConfigError`] naming the value.
    pub fn check(&self) -> Result<(), ConfigError> {
        // The width is checked where it is applied (`named`).
        check_bounds(self.num_classes, 1.0, self.drop_path_rate)?;
        if self.img_size == 0 || !self.img_size.is_multiple_of(self.patch) {
            let below = self.img_size / self.patch * self.patch;
            return Err(ConfigError::Variant(format!(
                "{}: image size {} is not a multiple of its {}-pixel patch (timm's PatchEmbed \
                 refuses it too); use {} or {}",
                self.name,
                self.img_size,
                self.patch,
                below.max(self.patch),
                below + self.patch
            )));
        }
        Ok(())
    }

    /// Patches per image.
    fn patches(&self) -> usize {
        (self.img_size / self.patch).pow(2)
    }
}

impl Family for VitConfig {
    type Net = Vit;

    fn build(&self, device: &Device) -> Result<Vit, ConfigError> {
        self.check()?;
        let (dim, p) = (self.dim, self.patch);
        // PyTorch's default Conv2d initialization, which timm's ViT init leaves in place:
        // uniform in ±1/√fan-in for the weight and the bias.
        let bound = 1.0 / ((3 * p * p) as f64).sqrt();
        let uniform = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let mut proj = Conv2dConfig::new([3, dim], [p, p])
            .with_stride([p, p])
            .with_initializer(uniform.clone())
            .init(device);
        proj.bias = Some(uniform.init([dim], device));
        let tokens = self.patches() + 1;
        let hidden = dim * self.mlp_ratio;
        let blocks = (0..self.depth)
            .map(|i| {
                let rate = linear_rate(self.drop_path_rate, i, self.depth);
                Block::new([dim, self.heads, hidden], rate, device)
            })
            .collect();
        Ok(Vit {
            patch_embed: PatchEmbed { proj },
            // timm: normal_(cls_token, std=1e-6); trunc_normal_(pos_embed, std=.02).
            cls_token: Initializer::Normal {
                mean: 0.0,
                std: 1e-6,
            }
            .init([1, 1, dim], device),
            pos_embed: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, tokens, dim], device),
            blocks,
            norm: block::layer_norm(dim, device),
            head: block::linear(dim, self.num_classes, device),
            compute: None,
        })
    }
}

/// The patch embedding with timm's name (`patch_embed.proj`).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    /// A convolution with the patch as kernel and stride, 3 → `dim`, with bias.
    pub proj: Conv2d,
}

/// A Vision Transformer; see the module documentation.
#[derive(Module, Debug)]
pub struct Vit {
    /// Patches to tokens.
    pub patch_embed: PatchEmbed,
    /// The class token, `[1, 1, dim]`.
    pub cls_token: Param<Tensor<3>>,
    /// Position embeddings of the class token and the patches, `[1, 1 + patches, dim]`.
    pub pos_embed: Param<Tensor<3>>,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// The final LayerNorm.
    pub norm: LayerNorm,
    /// The classifier on the class token's features.
    pub head: Linear,
    /// The float type of the matrix products ([`crate::model::amp`]); `None`: the parameters'.
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

impl Vit {
    /// Logits `[N, classes]` of normalized images `[N, 3, H, W]`; `masks` keys the drop-path
    /// draws (block i's two from `mix_key(masks, 2i)` and `mix_key(masks, 2i + 1)`).
    pub(crate) fn forward_with(&self, x: Tensor<4>, masks: Option<u64>) -> Tensor<2> {
        let x = amp::conv(&self.patch_embed.proj, x, self.compute);
        let [b, dim, gh, gw] = x.dims();
        // timm: proj(x).flatten(2).transpose(1, 2): [B, patches, dim], row by row.
        let x = x.reshape([b, dim, gh * gw]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b, 1, dim]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.pos_embed.val();
        for (i, block) in self.blocks.iter().enumerate() {
            let keys = masks.map(|k| [mix_key(k, 2 * i as u64), mix_key(k, 2 * i as u64 + 1)]);
            x = block.forward(x, keys, self.compute);
        }
        let x = self.norm.forward(x);
        // timm's global_pool 'token': the class token's features.
        let cls = x.narrow(1, 0, 1).reshape([b, dim]);
        amp::linear(&self.head, cls, self.compute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn random_images(n: usize, side: usize, device: &Device) -> Tensor<4> {
        Tensor::<4>::random([n, 3, side, side], Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn vit_small_has_timms_parameter_count() {
        let config = VitConfig::named("vit_small_patch16_224", &Shape::of(1000, [1.0, 0.0], false))
            .expect("ours");
        // timm 1.0.31: sum(p.numel() for p in create_model('vit_small_patch16_224').parameters())
        assert_eq!(config.trainable_params().expect("config"), 22_050_664);
        let tiny = VitConfig::named("vit_tiny_patch16_224", &Shape::of(1000, [1.0, 0.0], false))
            .expect("ours");
        assert_eq!(tiny.trainable_params().expect("config"), 5_717_416);
    }

    #[test]
    fn an_image_the_patch_does_not_divide_is_refused_with_the_sizes_that_fit() {
        let err = VitConfig::named(
            "vit_small_patch16_224",
            &Shape {
                img_size: Some(200),
                ..Shape::of(10, [1.0, 0.0], false)
            },
        )
        .expect_err("200 = 12.5 patches")
        .to_string();
        assert!(
            err.contains("vit_small_patch16_224") && err.contains("use 192 or 208"),
            "{err}"
        );
        assert!(
            VitConfig::named(
                "vit_small_patch16_224",
                &Shape {
                    img_size: Some(32),
                    ..Shape::of(10, [1.0, 0.0], true)
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn a_small_vit_gives_logits_of_the_right_shape_and_trains() {
        let device = Device::flex().autodiff();
        let config = VitConfig::named(
            "vit_small_patch16_224",
            &Shape {
                img_size: Some(16),
                ..Shape::of(10, [0.125, 0.1], true)
            },
        )
        .expect("ours");
        assert_eq!((config.dim, config.patch), (48, 4));
        let model = config.init(&device).expect("config");
        let y = model.forward_with(random_images(2, 16, &device), Some(7));
        assert_eq!(y.dims(), [2, 10]);
        let grads = y.powi_scalar(2).mean().backward();
        assert!(model.cls_token.val().grad(&grads).is_some());
        assert!(model.pos_embed.val().grad(&grads).is_some());
    }
}
