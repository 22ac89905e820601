//! `shard-tool verify`: every checksum of a packed dataset.

use shard_tool::console::escaped;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::Args;
use shard_tool::Manifest;
use shard_tool::console::number_in;

use super::{default_threads, progress_bar};

/// `shard-tool verify` flags.
#[derive(Args)]
pub struct VerifyArgs {
    /// Dataset directory (made by `pack`).
    pub dir: PathBuf,
    /// Threads.
    #[arg(short = 'j', long, default_value_t = default_threads(), value_parser = number_in(super::THREADS))]
    pub threads: usize,
}

/// Checks and prints each mismatch; failure if there is one.
pub fn run(args: &VerifyArgs, quiet: bool) -> Result<ExitCode> {
    let (dir, threads) = (args.dir.as_path(), args.threads);
    let mut stdout = std::io::stdout().lock();
    let manifest = Manifest::load(dir).with_context(|| format!("verifying {}", dir.display()))?;
    let bar = progress_bar(shard_tool::total_bytes(&manifest), quiet);
    bar.set_prefix("verify");
    let started = Instant::now();
    let report = shard_tool::verify(dir, threads, &|bytes| bar.inc(bytes))
        .with_context(|| format!("verifying {}", dir.display()))?;
    bar.finish_and_clear();
    for p in &report.problems {
        writeln!(stdout, "MISMATCH {}", escaped(&p.to_string()))?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let summary = format!(
        "{} records, {} checked in {secs:.1} s ({:.0} MB/s)",
        report.records,
        ByteSize(report.bytes),
        report.bytes as f64 / secs / 1e6
    );
    if report.problems.is_empty() {
        if !quiet {
            writeln!(stdout, "OK: {summary}")?;
        }
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(
            stdout,
            "FAILED: {} problem(s); {summary}",
            report.problems.len()
        )?;
        Ok(ExitCode::FAILURE)
    }
}
