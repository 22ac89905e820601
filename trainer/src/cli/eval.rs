//! `trainer eval`: top-1 and top-5 of a checkpoint or timm weights on the recipe's val split, or
//! on several packed sets in one table, with ImageNet-ReaL's labels where the images are
//! ImageNet's validation images.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use trainer::data::{DataJobs, DataSource, check_splits};
use trainer::metrics::Metric;
use trainer::overrides::RecipeOverrides;

use super::{SetArgs, load_recipe};

/// `trainer eval` flags.
#[derive(Args)]
pub struct EvalArgs {
    /// The recipe.
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// Socket of a running `loader serve` daemon (the recipe's val split through it).
    #[arg(long, conflicts_with_all = ["shards", "sets"])]
    pub loader: Option<std::path::PathBuf>,
    /// Packed shards, read by a loader in this process (the recipe's val split; the same as
    /// --set VAL=DIR).
    #[arg(long)]
    pub shards: Option<std::path::PathBuf>,
    /// A checkpoint directory (e.g. runs/x/latest) or a .safetensors file with timm's names.
    pub weights: std::path::PathBuf,
    /// Loader worker threads with --shards or --set (0: one per core).
    #[arg(short = 'j', long, default_value_t = 0)]
    pub workers: u32,
    #[command(flatten)]
    pub sets: SetArgs,
    /// Print the table as one JSON line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub overrides: RecipeOverrides,
}

/// Evaluates and prints the accuracies.
pub fn run(a: EvalArgs) -> Result<ExitCode> {
    let config = load_recipe(&a.config, &a.overrides)?;
    let jobs = DataJobs::try_from(&config)?;
    // Sets: those named, else the recipe's val split of --shards; through a daemon
    // (--loader) only the plain accuracies, the daemon's file names being out of reach.
    let sets = match (&a.sets.sets[..], &a.shards) {
        ([], Some(dir)) => vec![trainer::eval::EvalSet {
            name: config.rsb.val_split.clone(),
            dir: dir.clone(),
            split: None,
        }],
        (sets, _) => sets.to_vec(),
    };
    let batches = match (&a.loader, sets.is_empty()) {
        (Some(socket), true) => {
            if a.sets.real_labels.is_some() {
                anyhow::bail!(
                    "--real-labels needs the images' file names: evaluate packed shards \
                     (--shards DIR or --set NAME=DIR) rather than through --loader"
                );
            }
            let batches = DataSource::Loader {
                socket: socket.clone(),
            }
            .open()?;
            check_splits(batches.socket(), &jobs, config.num_classes)?;
            Some(batches)
        }
        (None, true) => anyhow::bail!(
            "name what to evaluate: --set NAME=DIR[:SPLIT] (repeatable), --shards DIR or \
             --loader SOCKET"
        ),
        (_, false) => None,
    };
    let device = burn::tensor::Device::flex().autodiff();
    let model = trainer::train::model_config(&config)?.init(&device)?;
    let model = if a.weights.is_dir() {
        trainer::checkpoint::load_model(&a.weights, model)?
    } else {
        trainer::weights::import(model, &a.weights)?
    };
    let upload = trainer::upload::Uploader::new(trainer::device::DeviceKind::Cpu);
    let target = trainer::eval::Target {
        model: &model,
        device: &device,
        upload: &upload,
    };
    if let Some(batches) = batches {
        let m =
            trainer::eval::evaluate(&target, batches.socket(), &jobs.eval, 0, 0, &mut |_, _| {})?;
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
        return Ok(ExitCode::SUCCESS);
    }
    let real = a
        .sets
        .real_labels
        .as_deref()
        .map(|path| {
            trainer::real::RealLabels::load(path, trainer::real::VAL_IMAGES, config.num_classes)
        })
        .transpose()?;
    let mut scores = Vec::with_capacity(sets.len());
    for set in &sets {
        let score = trainer::eval::evaluate_set(
            &target,
            set,
            &jobs.eval,
            &config.rsb.val_split,
            config.num_classes,
            a.workers,
            real.as_ref(),
        )
        .with_context(|| format!("evaluating --set {}", set.name))?;
        scores.push(score);
    }
    if a.json {
        println!("{}", serde_json::to_string(&scores)?);
    } else {
        println!("{}:", a.weights.display());
        println!(
            "{:<10} {:<8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>12}",
            "set", "split", "images", "top-1", "top-5", "ReaL top-1", "ReaL top-5", "ReaL images"
        );
        for s in &scores {
            let (r1, r5, rn) = s.real.map_or(("-".into(), "-".into(), "-".into()), |r| {
                (
                    format!("{:.2}", r.top1),
                    format!("{:.2}", r.top5),
                    r.images.to_string(),
                )
            });
            println!(
                "{:<10} {:<8} {:>8} {:>8.2} {:>8.2} {r1:>11} {r5:>11} {rn:>12}",
                s.name, s.split, s.images, s.top1, s.top5
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
