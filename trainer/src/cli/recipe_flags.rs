//! timm's `train.py` flags over a recipe file: `trainer train --config a1.toml --lr 2e-3 -b 128`
//! does what the same flags do after `-c a1.yaml` in timm (file first, then the command line).
//!
//! Each flag is a recipe key with `-` for `_`; the `[rsb]` keys keep their own names
//! (`--world-size`, `--test-img-size`, ...). A flag for something the recipe has no key for
//! does not exist, so clap refuses it with the list of flags that do. The flags given become
//! the recipe's [`Overrides`], which the recipe's gate reads.

use clap::Args;
use loader::request::job::BATCH_SIZE;
use loader::request::transform::{AUG_REPEATS, CROP_PCT, IMG_SIZE, RATIO};
use serde::Serialize;
use shard_tool::console::number_in;
use trainer::recipe::{Overrides, ranges};

use super::widen;

/// Values given on the command line, each replacing the recipe key of the same name.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize)]
#[command(next_help_heading = "Recipe overrides (timm's train.py flags, applied over --config)")]
pub struct RecipeFlags {
    /// timm's model name: resnet18 to resnet152, resnet50d, resnext50_32x4d, seresnet50,
    /// ecaresnet50t and the rest of timm's ResNet family we build, regnety_002 to regnety_160,
    /// efficientnet_b0, vit_tiny/small/base_patch16_224 (an unknown name is refused with the
    /// list).
    #[arg(long)]
    pub model: Option<String>,
    /// Classes of the classifier.
    #[arg(long, value_parser = number_in(ranges::NUM_CLASSES))]
    pub num_classes: Option<usize>,
    /// Training resolution.
    #[arg(long, value_parser = number_in(widen(IMG_SIZE)))]
    pub img_size: Option<usize>,
    /// Evaluation center-crop fraction.
    #[arg(long, value_parser = number_in(CROP_PCT))]
    pub crop_pct: Option<f64>,
    /// Epochs (the cosine period).
    #[arg(long, value_parser = number_in(ranges::EPOCHS))]
    pub epochs: Option<u64>,
    /// Images per rank and step (the global batch is this × --world-size).
    #[arg(short = 'b', long, value_parser = number_in(widen(BATCH_SIZE)))]
    pub batch_size: Option<usize>,
    /// Optimizer (lamb).
    #[arg(long)]
    pub opt: Option<String>,
    /// Peak learning rate.
    #[arg(long, value_parser = number_in(ranges::RATE))]
    pub lr: Option<f64>,
    /// LR schedule (cosine).
    #[arg(long)]
    pub sched: Option<String>,
    /// Change the LR every step rather than every epoch [true when given without a value].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub sched_on_updates: Option<bool>,
    /// Weight decay.
    #[arg(long, value_parser = number_in(ranges::RATE))]
    pub weight_decay: Option<f64>,
    /// Linear warmup epochs.
    #[arg(long, value_parser = number_in(ranges::EXTRA_EPOCHS))]
    pub warmup_epochs: Option<u64>,
    /// LR at the start of the warmup.
    #[arg(long, value_parser = number_in(ranges::RATE))]
    pub warmup_lr: Option<f64>,
    /// LR at the end of the cosine.
    #[arg(long, value_parser = number_in(ranges::RATE))]
    pub min_lr: Option<f64>,
    /// Epochs at min_lr after the cosine.
    #[arg(long, value_parser = number_in(ranges::EXTRA_EPOCHS))]
    pub cooldown_epochs: Option<u64>,
    /// Binary cross-entropy loss [true when given without a value].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub bce_loss: Option<bool>,
    /// BCE target threshold.
    #[arg(long, value_parser = number_in(ranges::PROBABILITY))]
    pub bce_target_thresh: Option<f64>,
    /// Label smoothing.
    #[arg(long, value_parser = number_in(ranges::BELOW_ONE))]
    pub smoothing: Option<f64>,
    /// Dropout before the classifier.
    #[arg(long, value_parser = number_in(ranges::PROBABILITY))]
    pub drop: Option<f64>,
    /// Stochastic depth rate.
    #[arg(long, value_parser = number_in(ranges::BELOW_ONE))]
    pub drop_path: Option<f64>,
    /// Repeated-augmentation copies per image (0: none).
    #[arg(long, value_parser = number_in(widen(AUG_REPEATS)))]
    pub aug_repeats: Option<usize>,
    /// Gradient clipping norm.
    #[arg(long, value_parser = number_in(ranges::CLIP_GRAD))]
    pub clip_grad: Option<f64>,
    /// Horizontal flip probability.
    #[arg(long, value_parser = number_in(ranges::PROBABILITY))]
    pub hflip: Option<f64>,
    /// RandomResizedCrop area range.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], value_parser = number_in(ranges::PROBABILITY))]
    pub scale: Option<Vec<f64>>,
    /// RandomResizedCrop aspect-ratio range.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], value_parser = number_in(RATIO))]
    pub ratio: Option<Vec<f64>>,
    /// RandAugment (timm's grammar, e.g. rand-m9-mstd0.5-inc1; `none` for off).
    #[arg(long)]
    pub aa: Option<String>,
    /// Random erasing probability.
    #[arg(long, value_parser = number_in(ranges::PROBABILITY))]
    pub reprob: Option<f64>,
    /// Mixup alpha (0: off).
    #[arg(long, value_parser = number_in(ranges::MIX_ALPHA))]
    pub mixup: Option<f64>,
    /// CutMix alpha (0: off).
    #[arg(long, value_parser = number_in(ranges::MIX_ALPHA))]
    pub cutmix: Option<f64>,
    /// Probability that a batch is mixed.
    #[arg(long, value_parser = number_in(ranges::PROBABILITY))]
    pub mixup_prob: Option<f64>,
    /// Probability of CutMix rather than Mixup when both are on.
    #[arg(long, value_parser = number_in(ranges::PROBABILITY))]
    pub mixup_switch_prob: Option<f64>,
    /// How mixing pairs images (batch).
    #[arg(long)]
    pub mixup_mode: Option<String>,
    /// Keep an EMA of the weights [true when given without a value].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub model_ema: Option<bool>,
    /// Mixed precision [true when given without a value].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub amp: Option<bool>,
    /// Training resize filter (random, bilinear, bicubic).
    #[arg(long)]
    pub train_interpolation: Option<String>,
    /// Evaluation resize filter (bilinear, bicubic).
    #[arg(long)]
    pub interpolation: Option<String>,
    /// Seed of everything.
    #[arg(long, value_parser = number_in(ranges::SEED))]
    pub seed: Option<u64>,
    /// rsb.world_size: ranks of the global batch.
    #[arg(long, value_parser = number_in(ranges::WORLD_SIZE))]
    #[serde(rename = "rsb.world_size")]
    pub world_size: Option<usize>,
    /// rsb.test_img_size: evaluation resolution.
    #[arg(long, value_parser = number_in(widen(IMG_SIZE)))]
    #[serde(rename = "rsb.test_img_size")]
    pub test_img_size: Option<usize>,
    /// rsb.width: channel multiplier of the model.
    #[arg(long, value_parser = number_in(ranges::WIDTH))]
    #[serde(rename = "rsb.width")]
    pub width: Option<f64>,
    /// rsb.eval_interval: evaluate every this many epochs.
    #[arg(long, value_parser = number_in(ranges::EVAL_INTERVAL))]
    #[serde(rename = "rsb.eval_interval")]
    pub eval_interval: Option<u64>,
    /// rsb.checkpoint_interval: also checkpoint every this many steps (0: per epoch only).
    #[arg(long, value_parser = number_in(ranges::CHECKPOINT_INTERVAL))]
    #[serde(rename = "rsb.checkpoint_interval")]
    pub checkpoint_interval: Option<u64>,
    /// rsb.train_split: the split to train on.
    #[arg(long)]
    #[serde(rename = "rsb.train_split")]
    pub train_split: Option<String>,
    /// rsb.val_split: the split to evaluate on.
    #[arg(long)]
    #[serde(rename = "rsb.val_split")]
    pub val_split: Option<String>,
}

