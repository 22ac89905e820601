//! `trainer train`: a run from a recipe, with a progress bar.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::run::metrics::Metric;
use trainer::run::{RunDir, TrainOptions, Weights};

use super::progress::{report, run_bar};
use super::recipe_flags::RecipeFlags;
use super::{DataArgs, RunArgs, load_recipe};

/// `trainer train` flags.
#[derive(Args)]
pub struct TrainArgs {
    /// The recipe (TOML with timm's train.py flag names).
    #[arg(long)]
    pub config: std::path::PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output directory (checkpoints, metrics.jsonl).
    #[arg(long, default_value = "runs/train")]
    pub out: std::path::PathBuf,
    /// Continue the run in --out from its latest checkpoint (starts fresh if it has none).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub run: RunArgs,
    /// Loader worker threads with --shards (0: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    pub workers: u32,
    /// Start from these weights instead of a fresh initialization: timm-named safetensors
    /// (from `timm`'s `safetensors.torch.save_file(model.state_dict(), ...)` or `trainer
    /// export`), or another run's checkpoint directory (RUN/latest). A classifier with another
    /// class count than the recipe's num_classes is re-initialized (fine-tuning on another
    /// label set; said once); every other tensor must fit. Ignored with --resume, whose
    /// checkpoint holds the weights.
    #[arg(long)]
    pub init_from: Option<std::path::PathBuf>,
    /// With --init-from: a new classifier (freshly initialized) even when the class counts
    /// match, for fine-tuning on another label set of the same size.
    #[arg(long, requires = "init_from")]
    pub new_head: bool,
    /// Print the SHA-256 of every rank's batch (`rank R epoch E step S sha256 D`), to compare
    /// with `loader fetch --digests --world-size W --rank R` of the same job.
    #[arg(long)]
    pub digests: bool,
    #[command(flatten)]
    pub recipe: RecipeFlags,
}

/// Trains, printing each eval and checkpoint above the bar.
pub fn run(a: TrainArgs) -> Result<ExitCode> {
    let config = load_recipe(&a.config, &a.recipe)?;
    let out = RunDir::new(&a.out);
    let options = TrainOptions {
        config,
        data: a.data.source(a.workers),
        out: out.clone(),
        resume: a.resume,
        devices: a.run.devices(),
        precision: a.run.dtype,
        max_steps: a.run.max_steps,
        init_from: a.init_from.as_deref().map(Weights::at),
        new_head: a.new_head,
        digests: a.digests,
    };
    let bar = run_bar();
    let last = trainer::run::train(&options, &mut |e| {
        report(&bar, &options.config.model, &out.metrics(), e);
    })?;
    bar.finish();
    if let Some(Metric::Eval { top1, top5, .. }) = last {
        println!("final: top-1 {top1:.2} %, top-5 {top5:.2} %");
    }
    Ok(ExitCode::SUCCESS)
}
