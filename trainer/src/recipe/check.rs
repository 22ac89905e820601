//! Every value a recipe may not hold, in one place: what the trainer does not implement, the
//! allowed ranges and choices, and the loader jobs the recipe implies (checked as the daemon
//! will check them). [`TrainConfig::parse`](super::TrainConfig::parse) runs this on every
//! recipe it reads, so no command can accept a recipe that another refuses.

use loader::request::transform::SettingError;

use super::{DataJobs, TrainConfig};
use crate::model::family::ConfigError;
use crate::model::network::model_names;

/// The ranges of the recipe's numbers: what the gate allows, and what the command line's
/// flags take where they are parsed (`--lr 1e300` is refused by clap, naming the range, before
/// a recipe is read). What the gate refines within them (`lr` and `width` above 0,
/// `warmup_epochs` at most `epochs`, what is not implemented) stays the gate's.
pub mod ranges {
    use std::ops::RangeInclusive;

    /// `num_classes`.
    pub const NUM_CLASSES: RangeInclusive<usize> = 1..=1_000_000;
    /// `epochs`.
    pub const EPOCHS: RangeInclusive<u64> = 1..=100_000;
    /// `warmup_epochs`, `cooldown_epochs`.
    pub const EXTRA_EPOCHS: RangeInclusive<u64> = 0..=100_000;
    /// `lr`, `weight_decay`, `warmup_lr`, `min_lr`.
    pub const RATE: RangeInclusive<f64> = 0.0..=10.0;
    /// Probabilities and `bce_target_thresh`.
    pub const PROBABILITY: RangeInclusive<f64> = 0.0..=1.0;
    /// `smoothing`, `drop_path`: a rate of 1 would drop everything.
    pub const BELOW_ONE: RangeInclusive<f64> = 0.0..=0.99;
    /// `mixup`, `cutmix`: Beta distributions' alpha.
    pub const MIX_ALPHA: RangeInclusive<f64> = 0.0..=100.0;
    /// `clip_grad` as a number (the gate refuses any: timm's Lamb clips at 1.0 inside).
    pub const CLIP_GRAD: RangeInclusive<f64> = 0.0..=1e6;
    /// `rsb.world_size`.
    pub const WORLD_SIZE: RangeInclusive<usize> = 1..=4096;
    /// `rsb.width`.
    pub const WIDTH: RangeInclusive<f64> = 0.0..=8.0;
    /// `rsb.eval_interval`.
    pub const EVAL_INTERVAL: RangeInclusive<u64> = 1..=100_000;
    /// `rsb.checkpoint_interval` (0: per epoch only).
    pub const CHECKPOINT_INTERVAL: RangeInclusive<u64> = 0..=1_000_000_000;
    /// `seed`: what a TOML integer holds.
    pub const SEED: RangeInclusive<u64> = 0..=i64::MAX as u64;
    /// Steps of a run (`--max-steps`): a billion is more than any run makes.
    pub const STEPS: RangeInclusive<u64> = 1..=1_000_000_000;
}

impl TrainConfig {
    /// Values rsb cannot run, named with the allowed range or choices.
    pub(super) fn check(&self) -> Result<(), SettingError> {
        self.check_implemented()?;
        self.check_choices()?;
        self.check_schedule()?;
        self.check_regularization()?;
        self.check_rsb()?;
        // The transforms, batch size and splits, checked as the loader will check them.
        DataJobs::try_from(self)?;
        Ok(())
    }

    /// timm settings the recipes leave at their defaults and rsb does not implement: set to
    /// anything else they would silently train another recipe.
    fn check_implemented(&self) -> Result<(), SettingError> {
        if let Some(c) = self.clip_grad {
            return Err(SettingError::new(
                "clip_grad",
                format!("{c:?}"),
                "is not supported: timm's Lamb clips the global gradient norm at 1.0 inside, \
                 and the recipes set no clip_grad; remove the key",
            ));
        }
        let not_yet = "is not implemented yet; the RSB recipes do not use it";
        if self.model_ema {
            return Err(SettingError::new(
                "model_ema",
                self.model_ema,
                format!("{not_yet} (set it to false)"),
            ));
        }
        if self.reprob != 0.0 {
            return Err(SettingError::new(
                "reprob",
                format!("{:?}", self.reprob),
                format!("{not_yet} (set it to 0)"),
            ));
        }
        if self.drop != 0.0 {
            return Err(SettingError::new(
                "drop",
                format!("{:?}", self.drop),
                format!("{not_yet} (set it to 0; drop_path is stochastic depth)"),
            ));
        }
        Ok(())
    }