impl RecipeFlags {
    /// The flags given, as the recipe's overrides (`lr`, `rsb.world_size`, ...). TOML has no
    /// null, so the serializer leaves the flags not given out.
    ///
    /// # Errors
    /// A value TOML cannot hold (the flags' ranges keep every one within it; were one not, the
    /// flags would be refused here rather than dropped, as they once all were).
    pub fn overrides(&self) -> Result<Overrides, super::Usage> {
        match toml::Value::try_from(self) {
            Ok(toml::Value::Table(t)) => Ok(Overrides::flags(t.into_iter().collect())),
            Ok(other) => Err(super::Usage(format!(
                "the recipe flags became {other:?}, not a table"
            ))),
            Err(e) => Err(super::Usage(format!(
                "a recipe flag's value cannot be a recipe value: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: RecipeFlags,
    }

    #[test]
    fn flags_become_recipe_keys() {
        let cli = Cli::try_parse_from([
            "x",
            "--lr",
            "1e-3",
            "-b",
            "16",
            "--amp",
            "--bce-loss",
            "false",
            "--scale",
            "0.2",
            "1",
            "--world-size",
            "16",
        ])
        .unwrap();
        let o = cli.o.overrides().unwrap();
        let e: Vec<(String, toml::Value)> = o
            .entries()
            .iter()
            .map(|o| (o.key.clone(), o.value.clone()))
            .collect();
        let mut keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "amp",
                "batch_size",
                "bce_loss",
                "lr",
                "rsb.world_size",
                "scale"
            ]
        );
        let get = |k: &str| e.iter().find(|(key, _)| key == k).unwrap().1.clone();
        assert_eq!(get("lr"), toml::Value::Float(1e-3));
        assert_eq!(get("amp"), toml::Value::Boolean(true));
        assert_eq!(get("bce_loss"), toml::Value::Boolean(false));
        assert_eq!(get("rsb.world_size"), toml::Value::Integer(16));
        assert!(Cli::try_parse_from(["x", "--lr-base", "0.1"]).is_err());
        assert!(
            RecipeFlags::default()
                .overrides()
                .unwrap()
                .entries()
                .is_empty()
        );
    }
}
