//! `trainer plot`: a run's curves into a PNG.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use trainer::run::RunDir;

/// `trainer plot` flags.
#[derive(Args)]
pub struct PlotArgs {
    /// The run's --out directory, or a metrics.jsonl file.
    pub run: PathBuf,
    /// The PNG to write [default: RUN/curves.png, or next to the metrics file].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Title above the panels [default: the run's directory name].
    #[arg(long)]
    pub title: Option<String>,
    /// Image width in pixels (200 to 8192: a PNG of 8192² is 200 MB in memory).
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(super::image_sides()))]
    pub width: u32,
    /// Image height in pixels (200 to 8192).
    #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u32).range(super::image_sides()))]
    pub height: u32,
}

/// Draws the curves.
pub fn run(a: PlotArgs) -> Result<ExitCode> {
    let run = RunDir::named(&a.run);
    let out = a.out.unwrap_or_else(|| run.curves());
    // A FIFO or a device as --out is the user's mistake: said before the drawing.
    super::check_out(&out)?;
    let title = a.title.unwrap_or_else(|| run.name());
    let summary = trainer::report::curves::plot(&run, &out, &title, a.width, a.height)?;
    let top1 = summary
        .last_top1
        .map_or_else(String::new, |t| format!("; last top-1 {t:.2} %"));
    println!(
        "wrote {} ({} steps, {} evaluation(s){top1})",
        out.display(),
        summary.steps,
        summary.evals
    );
    Ok(ExitCode::SUCCESS)
}
