//! `trainer`: train and evaluate ResNets with timm's recipes, benchmark the step, and check a
//! GPU backend against the CPU. Each subcommand lives in its own module under `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Trains ResNets with timm's "ResNet strikes back" recipes on burn.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train with a recipe (configs/a1.toml, configs/cifar10.toml, ...): batches from a
    /// `loader serve` daemon (--loader) or a loader inside this process (--shards);
    /// evaluation every `rsb.eval_interval` epochs; OUT/metrics.jsonl (one JSON line per step
    /// and per eval); atomic checkpoints in OUT at each epoch end (and every
    /// `rsb.checkpoint_interval` steps). After a crash, the same command with --resume
    /// continues exactly where the last checkpoint stands.
    Train(cli::train::TrainArgs),
    /// Evaluate a checkpoint (OUT/latest or a ckpt-* directory) or timm-named safetensors on
    /// the recipe's val split: top-1 and top-5 at rsb.test_img_size, crop_pct, interpolation.
    Eval(cli::eval::EvalArgs),
    /// Draw a run's curves (loss, learning rate, top-1/top-5, samples/s) from its
    /// metrics.jsonl into a PNG.
    Plot(cli::plot::PlotArgs),
    /// Several runs side by side: their loss and top-1 curves in one PNG (one color per run)
    /// and a table of their final loss, top-1, top-5 and best top-1.
    Compare(cli::compare::CompareArgs),
    /// A study: every combination of --vary values (seed=0,1,2, lr=..., any recipe key) as
    /// its own run under --out, then a table (mean ± std, min, max per eval set and metric,
    /// runs that differ only in seed grouped) and a plot with one point per run. Running it
    /// again resumes unfinished runs and reuses finished ones.
    Study(cli::study::StudyArgs),
    /// Time the full training step (upload uint8, Mixup/CutMix, normalize, forward, BCE,
    /// backward, timm's LAMB) on synthetic batches held in memory.
    Bench(cli::bench::BenchArgs),
    /// Run one batch through the same weights on two devices and report how far logits, loss
    /// and gradients differ; exit status 1 if any is over --tolerance.
    CheckDevice(cli::check_device::CheckArgs),
    /// Print a model's structure facts (parameter count).
    Info(cli::ModelArgs),
    /// Write a freshly initialized model's weights as timm-named safetensors.
    Export(cli::export::ExportArgs),
    /// Eval-mode logits of timm-named weights on the fixed probe batch of
    /// `trainer/benches/timm_logits.py` (x[i] = sin(0.001·i)·2 in NCHW order), as JSON.
    Logits(cli::logits::LogitsArgs),
    /// Read a recipe (configs/a1.toml, ...) with timm's flags over it, check every value,
    /// report ignored timm keys, print it resolved with its global batch.
    Config(cli::config::ConfigArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Plot(a) => cli::plot::run(a),
        Command::Compare(a) => cli::compare::run(a),
        Command::Study(a) => cli::study::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::CheckDevice(a) => cli::check_device::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Config(a) => cli::config::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", shard_tool::one_line(e.chain()));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command's flags (a name used twice, a bad default) only when that
    /// subcommand is parsed; this checks every subcommand's at once.
    #[test]
    fn every_subcommand_has_consistent_flags() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
