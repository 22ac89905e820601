//! A training recipe as a TOML file whose keys are timm's `train.py` argument names
//! (`configs/a1.toml` ...), so a timm command line maps onto it key by key.
//!
//! Unknown keys are errors that name the key and the file; keys that timm's train.py has but
//! rsb does not implement are accepted with one warning each, so timm recipes still load.
//! Settings timm lacks live in the `[rsb]` table. timm's command-line flags, and a study's
//! `--vary` values, replace keys of the file ([`Overrides`]).
//!
//! This module is the recipe's one gate: every command that takes a recipe (`trainer config`,
//! `train`, `eval`, `study` for each of its combinations) reads it through
//! [`TrainConfig::load`] or [`TrainConfig::parse`], which refuse every value the trainer cannot
//! run (`check.rs`), the loader jobs it implies included ([`DataJobs`], with the daemon's own
//! checks). A typo fails in the first second, naming the key (or flag), the file and the
//! allowed range, not hours in, and before any model is built.

mod check;
mod jobs;
mod overrides;

pub use check::ranges;
pub use jobs::DataJobs;
pub use overrides::{Origin, Override, Overrides};

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use loader::request::transform::SettingError;

use crate::model::family::ConfigError;
use crate::model::network::{NetworkConfig, Shape};
use crate::optim::schedule::CosineSchedule;
use crate::step::loss::LossKind;
use crate::step::mixup::MixupConfig;

/// A recipe; field names and meanings are timm's (`train.py --<name with dashes>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `--model`.
    pub model: String,
    /// `--num-classes`.
    pub num_classes: usize,
    /// `--img-size`: training resolution.
    pub img_size: usize,
    /// `--crop-pct`: evaluation crop ratio.
    pub crop_pct: f64,
    /// `--epochs`: the cosine period.
    pub epochs: u64,
    /// `-b/--batch-size`: images per process (the global batch is this × ranks).
    pub batch_size: usize,
    /// `--opt`.
    pub opt: String,
    /// `--lr`: peak learning rate (absolute, not scaled by batch size).
    pub lr: f64,
    /// `--sched`.
    pub sched: String,
    /// `--sched-on-updates`: change the LR every step rather than every epoch (timm's newer
    /// option; the RSB-era recipes step per epoch).
    #[serde(default)]
    pub sched_on_updates: bool,
    /// `--weight-decay`.
    pub weight_decay: f64,
    /// `--warmup-epochs`.
    pub warmup_epochs: u64,
    /// `--warmup-lr`.
    pub warmup_lr: f64,
    /// `--min-lr`.
    pub min_lr: f64,
    /// `--cooldown-epochs`.
    pub cooldown_epochs: u64,
    /// `--bce-loss`.
    pub bce_loss: bool,
    /// `--bce-target-thresh` (absent: soft targets).
    pub bce_target_thresh: Option<f64>,
    /// `--smoothing`.
    pub smoothing: f64,
    /// `--drop`: dropout before the classifier.
    pub drop: f64,
    /// `--drop-path`.
    pub drop_path: f64,
    /// `--aug-repeats`: copies of each image per epoch (0 = plain sampler).
    pub aug_repeats: usize,
    /// `--clip-grad` (absent: no clipping in train.py; LAMB clips internally anyway).
    pub clip_grad: Option<f64>,
    /// `--hflip`.
    pub hflip: f64,
    /// `--scale`: RandomResizedCrop area range.
    pub scale: [f64; 2],
    /// `--ratio`: RandomResizedCrop aspect range.
    pub ratio: [f64; 2],
    /// `--aa`: RandAugment string.
    pub aa: String,
    /// `--reprob`: random erasing.
    pub reprob: f64,
    /// `--mixup`: Mixup α.
    pub mixup: f64,
    /// `--cutmix`: CutMix α.
    pub cutmix: f64,
    /// `--mixup-prob`.
    pub mixup_prob: f64,
    /// `--mixup-switch-prob`.
    pub mixup_switch_prob: f64,
    /// `--mixup-mode`.
    pub mixup_mode: String,
    /// `--model-ema`.
    pub model_ema: bool,
    /// `--amp`: mixed precision.
    pub amp: bool,
    /// `--train-interpolation`: `random`, `bilinear` or `bicubic`.
    pub train_interpolation: String,
    /// `--interpolation`: evaluation resize filter.
    pub interpolation: String,
    /// `--seed`.
    pub seed: u64,
    /// What timm has no flag for.
    pub rsb: RsbSettings,
}

