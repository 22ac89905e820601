//! `trainer eval`: top-1 and top-5 of a checkpoint or timm weights on the recipe's val split, or
//! on several packed sets in one table, with ImageNet-ReaL's labels where the images are
//! ImageNet's validation images.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use trainer::data::DataSource;
use trainer::data::source::check_splits;
use trainer::device::Precision;
use trainer::eval::real::{RealLabels, VAL_IMAGES};
use trainer::eval::{EvalSet, SetScore, evaluate, evaluate_set};
use trainer::recipe::{DataJobs, TrainConfig};
use trainer::run::{OnDevice, Weights};

use super::recipe_flags::RecipeFlags;
use super::{DeviceArgs, SetArgs, load_recipe, usage};

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
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub sets: SetArgs,
    /// Print the table as one JSON line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub recipe: RecipeFlags,
}

/// Evaluates and prints the accuracies.
pub fn run(a: EvalArgs) -> Result<ExitCode> {
    let config = load_recipe(&a.config, &a.recipe)?;
    let jobs = config.jobs()?;
    // Sets: those named, else the recipe's val split of --shards; through a daemon
    // (--loader) only the plain accuracies, the daemon's file names being out of reach.
    let sets = match (&a.sets.sets[..], &a.shards) {
        ([], Some(dir)) => vec![EvalSet {
            name: config.rsb.val_split.clone(),
            dir: dir.clone(),
            split: None,
        }],
        (sets, _) => sets.to_vec(),
    };
    if sets.is_empty() {
        let Some(socket) = &a.loader else {
            return Err(usage(
                "name what to evaluate: --set NAME=DIR[:SPLIT] (repeatable), --shards DIR or \
                 --loader SOCKET",
            ));
        };
        if a.sets.real_labels.is_some() {
            return Err(usage(
                "--real-labels needs the images' file names: evaluate packed shards (--shards \
                 DIR or --set NAME=DIR) rather than through --loader",
            ));
        }
        return through_daemon(&a, &config, &jobs, socket);
    }
    let real = a
        .sets
        .real_labels
        .as_deref()
        .map(|path| RealLabels::load(path, VAL_IMAGES, config.num_classes))
        .transpose()?;
    let on = load(&a, &config)?;
    let mut scores = Vec::with_capacity(sets.len());
    for set in &sets {
        let score = evaluate_set(
            &on.target(),
            set,
            &jobs.eval,
            &config.rsb.val_split,
            config.num_classes,
            a.sets.workers,
            real.as_ref(),
        )
        .with_context(|| format!("evaluating --set {}", set.name))?;
        scores.push(score);
    }
    for s in &scores {
        say_non_finite(&s.name, s.non_finite, s.images);
    }
    if a.json {
        println!("{}", serde_json::to_string(&scores)?);
    } else {
        print_table(&a.weights, &scores);
    }
    Ok(ExitCode::SUCCESS)
}

/// The weights on the device, in the recipe's precision unless --dtype says otherwise.
fn load(a: &EvalArgs, config: &TrainConfig) -> Result<OnDevice> {
    let (precision, _) = Precision::resolve(a.device.dtype, config.amp, a.device.device);
    let weights = Weights::at(&a.weights);
    let on = OnDevice::load(
        &config.model()?,
        a.device.device,
        precision,
        config.seed,
        Some(&weights),
    )?;
    if let Some(note) = &on.note {
        eprintln!("note: {}: {note}", a.weights.display());
    }
    Ok(on)
}

/// The recipe's val split through a running daemon: one line.
fn through_daemon(
    a: &EvalArgs,
    config: &TrainConfig,
    jobs: &DataJobs,
    socket: &std::path::Path,
) -> Result<ExitCode> {
    let batches = DataSource::Loader {
        socket: socket.to_path_buf(),
    }
    .open()?;
    check_splits(batches.socket(), &jobs.splits(), config.num_classes)?;
    let on = load(a, config)?;
    let acc = evaluate(&on.target(), batches.socket(), &jobs.eval, &mut |_, _| {})?;
    say_non_finite(&config.rsb.val_split, acc.non_finite, acc.samples);
    if a.json {
        // The shape --set prints: one set, the daemon's split.
        let score = SetScore {
            name: config.rsb.val_split.clone(),
            dir: socket.display().to_string(),
            split: config.rsb.val_split.clone(),
            images: acc.samples,
            top1: acc.top1,
            top5: acc.top5,
            non_finite: acc.non_finite,
            real: None,
        };
        println!("{}", serde_json::to_string(&[score])?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: top-1 {:.2} %, top-5 {:.2} % on {} images of {}",
        a.weights.display(),
        acc.top1,
        acc.top5,
        acc.samples,
        config.rsb.val_split
    );
    Ok(ExitCode::SUCCESS)
}

/// One row per set.
fn print_table(weights: &std::path::Path, scores: &[SetScore]) {
    println!("{}:", weights.display());
    println!(
        "{:<10} {:<8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>12}",
        "set", "split", "images", "top-1", "top-5", "ReaL top-1", "ReaL top-5", "ReaL images"
    );
    for s in scores {
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

/// A line on stderr when some images' logits were NaN or infinite (counted wrong).
fn say_non_finite(set: &str, non_finite: u64, images: u64) {
    if non_finite > 0 {
        eprintln!(
            "warning: {set}: {non_finite} of {images} images had NaN or infinite logits, \
             counted wrong (weights from a diverged run, or an overflow in --dtype bf16)"
        );
    }
}
