//! The `trainer` binary's subcommands, one module each, and what they share: the model flags
//! (timm's `--model` and CPU-sized variants), where batches come from, the device, the recipe
//! with timm's flags over it ([`recipe_flags`]), and how a run's progress is shown
//! ([`progress`]).

use anyhow::Result;
use clap::Args;
use shard_tool::console::number_in;
use trainer::data::DataSource;
use trainer::device::{DeviceKind, Precision};
use trainer::model::NetworkConfig;
use trainer::model::family::Shape;
use trainer::recipe::TrainConfig;
use trainer::recipe::ranges;

pub mod bench;
pub mod check_device;
pub mod compare;
pub mod config;
pub mod eval;
pub mod export;
pub mod info;
pub mod logits;
pub mod plot;
pub mod progress;
pub mod recipe_flags;
pub mod study;
pub mod train;

use recipe_flags::RecipeFlags;

/// Which model (timm's `--model`, plus CPU-sized variants).
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// timm's model name: resnet18 to resnet152, the "D" and "T" models (resnet50d,
    /// resnet50t), resnext50_32x4d, seresnet50, ecaresnet50t and their depths,
    /// regnety_002 to regnety_160, efficientnet_b0, vit_tiny/small/base_patch16_224 (an
    /// unknown name is refused with the full list).
    #[arg(long, default_value = "resnet50")]
    pub model: String,
    /// timm's --num-classes.
    #[arg(long, default_value_t = 1000, value_parser = number_in(ranges::NUM_CLASSES))]
    pub num_classes: usize,
    /// Channel multiplier (1.0 = timm's model).
    #[arg(long, default_value_t = 1.0, value_parser = number_in(ranges::WIDTH))]
    pub width: f64,
    /// 3×3 stride-1 stem without max-pool, for 32×32 images.
    #[arg(long)]
    pub small_stem: bool,
    /// timm's --drop-path.
    #[arg(long, default_value_t = 0.0, value_parser = number_in(ranges::BELOW_ONE))]
    pub drop_path: f64,
}

impl ModelArgs {
    /// The ResNet these flags name.
    pub fn config(&self) -> Result<NetworkConfig> {
        self.config_at(None)
    }

    /// The network these flags name for images of `img_size` (a ViT's position embeddings
    /// depend on it; `None`: the model name's size).
    pub fn config_at(&self, img_size: Option<usize>) -> Result<NetworkConfig> {
        let shape = Shape {
            num_classes: self.num_classes,
            width: self.width,
            small_stem: self.small_stem,
            drop_path_rate: self.drop_path,
            img_size,
        };
        NetworkConfig::named(&self.model, shape)
            .map_err(|e| anyhow::Error::new(Usage(e.to_string())))
    }
}

/// Where batches come from (one of the two).
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct DataArgs {
    /// Socket of a running `loader serve` daemon.
    #[arg(long)]
    pub loader: Option<std::path::PathBuf>,
    /// Packed shards, read by a loader started inside this process.
    #[arg(long)]
    pub shards: Option<std::path::PathBuf>,
}

impl DataArgs {
    /// The source these flags name; `workers` for an in-process loader.
    pub fn source(&self, workers: u32) -> DataSource {
        match (&self.loader, &self.shards) {
            (Some(socket), _) => DataSource::Loader {
                socket: socket.clone(),
            },
            (None, Some(dir)) => DataSource::Shards {
                dir: dir.clone(),
                workers,
            },
            // clap's group makes one of the two required.
            (None, None) => DataSource::Loader {
                socket: loader::server::default_socket(),
            },
        }
    }
}

/// The device a command runs its model on, and its float types.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// flex (burn's CPU backend; `cpu` is the same), cuda or cuda:N (a build with the cuda
    /// feature), cube-cpu (the CUDA backend's kernels on this CPU; the cube-cpu feature).
    #[arg(long, default_value = "flex")]
    pub device: DeviceKind,
    /// Float types: f32; bf16 (everything, the weights too); amp (timm's --amp in bf16: f32
    /// weights, bf16 convolutions and classifier, f32 batch norm). Default: amp when the
    /// recipe says amp = true, else f32.
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
}

/// Where a run trains, in what precision, and for how long (`trainer train` and `study`).
#[derive(Args, Clone)]
pub struct RunArgs {
    /// flex (burn's CPU backend; `cpu` is the same), cuda or cuda:N, cube-cpu (the CUDA
    /// backend's kernels on this CPU, a stand-in for a GPU; slow to start).
    #[arg(long, default_value = "flex", conflicts_with = "devices")]
    pub device: DeviceKind,
    /// Several GPUs of this machine that share the recipe's rsb.world_size ranks, e.g.
    /// cuda:0,cuda:1,cuda:2,cuda:3 (their count must divide the ranks; each runs its share one
    /// after another per step; gradients are summed by NCCL, which must be loadable as
    /// libnccl.so). Checkpoints do not depend on the device count: --resume may change it.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub devices: Vec<DeviceKind>,
    /// Float types: f32; bf16 (everything, the weights too); amp (timm's --amp in bf16: f32
    /// weights, gradients and optimizer state, bf16 convolutions and classifier, f32 batch
    /// norm and loss). Default: amp when the recipe says amp = true, else f32.
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
    /// Stop after this many steps in all (the LR schedule still spans the recipe's epochs).
    #[arg(long, value_parser = number_in(ranges::STEPS))]
    pub max_steps: Option<u64>,
}