/// Settings timm's train.py has no flag for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RsbSettings {
    /// Evaluation resolution (timm takes it from the model's pretrained config).
    pub test_img_size: usize,
    /// Ranks the recipe's global batch assumes (`batch_size × world_size`).
    pub world_size: usize,
    /// Channel multiplier of the model (1.0: timm's; smaller for CPU runs).
    #[serde(default = "one")]
    pub width: f64,
    /// 3×3 stride-1 stem without max-pool, for 32×32 images (CIFAR).
    #[serde(default)]
    pub small_stem: bool,
    /// Evaluate every this many epochs (and after the last); timm: every epoch.
    #[serde(default = "one_u64")]
    pub eval_interval: u64,
    /// Also checkpoint every this many steps (0: only at the end of each epoch).
    #[serde(default)]
    pub checkpoint_interval: u64,
    /// Split to train on.
    #[serde(default = "train_split")]
    pub train_split: String,
    /// Split to evaluate on.
    #[serde(default = "val_split")]
    pub val_split: String,
}

fn one() -> f64 {
    1.0
}

fn one_u64() -> u64 {
    1
}

fn train_split() -> String {
    "train".into()
}

fn val_split() -> String {
    "val".into()
}

/// timm train.py arguments that rsb reads but does not implement: a warning, not an error.
const TIMM_NOT_IMPLEMENTED: &[&str] = &[
    "workers",
    "pin_mem",
    "channels_last",
    "log_interval",
    "checkpoint_hist",
    "output",
    "experiment",
    "eval_metric",
    "torchscript",
    "no_prefetcher",
    "dist_bn",
    "color_jitter",
    "remode",
    "recount",
    "resplit",
    "jsd_loss",
    "mean",
    "std",
    "sync_bn",
    "opt_eps",
    "opt_betas",
    "momentum",
    "decay_epochs",
    "decay_rate",
    "patience_epochs",
    "lr_noise",
    "lr_cycle_mul",
    "lr_cycle_limit",
    "lr_k_decay",
    "model_ema_decay",
    "log_wandb",
    "amp_dtype",
];

/// Errors reading a recipe: each names the file (and the key or flag of a bad value).
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read (missing, not a regular file, over [`RECIPE_MAX_BYTES`]).
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// Not TOML, a missing key, an unknown key, a wrong type or a value the trainer cannot run.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and where.
        message: String,
    },
}

/// A parsed recipe and the warnings about timm keys that rsb ignores.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The recipe.
    pub config: TrainConfig,
    /// One line per ignored timm key.
    pub warnings: Vec<String>,
}

/// The largest recipe file read: a recipe is a page of TOML (A1's is 2 KB).
pub const RECIPE_MAX_BYTES: u64 = shard_tool::user_file::MIB;

/// Reads a recipe file the user named: a regular file of at most [`RECIPE_MAX_BYTES`].
///
/// # Errors
/// [`RecipeError::Read`] naming the file and why.
pub fn read_recipe(path: &Path) -> Result<String, RecipeError> {
    shard_tool::user_file::read_string_capped(path, RECIPE_MAX_BYTES, "a recipe").map_err(|e| {
        RecipeError::Read {
            path: path.display().to_string(),
            message: e.reason(),
        }
    })
}

