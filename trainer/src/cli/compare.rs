//! `trainer compare`: several runs' curves in one PNG and their final metrics in a table.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

/// `trainer compare` flags.
#[derive(Args)]
pub struct CompareArgs {
    /// The runs' --out directories (or their metrics.jsonl files).
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, default_value = "compare.png")]
    pub out: PathBuf,
    /// Print the table as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Image width in pixels (200 to 8192: a PNG of 8192² is 200 MB in memory).
    #[arg(long, default_value_t = 1200, value_parser = clap::value_parser!(u32).range(super::image_sides()))]
    pub width: u32,
    /// Image height in pixels (200 to 8192).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(super::image_sides()))]
    pub height: u32,
}

/// Draws the runs and prints their table.
pub fn run(a: CompareArgs) -> Result<ExitCode> {
    // A FIFO or a device as --out is the user's mistake: said before the runs are read.
    super::check_out(&a.out)?;
    let table = trainer::report::compare::compare(&a.runs, &a.out, a.width, a.height)?;
    if a.json {
        println!("{}", serde_json::to_string(&table)?);
        return Ok(ExitCode::SUCCESS);
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!(
        "{:<24} {:>8} {:>7} {:>11} {:>8} {:>8} {:>10}",
        "run", "steps", "epochs", "final loss", "top-1", "top-5", "best top-1"
    );
    for r in &table {
        println!(
            "{:<24} {:>8} {:>7} {:>11.4} {:>8} {:>8} {:>10}",
            r.name,
            r.steps,
            r.epochs,
            r.final_loss,
            pct(r.top1),
            pct(r.top5),
            pct(r.best_top1)
        );
    }
    println!("curves: {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