impl RunArgs {
    /// The devices named: --devices, else --device.
    pub fn devices(&self) -> Vec<DeviceKind> {
        if self.devices.is_empty() {
            vec![self.device]
        } else {
            self.devices.clone()
        }
    }
}

/// Extra evaluation sets, with ImageNet-ReaL's labels, and the loader threads that read them
/// (`trainer eval` and `study`).
#[derive(Args, Clone)]
pub struct SetArgs {
    /// Loader worker threads for --shards and the sets (0: one per core).
    #[arg(short = 'j', long, default_value_t = 0, value_parser = number_in(WORKERS))]
    pub workers: u32,
    /// An evaluation set, NAME=DIR or NAME=DIR:SPLIT (default split: the recipe's
    /// rsb.val_split), e.g. --set val=imagenet-rsb:val --set v2=imagenetv2-rsb:test;
    /// repeatable. Each is read by a loader in this process with the recipe's eval transform.
    #[arg(long = "set", value_name = "NAME=DIR[:SPLIT]")]
    pub sets: Vec<trainer::eval::EvalSet>,
    /// ImageNet-ReaL's real.json (50,000 lists of correct classes, github.com/google-research/
    /// reassessed-imagenet): adds ReaL top-1/top-5 over each set's ILSVRC2012_val_* images
    /// whose list is not empty, counted as timm's RealLabelsImagenet does.
    #[arg(long, value_name = "FILE")]
    pub real_labels: Option<std::path::PathBuf>,
}

/// The recipe at `path` with timm's flags over it, through the recipe's gate; its warnings
/// printed.
///
/// # Errors
/// The gate's refusal (exit status 2, [`is_bad_input`]).
pub fn load_recipe(path: &std::path::Path, flags: &RecipeFlags) -> Result<TrainConfig> {
    let loaded = TrainConfig::load(path, &flags.overrides()?)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded.config)
}

/// Bad usage or bad input: exit status 2 (the three binaries' one usage error).
pub use shard_tool::console::Usage;

/// A `u32` range of the loader's as the `usize` range of the trainer's flag of the same key.
pub fn widen(range: std::ops::RangeInclusive<u32>) -> std::ops::RangeInclusive<usize> {
    *range.start() as usize..=*range.end() as usize
}

/// Loader worker threads a flag takes (0: one per core), as `loader serve` takes them.
pub const WORKERS: std::ops::RangeInclusive<u32> = 0..=1024;

/// [`trainer::report::draw::SIDES`], as clap's range for `--width` and `--height`.
pub fn image_sides() -> std::ops::RangeInclusive<i64> {
    let sides = trainer::report::draw::SIDES;
    i64::from(*sides.start())..=i64::from(*sides.end())
}

/// Refuses `path` as a command's output, before any work, where it is a FIFO, a device, a
/// socket or a directory (the writer would refuse it too, but only after the work): the
/// user's mistake, exit status 2.
pub fn check_out(path: &std::path::Path) -> Result<()> {
    shard_tool::user_file::check_write_target(path).map_err(|e| usage(e.chain()))
}

/// `e` as a [`Usage`] error, its message kept.
pub fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Usage(e.to_string()))
}

/// Whether an error of the trainer's library is about what the user handed the command
/// (exit status 2) rather than a failure at run time (1): a recipe, a dataset or a split that
/// does not fit it, a weights or labels file, a run directory of another run, a device this
/// build cannot give. Each library error says which of its kinds are (`is_bad_input`), since a
/// transparent wrapper hides its cause from the chain.
pub fn is_bad_input(e: &(dyn std::error::Error + 'static)) -> bool {
    use trainer::device::DeviceError;
    use trainer::diagnostics::bench::BenchError;
    use trainer::eval::EvalError;
    use trainer::report::study::StudyError;
    use trainer::run::{TrainError, WeightsError};
    e.is::<trainer::recipe::RecipeError>()
        || e.is::<cpu_kernels::simd::CpuExtError>()
        || e.is::<trainer::eval::real::RealError>()
        || e.is::<trainer::model::timm_weights::TimmWeightsError>()
        || e.is::<trainer::ranks::replicas::PlacementError>()
        || e.downcast_ref::<trainer::ranks::processes::ProcessError>()
            .is_some_and(trainer::ranks::processes::ProcessError::is_bad_input)
        || e.downcast_ref::<trainer::data::DataError>()
            .is_some_and(trainer::data::DataError::is_bad_input)
        || e.downcast_ref::<EvalError>()
            .is_some_and(EvalError::is_bad_input)
        || e.downcast_ref::<WeightsError>()
            .is_some_and(WeightsError::is_bad_input)
        || e.downcast_ref::<TrainError>()
            .is_some_and(TrainError::is_bad_input)
        || e.downcast_ref::<StudyError>()
            .is_some_and(StudyError::is_bad_input)
        || e.downcast_ref::<DeviceError>()
            .is_some_and(DeviceError::is_bad_input)
        || e.downcast_ref::<BenchError>()
            .is_some_and(BenchError::is_bad_input)
}
