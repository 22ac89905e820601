//! Every value a recipe may not hold, in one place: what the trainer does not implement, the
//! allowed ranges and choices, and the loader jobs the recipe implies (checked as the daemon
//! will check them). [`TrainConfig::parse`](super::TrainConfig::parse) runs this on every
//! recipe it reads, so no command can accept a recipe that another refuses.

use loader::transform::SettingError;

use super::{DataJobs, TrainConfig};
use crate::model::resnet::timm_depth;

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
        timm_depth(&self.model).map_err(|_| {
            SettingError::new(
                "model",
                format!("{:?}", self.model),
                "is not one of resnet18, resnet34, resnet50, resnet101, resnet152",
            )
        })?;
        SettingError::within("num_classes", self.num_classes, 1..=1_000_000)?;
        Ok(())
    }

    /// Epochs, learning rates and decay: finite, not negative, the peak above zero.
    fn check_schedule(&self) -> Result<(), SettingError> {
        SettingError::within("epochs", self.epochs, 1..=100_000)?;
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
        SettingError::within("cooldown_epochs", self.cooldown_epochs, 0..=100_000)?;
        if !(self.lr > 0.0 && self.lr <= 10.0) {
            return Err(SettingError::new("lr", self.lr, "is outside (0, 10]"));
        }
        SettingError::within("weight_decay", self.weight_decay, 0.0..=10.0)?;
        SettingError::within("warmup_lr", self.warmup_lr, 0.0..=10.0)?;
        SettingError::within("min_lr", self.min_lr, 0.0..=10.0)?;
        Ok(())
    }

    /// The loss's targets, stochastic depth and the mixing.
    fn check_regularization(&self) -> Result<(), SettingError> {
        if let Some(t) = self.bce_target_thresh {
            SettingError::within("bce_target_thresh", t, 0.0..=1.0)?;
        }
        SettingError::within("smoothing", self.smoothing, 0.0..=0.99)?;
        SettingError::within("drop_path", self.drop_path, 0.0..=0.99)?;
        SettingError::within("mixup", self.mixup, 0.0..=100.0)?;
        SettingError::within("cutmix", self.cutmix, 0.0..=100.0)?;
        SettingError::within("mixup_prob", self.mixup_prob, 0.0..=1.0)?;
        SettingError::within("mixup_switch_prob", self.mixup_switch_prob, 0.0..=1.0)?;
        Ok(())
    }

    /// The `[rsb]` table's numbers (its splits and sizes are the loader jobs').
    fn check_rsb(&self) -> Result<(), SettingError> {
        SettingError::within("rsb.world_size", self.rsb.world_size, 1..=4096)?;
        if !(self.rsb.width > 0.0 && self.rsb.width <= 8.0) {
            return Err(SettingError::new(
                "rsb.width",
                self.rsb.width,
                "is outside (0, 8]",
            ));
        }
        SettingError::within("rsb.eval_interval", self.rsb.eval_interval, 1..=100_000)?;
        Ok(())
    }
}