impl TrainConfig {
    /// Reads a recipe file and applies `overrides` over it.
    ///
    /// # Errors
    /// [`RecipeError`] naming the file, and the key (or the flag) and allowed range of a bad
    /// value.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Loaded, RecipeError> {
        let text = read_recipe(path)?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses recipe text and applies `overrides` over it; `origin` names the text in messages.
    ///
    /// # Errors
    /// As [`TrainConfig::load`].
    pub fn parse(text: &str, origin: &str, overrides: &Overrides) -> Result<Loaded, RecipeError> {
        let invalid = |message: String| RecipeError::Invalid {
            path: origin.to_string(),
            message,
        };
        let mut table: BTreeMap<String, toml::Value> =
            toml::from_str(text).map_err(|e| invalid(toml_error(&e, text)))?;
        let mut warnings = Vec::new();
        for key in TIMM_NOT_IMPLEMENTED {
            if table.remove(*key).is_some() {
                warnings.push(format!(
                    "{origin}: `{key}` is a timm train.py setting that rsb does not implement; ignored"
                ));
            }
        }
        for o in overrides.entries() {
            match o.key.strip_prefix("rsb.") {
                Some(sub) => {
                    let rsb = table
                        .entry("rsb".to_owned())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let Some(rsb) = rsb.as_table_mut() else {
                        return Err(invalid("`rsb` must be a table".into()));
                    };
                    rsb.insert(sub.to_owned(), o.value.clone());
                }
                None => {
                    table.insert(o.key.clone(), o.value.clone());
                }
            }
        }
        let value = toml::Value::Table(table.into_iter().collect());
        let config: TrainConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| invalid(toml_error(&e, text)))?;
        config
            .check()
            .map_err(|bad| invalid(overrides.describe(&bad)))?;
        Ok(Loaded { config, warnings })
    }

    /// The recipe as TOML, as a run stores it (`recipe.toml`, a checkpoint's `state.json`): a
    /// resume compares it with the text it was started with.
    pub fn to_toml(&self) -> String {
        // A struct of plain values always serializes.
        toml::to_string(self).unwrap_or_default()
    }

    /// The global batch: `batch_size × rsb.world_size`.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.rsb.world_size
    }

    /// Epochs of the run: the cosine's and the cooldown's.
    pub(crate) fn total_epochs(&self) -> u32 {
        // Both are checked to be at most 100,000 (check.rs).
        u32::try_from(self.epochs + self.cooldown_epochs).unwrap_or(u32::MAX)
    }

    /// The model the recipe names (timm's `create_model(model, num_classes, drop_path_rate)`,
    /// at `rsb.width` with `rsb.small_stem`).
    ///
    /// # Errors
    /// Only for a recipe built by hand that names no model we build (the gate refuses it).
    pub fn model(&self) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::named(
            &self.model,
            Shape {
                num_classes: self.num_classes,
                width: self.rsb.width,
                small_stem: self.rsb.small_stem,
                drop_path_rate: self.drop_path,
                img_size: Some(self.img_size),
            },
        )
    }

    /// The LR schedule train.py builds from these keys.
    pub fn schedule(&self) -> CosineSchedule {
        CosineSchedule {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_lr: self.warmup_lr,
            warmup_epochs: self.warmup_epochs as f64,
            epochs: self.epochs as f64,
            on_updates: self.sched_on_updates,
        }
    }

    /// The loss train.py picks: BCE with `--bce-loss`, cross-entropy otherwise.
    pub fn loss(&self) -> LossKind {
        if self.bce_loss {
            LossKind::Bce {
                target_thresh: self.bce_target_thresh,
            }
        } else {
            LossKind::CrossEntropy
        }
    }

    /// The Mixup/CutMix settings train.py passes to timm's `Mixup`.
    pub(crate) fn mixup_config(&self) -> MixupConfig {
        MixupConfig {
            mixup_alpha: self.mixup,
            cutmix_alpha: self.cutmix,
            prob: self.mixup_prob,
            switch_prob: self.mixup_switch_prob,
            label_smoothing: self.smoothing,
            num_classes: self.num_classes,
        }
    }

    /// The loader jobs of this recipe (checked by the gate when it was read).
    ///
    /// # Errors
    /// Only for a recipe built by hand that the gate would refuse.
    pub fn jobs(&self) -> Result<DataJobs, SettingError> {
        DataJobs::try_from(self)
    }
}

