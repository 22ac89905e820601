//! `trainer study`: every combination of `--vary` values as a run, then one table and one plot.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use shard_tool::console::say;
use trainer::report::study::{RunStatus, StudyEvent, StudyOptions, Vary};

use super::progress::{report, run_bar};
use super::recipe_flags::RecipeFlags;
use super::{DataArgs, RunArgs, SetArgs};

/// `trainer study` flags.
#[derive(Args)]
pub struct StudyArgs {
    /// The recipe every run starts from.
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// A recipe key and the values to try, KEY=V1,V2,... (timm's names, `-` or `_`; [rsb]
    /// keys with or without `rsb.`; a list value in brackets: scale=[0.08,1],[0.35,1]);
    /// repeatable: every combination is a run. `seed` is the replicate key: runs that differ
    /// only in their seed form one group of the table (mean ± std).
    #[arg(long, required = true, value_name = "KEY=V1,V2,...")]
    pub vary: Vec<Vary>,
    /// The study's directory: a run directory per combination (seed=0, lr=2e-3+seed=1, ...),
    /// study.txt and study.json (the table), study.png (the plot). Running the same command
    /// again resumes unfinished runs and reuses finished ones.
    #[arg(long, default_value = "runs/study")]
    pub out: std::path::PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Extra sets scored on every run's last checkpoint (the recipe's val split is always
    /// scored: each run's last evaluation).
    #[command(flatten)]
    pub sets: SetArgs,
    /// Print the report (runs and table) as one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The plot's width in pixels (--width is the recipe's rsb.width).
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(super::image_sides()))]
    pub plot_width: u32,
    /// The plot's height in pixels.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(super::image_sides()))]
    pub plot_height: u32,
    #[command(flatten)]
    pub recipe: RecipeFlags,
}

/// Runs the study and prints its table.
pub fn run(a: StudyArgs) -> Result<ExitCode> {
    let options = StudyOptions {
        recipe: a.config.clone(),
        overrides: a.recipe.overrides()?,
        varies: a.vary.clone(),
        out: a.out.clone(),
        data: a.data.source(a.sets.workers),
        devices: a.run.devices(),
        precision: a.run.dtype,
        max_steps: a.run.max_steps,
        sets: a.sets.sets.clone(),
        real_labels: a.sets.real_labels.clone(),
        workers: a.sets.workers,
        plot_size: (a.plot_width, a.plot_height),
    };
    let mut bar = run_bar();
    let mut model = String::new();
    let mut metrics = a.out.clone();
    let study = trainer::report::study::run_study(&options, &mut |e| match e {
        StudyEvent::Run {
            index,
            of,
            name,
            dir,
            model: m,
            status,
        } => {
            bar.finish_and_clear();
            model = m.to_owned();
            let what = match status {
                RunStatus::New => "starts".to_string(),
                RunStatus::Partial { steps_done } => format!("resumes after step {steps_done}"),
                RunStatus::Finished { steps_done } => {
                    format!("finished ({steps_done} steps): reused")
                }
            };
            eprintln!("run {index}/{of} {name}: {what}");
            metrics = dir.metrics();
            // A fresh bar per run; the previous one is done.
            bar = run_bar();
        }
        StudyEvent::Train(e) => report(&bar, &model, &metrics, e),
        StudyEvent::Scored { name, set, cached } => {
            let how = if cached { " (kept from before)" } else { "" };
            say(&bar, format!("{name}: scored on --set {set}{how}"));
        }
    })?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&study)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", study.text());
    println!(
        "{} runs; table in {}, plot in {}",
        study.runs.len(),
        a.out.join(trainer::report::study::TABLE_FILE).display(),
        a.out.join(trainer::report::study::PLOT_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}