    /// Keys with a list of choices, and the model.
    fn check_choices(&self) -> Result<(), SettingError> {
        let one_of = |key: &'static str, value: &str, allowed: &[&str]| {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(SettingError::new(
                    key,
                    format!("{value:?}"),
                    format!("is not supported; use one of {allowed:?}"),
                ))
            }
        };
        one_of("opt", &self.opt, &["lamb"])?;
        one_of("sched", &self.sched, &["cosine"])?;
        one_of("mixup_mode", &self.mixup_mode, &["batch"])?;
        // The model as the recipe sizes it: a name we build, and (a ViT) an image size its
        // patch divides and evaluation at that size.
        match self.model() {
            Err(ConfigError::Model { .. }) => {
                return Err(SettingError::new(
                    "model",
                    format!("{:?}", self.model),
                    format!(
                        "is not a model rsb builds; use one of timm's names: {}",
                        model_names()
                    ),
                ));
            }
            Err(e @ ConfigError::Variant(_)) => {
                return Err(SettingError::new("img_size", self.img_size, e.to_string()));
            }
            // Width, classes and drop-path have keys of their own, checked with their ranges.
            Err(_) => {}
            Ok(network) if network.is_vit() && self.rsb.test_img_size != self.img_size => {
                return Err(SettingError::new(
                    "rsb.test_img_size",
                    self.rsb.test_img_size,
                    format!(
                        "must equal img_size ({}) for {}: its position embeddings are made for \
                         one image size (timm's PatchEmbed refuses another)",
                        self.img_size, self.model
                    ),
                ));
            }
            Ok(_) => {}
        }
        SettingError::within("num_classes", self.num_classes, ranges::NUM_CLASSES)?;
        Ok(())
    }

    /// Epochs, learning rates and decay: finite, not negative, the peak above zero.
    fn check_schedule(&self) -> Result<(), SettingError> {
        SettingError::within("epochs", self.epochs, ranges::EPOCHS)?;
        if self.warmup_epochs > self.epochs {
            return Err(SettingError::new(
                "warmup_epochs",
                self.warmup_epochs,
                format!(
                    "is longer than epochs = {} (set --warmup-epochs too)",
                    self.epochs
                ),
            ));
        }
        SettingError::within(
            "cooldown_epochs",
            self.cooldown_epochs,
            ranges::EXTRA_EPOCHS,
        )?;
        if !(self.lr > 0.0 && ranges::RATE.contains(&self.lr)) {
            return Err(SettingError::new("lr", self.lr, "is outside (0, 10]"));
        }
        SettingError::within("weight_decay", self.weight_decay, ranges::RATE)?;
        SettingError::within("warmup_lr", self.warmup_lr, ranges::RATE)?;
        SettingError::within("min_lr", self.min_lr, ranges::RATE)?;
        Ok(())
    }

    /// The loss's targets, stochastic depth and the mixing.
    fn check_regularization(&self) -> Result<(), SettingError> {
        if let Some(t) = self.bce_target_thresh {
            SettingError::within("bce_target_thresh", t, ranges::PROBABILITY)?;
        }
        SettingError::within("smoothing", self.smoothing, ranges::BELOW_ONE)?;
        SettingError::within("drop_path", self.drop_path, ranges::BELOW_ONE)?;
        SettingError::within("mixup", self.mixup, ranges::MIX_ALPHA)?;
        SettingError::within("cutmix", self.cutmix, ranges::MIX_ALPHA)?;
        SettingError::within("mixup_prob", self.mixup_prob, ranges::PROBABILITY)?;
        SettingError::within(
            "mixup_switch_prob",
            self.mixup_switch_prob,
            ranges::PROBABILITY,
        )?;
        SettingError::within("seed", self.seed, ranges::SEED)?;
        Ok(())
    }

    /// The `[rsb]` table's numbers (its splits and sizes are the loader jobs').
    fn check_rsb(&self) -> Result<(), SettingError> {
        SettingError::within("rsb.world_size", self.rsb.world_size, ranges::WORLD_SIZE)?;
        if !(self.rsb.width > 0.0 && ranges::WIDTH.contains(&self.rsb.width)) {
            return Err(SettingError::new(
                "rsb.width",
                self.rsb.width,
                "is outside (0, 8]",
            ));
        }
        SettingError::within(
            "rsb.eval_interval",
            self.rsb.eval_interval,
            ranges::EVAL_INTERVAL,
        )?;
        SettingError::within(
            "rsb.checkpoint_interval",
            self.rsb.checkpoint_interval,
            ranges::CHECKPOINT_INTERVAL,
        )?;
        Ok(())
    }
}
