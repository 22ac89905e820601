//! `trainer eval`: top-1 and top-5 of a checkpoint or timm weights on the recipe's val split.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::data::{DataJobs, check_splits};
use trainer::metrics::Metric;
use trainer::overrides::RecipeOverrides;

use super::{DataArgs, load_recipe};

/// `trainer eval` flags.
#[derive(Args)]
pub struct EvalArgs {
    /// The recipe.
    #[arg(long)]
    pub config: std::path::PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// A checkpoint directory (e.g. runs/x/latest) or a .safetensors file with timm's names.
    pub weights: std::path::PathBuf,
    /// Loader worker threads with --shards (0: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    pub workers: u32,
    #[command(flatten)]
    pub overrides: RecipeOverrides,
}

/// Evaluates and prints the accuracies.
pub fn run(a: EvalArgs) -> Result<ExitCode> {
    let config = load_recipe(&a.config, &a.overrides)?;
    let jobs = DataJobs::try_from(&config)?;
    let batches = a.data.source(a.workers).open()?;
    check_splits(batches.socket(), &jobs, config.num_classes)?;
    let device = burn::tensor::Device::flex().autodiff();
    let model = trainer::train::model_config(&config)?.init(&device)?;
    let model = if a.weights.is_dir() {
        trainer::checkpoint::load_model(&a.weights, model)?
    } else {
        trainer::weights::import(model, &a.weights)?
    };
    let m = trainer::eval::evaluate(&model, &device, batches.socket(), &jobs.eval, 0, 0)?;
    if let Metric::Eval {
        top1,
        top5,
        samples,
        ..
    } = m
    {
        println!(
            "{}: top-1 {top1:.2} %, top-5 {top5:.2} % on {samples} images of {}",
            a.weights.display(),
            config.rsb.val_split
        );
    }
    Ok(ExitCode::SUCCESS)
}
