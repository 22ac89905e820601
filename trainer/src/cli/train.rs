//! `trainer train`: a run from a recipe, with a progress bar.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use shard_tool::progress::say;
use trainer::metrics::Metric;
use trainer::overrides::RecipeOverrides;
use trainer::train::{Event, TrainOptions};

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
    /// Start from timm-named safetensors weights (from `timm`'s
    /// `safetensors.torch.save_file(model.state_dict(), ...)` or `trainer export`) instead of
    /// a fresh initialization. A classifier with another class count than the recipe's
    /// num_classes is re-initialized (fine-tuning on another label set; said once); every other
    /// tensor must fit. Ignored with --resume, whose checkpoint holds the weights.
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
    pub overrides: RecipeOverrides,
}

/// Trains, printing each eval and checkpoint above the bar.
pub fn run(a: TrainArgs) -> Result<ExitCode> {
    let config = load_recipe(&a.config, &a.overrides)?;
    let options = TrainOptions {
        config,
        data: a.data.source(a.workers),
        out: a.out.clone(),
        resume: a.resume,
        devices: a.run.devices(),
        precision: a.run.dtype,
        max_steps: a.run.max_steps,
        init_from: a.init_from.clone(),
        new_head: a.new_head,
        digests: a.digests,
    };
    let bar = progress_bar()?;
    let last = trainer::train::train(&options, &mut |e| {
        report(&bar, &options.config.model, &options.out, e);
    })?;
    bar.finish();
    if let Some(Metric::Eval { top1, top5, .. }) = last {
        println!("final: top-1 {top1:.2} %, top-5 {top5:.2} %");
    }
    Ok(ExitCode::SUCCESS)
}

/// The bar a run's steps advance.
pub fn progress_bar() -> Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (eta {eta})",
        )?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// Shows one event of the run of `model` in `out`: steps move the bar, evaluations,
/// checkpoints and notes are printed above it.
pub fn report(bar: &indicatif::ProgressBar, model: &str, out: &std::path::Path, e: Event) {
    match e {
        Event::Started {
            start_step,
            total_steps,
            steps_per_epoch,
            params,
        } => {
            bar.set_length(total_steps);
            bar.set_position(start_step);
            say(
                bar,
                format!(
                    "{model} ({params} trainable parameters), {steps_per_epoch} steps per epoch, \
                 steps {start_step}..{total_steps}; metrics in {}",
                    out.join("metrics.jsonl").display()
                ),
            );
        }
        Event::Metric(Metric::Step {
            step,
            epoch,
            loss,
            lr,
            samples_per_s,
            ..
        }) => {
            let text = format!("epoch {epoch} loss {loss:.4} lr {lr:.2e} {samples_per_s:.1} img/s");
            // Without a terminal (a log file), a line for every fiftieth of the run.
            let total = bar.length().unwrap_or(0);
            if bar.is_hidden() && (step % (total / 50).max(1) == 0 || step == total) {
                eprintln!("step {step}/{total} {text}");
            }
            bar.set_position(step);
            bar.set_message(text);
        }
        Event::Metric(Metric::Eval {
            epoch,
            top1,
            top5,
            samples,
            ..
        }) => say(
            bar,
            format!(
                "eval after epoch {epoch}: top-1 {top1:.2} %, top-5 {top5:.2} % ({samples} images)"
            ),
        ),
        Event::Checkpoint(dir) => say(bar, format!("checkpoint {}", dir.display())),
        Event::Note(text) => say(bar, format!("note: {text}")),
        Event::Batch {
            rank,
            position,
            sha256,
        } => println!(
            "rank {rank} epoch {} step {} sha256 {sha256}",
            position.epoch, position.step
        ),
    }
}