/// toml's error on one line: its message, and where in `text` when it knows (its own
/// `Display` draws the line with a caret over several lines).
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn recipe(name: &str) -> TrainConfig {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../configs")
            .join(name);
        let loaded = TrainConfig::load(&path, &Overrides::none()).expect("recipe loads");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        loaded.config
    }

    #[test]
    fn the_three_recipes_carry_recipe_md_table_1() {
        let (a1, a2, a3) = (recipe("a1.toml"), recipe("a2.toml"), recipe("a3.toml"));
        for c in [&a1, &a2, &a3] {
            assert_eq!(c.model, "resnet50");
            assert_eq!(c.global_batch(), 2048);
            assert_eq!((c.opt.as_str(), c.sched.as_str()), ("lamb", "cosine"));
            assert_eq!((c.warmup_epochs, c.warmup_lr, c.min_lr), (5, 1e-4, 1e-6));
            assert_eq!((c.crop_pct, c.rsb.test_img_size), (0.95, 224));
            assert!(c.bce_loss);
            assert_eq!(c.bce_target_thresh, Some(0.2));
            assert_eq!(
                (c.cutmix, c.mixup_prob, c.mixup_switch_prob),
                (1.0, 1.0, 0.5)
            );
            assert_eq!((c.reprob, c.drop, c.clip_grad), (0.0, 0.0, None));
            assert_eq!((c.scale, c.ratio), ([0.08, 1.0], [0.75, 4.0 / 3.0]));
            assert!(!c.model_ema && c.amp);
            assert_eq!(c.interpolation, "bicubic");
        }
        let row = |c: &TrainConfig| {
            (
                c.epochs,
                c.img_size,
                c.lr,
                c.weight_decay,
                c.smoothing,
                c.drop_path,
                c.aug_repeats,
                c.mixup,
                c.aa.clone(),
            )
        };
        let aa7 = "rand-m7-mstd0.5-inc1".to_string();
        assert_eq!(
            row(&a1),
            (600, 224, 5e-3, 0.01, 0.1, 0.05, 3, 0.2, aa7.clone())
        );
        assert_eq!(row(&a2), (300, 224, 5e-3, 0.02, 0.0, 0.05, 3, 0.1, aa7));
        let aa6 = "rand-m6-mstd0.5-inc1".to_string();
        assert_eq!(row(&a3), (100, 160, 8e-3, 0.02, 0.0, 0.0, 0, 0.1, aa6));
    }

    #[test]
    fn the_cpu_recipes_load_without_warnings() {
        for name in ["smoke.toml", "cifar10.toml"] {
            let c = recipe(name);
            assert!(c.rsb.small_stem && c.rsb.width < 1.0, "{name}");
            assert_eq!((c.img_size, c.rsb.test_img_size), (32, 32), "{name}");
            assert_eq!(c.num_classes, 10, "{name}");
        }
        assert_eq!(recipe("cifar10.toml").rsb.val_split, "test");
    }

    #[test]
    fn the_transfer_recipe_is_a1s_with_deits_fine_tuning_values() {
        let (t, a1) = (recipe("transfer-cifar10.toml"), recipe("a1.toml"));
        // deit#45: 224 px, global batch 768, 1000 epochs, no stochastic depth or erasing.
        assert_eq!((t.img_size, t.global_batch(), t.epochs), (224, 768, 1000));
        assert_eq!((t.drop_path, t.reprob, t.num_classes), (0.0, 0.0, 10));
        // The rest is A1's, the weight decay included.
        assert_eq!(t.weight_decay, a1.weight_decay);
        assert_eq!((&t.aa, t.mixup, t.cutmix), (&a1.aa, a1.mixup, a1.cutmix));
        assert_eq!((t.bce_loss, t.aug_repeats), (a1.bce_loss, a1.aug_repeats));
        assert!(t.lr < a1.lr);
    }

    #[test]
    fn unknown_keys_are_errors_and_timm_only_keys_are_warnings() {
        let text = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/a1.toml"),
        )
        .expect("a1.toml");
        let with_workers = format!("workers = 8\n{text}");
        let loaded = TrainConfig::parse(&with_workers, "x.toml", &Overrides::none())
            .expect("timm key accepted");
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].contains("`workers`"));
        let typo = format!("weight_decai = 0.1\n{text}");
        let err = TrainConfig::parse(&typo, "x.toml", &Overrides::none()).expect_err("unknown key");
        assert!(
            err.to_string().contains("x.toml") && err.to_string().contains("weight_decai"),
            "{err}"
        );
        let broken = format!("{text}\nlr = [\n");
        let err = TrainConfig::parse(&broken, "x.toml", &Overrides::none()).expect_err("toml");
        let lines = text.lines().count();
        assert_eq!(
            err.to_string(),
            format!(
                "x.toml: line {}, column 7: unclosed array, expected `]`",
                lines + 2
            )
        );
        let sgd = text.replace("opt = \"lamb\"", "opt = \"sgd\"");
        let err = TrainConfig::parse(&sgd, "x.toml", &Overrides::none()).expect_err("sgd");
        assert!(err.to_string().contains("opt = \"sgd\""), "{err}");
    }

    fn a1_text() -> String {
        std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/a1.toml"),
        )
        .expect("a1.toml")
    }

    #[test]
    fn bad_values_name_the_key_the_file_and_the_range() {
        let text = a1_text();
        for (from, to, want) in [
            (
                "crop_pct = 0.95",
                "crop_pct = 1e-3",
                "x.toml: crop_pct = 0.001 is outside 0.5..=1.0",
            ),
            (
                "aa = \"rand-m7-mstd0.5-inc1\"",
                "aa = \"rand-q7\"",
                "x.toml: aa = \"rand-q7\" does not parse",
            ),
            (
                "img_size = 224",
                "img_size = 4",
                "x.toml: img_size = 4 is outside 8..=2048",
            ),
            (
                "test_img_size = 224",
                "test_img_size = 100000",
                "x.toml: rsb.test_img_size = 100000 is outside 8..=2048",
            ),
            (
                "num_classes = 1000",
                "num_classes = 0",
                "x.toml: num_classes = 0 is outside 1..=1000000",
            ),
            (
                "ratio = [0.75, 1.3333333333333333]",
                "ratio = [1e-3, 1e-3]",
                "x.toml: ratio = [0.001, 0.001] must satisfy 0.1 <= min <= max <= 10",
            ),
            (
                "train_interpolation = \"random\"",
                "train_interpolation = \"nearest\"",
                "x.toml: train_interpolation = \"nearest\" is not allowed",
            ),
            (
                "lr = 5e-3",
                "lr = -1.0",
                "x.toml: lr = -1 is outside (0, 10]",
            ),
            (
                "model = \"resnet50\"",
                "model = \"vit\"",
                "x.toml: model = \"vit\"",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            let bad = text.replacen(from, to, 1);
            let e = TrainConfig::parse(&bad, "x.toml", &Overrides::none())
                .expect_err(to)
                .to_string();
            assert!(e.starts_with(want), "{to}: {e}");
        }
    }

    #[test]
    fn flags_override_the_file_and_bad_ones_are_named_by_flag() {
        let text = a1_text();
        let flags = |entries: &[(&str, toml::Value)]| {
            Overrides::flags(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            )
        };
        let overrides = flags(&[
            ("lr", toml::Value::Float(1e-3)),
            ("batch_size", toml::Value::Integer(128)),
            ("rsb.world_size", toml::Value::Integer(16)),
            ("epochs", toml::Value::Integer(10)),
            ("aa", toml::Value::String("none".into())),
        ]);
        let c = TrainConfig::parse(&text, "a1.toml", &overrides)
            .expect("overridden")
            .config;
        assert_eq!((c.lr, c.batch_size, c.epochs), (1e-3, 128, 10));
        assert_eq!((c.rsb.world_size, c.global_batch()), (16, 2048));
        assert_eq!(c.aa, "none");
        // Untouched keys keep the file's values.
        assert_eq!((c.weight_decay, c.rsb.test_img_size), (0.01, 224));
        let bad = flags(&[("crop_pct", toml::Value::Float(2.0))]);
        let e = TrainConfig::parse(&text, "a1.toml", &bad).expect_err("crop_pct 2");
        assert_eq!(
            e.to_string(),
            "a1.toml: --crop-pct 2.0 is outside 0.5..=1.0 (given on the command line)"
        );
        let bad = flags(&[("rsb.world_size", toml::Value::Integer(0))]);
        let e = TrainConfig::parse(&text, "a1.toml", &bad).expect_err("world 0");
        assert!(
            e.to_string().contains("--world-size 0 is outside 1..=4096"),
            "{e}"
        );
    }
}
