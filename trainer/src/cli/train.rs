//! `trainer train`: a run from a recipe, with a progress bar.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::device::{DeviceKind, Precision};
use trainer::metrics::Metric;
use trainer::overrides::RecipeOverrides;
use trainer::train::{Event, TrainOptions};

use super::{DataArgs, load_recipe};

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
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", conflicts_with = "devices")]
    pub device: DeviceKind,
    /// Several GPUs of this machine that share the recipe's rsb.world_size ranks, e.g.
    /// cuda:0,cuda:1,cuda:2,cuda:3 (their count must divide the ranks; each runs its share one
    /// after another per step; gradients are summed by NCCL, which must be loadable as
    /// libnccl.so). Checkpoints do not depend on the device count: --resume may change it.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub devices: Vec<DeviceKind>,
    /// Float type of parameters and activations.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Stop after this many steps in all (the LR schedule still spans the recipe's epochs).
    #[arg(long)]
    pub max_steps: Option<u64>,
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
        devices: if a.devices.is_empty() {
            vec![a.device]
        } else {
            a.devices.clone()
        },
        precision: a.dtype,
        max_steps: a.max_steps,
        init_from: a.init_from.clone(),
        new_head: a.new_head,
        digests: a.digests,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let last = trainer::train::train(&options, &mut |e| match e {
        Event::Started {
            start_step,
            total_steps,
            steps_per_epoch,
            params,
        } => {
            bar.set_length(total_steps);
            bar.set_position(start_step);
            bar.println(format!(
                "{} ({params} trainable parameters), {steps_per_epoch} steps per epoch, steps \
                 {start_step}..{total_steps}; metrics in {}",
                options.config.model,
                options.out.join("metrics.jsonl").display()
            ));
        }
        Event::Metric(Metric::Step {
            step,
            epoch,
            loss,
            lr,
            samples_per_s,
            ..
        }) => {
            bar.set_position(step);
            bar.set_message(format!(
                "epoch {epoch} loss {loss:.4} lr {lr:.2e} {samples_per_s:.1} img/s"
            ));
        }
        Event::Metric(Metric::Eval {
            epoch,
            top1,
            top5,
            samples,
            ..
        }) => bar.println(format!(
            "eval after epoch {epoch}: top-1 {top1:.2} %, top-5 {top5:.2} % ({samples} images)"
        )),
        Event::Checkpoint(dir) => bar.println(format!("checkpoint {}", dir.display())),
        Event::Note(text) => bar.println(format!("note: {text}")),
        Event::Batch {
            rank,
            position,
            sha256,
        } => println!(
            "rank {rank} epoch {} step {} sha256 {sha256}",
            position.epoch, position.step
        ),
    })?;
    bar.finish();
    if let Some(Metric::Eval { top1, top5, .. }) = last {
        println!("final: top-1 {top1:.2} %, top-5 {top5:.2} %");
    }
    Ok(ExitCode::SUCCESS)
}
