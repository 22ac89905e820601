//! `shard-tool synth`: a synthetic ImageFolder tree for demos and tests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use shard_tool::console::number_in;
use shard_tool::synth;

/// `shard-tool synth` flags.
#[derive(Args)]
pub struct SynthArgs {
    /// Directory to create the tree in.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Number of classes.
    #[arg(long, default_value_t = 10, value_parser = number_in(1..=100_000u32))]
    pub classes: u32,
    /// Training images per class.
    #[arg(long, default_value_t = 100, value_parser = number_in(0..=1_000_000u32))]
    pub train_per_class: u32,
    /// Validation images per class.
    #[arg(long, default_value_t = 20, value_parser = number_in(0..=1_000_000u32))]
    pub val_per_class: u32,
    /// Side of the square images in pixels.
    #[arg(long, default_value_t = 64, value_parser = number_in(8..=4096u32))]
    pub size: u32,
    /// Add ImageNet's odd files to train/class_000: a PNG named .JPEG, a CMYK JPEG, a
    /// grayscale JPEG, a truncated JPEG and a zero-byte file.
    #[arg(long)]
    pub odd_files: bool,
}

/// Writes the tree.
pub fn run(args: SynthArgs, quiet: bool) -> Result<ExitCode> {
    let spec = synth::TreeSpec {
        classes: args.classes,
        train_per_class: args.train_per_class,
        val_per_class: args.val_per_class,
        size: args.size,
        odd_files: args.odd_files,
    };
    let n = synth::write_tree(&args.out, &spec)
        .with_context(|| format!("writing a synthetic tree to {}", args.out.display()))?;
    if !quiet {
        eprintln!("wrote {n} files to {}", args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
