//! `loader bench`: the flags of [`loader::bench`] and its repeats.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use loader::bench::{BenchError, BenchOptions};
use loader::request::job::JobSpec;
use loader::request::transform::TransformSpec;
use shard_tool::console::number_in;

use super::{TransformArgs, UsageError};

/// Settings of one `loader bench` run.
#[derive(Args)]
pub struct BenchArgs {
    /// Dataset directory made by `shard-tool pack`.
    pub shards: PathBuf,
    #[command(flatten)]
    pub transform: TransformArgs,
    /// Worker threads.
    #[arg(short = 'j', long, default_value_t = 1, value_parser = number_in(1..=4096usize))]
    pub threads: usize,
    /// Samples to produce (rounded down to whole batches), across epochs if need be.
    #[arg(long, default_value_t = 1536, value_parser = number_in(1..=100_000_000usize))]
    pub samples: usize,
    /// Samples per batch.
    #[arg(short = 'b', long, default_value_t = 64, value_parser = number_in(1..=8192usize))]
    pub batch_size: usize,
    /// Split to read.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// timm's --seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First step (batch) of the run, as after a restart at that step.
    #[arg(long, default_value_t = 0, value_parser = number_in(0..=super::MAX_STEP))]
    pub start_step: u64,
    /// Print the SHA-256 of every batch (images and labels), to compare runs.
    #[arg(long)]
    pub digests: bool,
    /// Also read the same batches through a `loader serve` daemon (started as a child
    /// process with the same threads) and report the ratio to the in-process rate.
    #[arg(long)]
    pub ring: bool,
    /// Also measure N ranks of one job (world size N, same threads): each rank's batches made
    /// alone, then the ranks' batches of each step made together as the daemon does for a
    /// job group (one decode for the copies that repeated augmentation spreads over ranks).
    #[arg(long, value_name = "N", value_parser = number_in(loader::request::job::WORLD_SIZE))]
    pub ranks: Option<u32>,
    /// With --ring: read the batches once more from a daemon serving Prometheus metrics
    /// (`metrics_listen` on loopback), scraped every 100 ms while they are read, and report
    /// the ratio to the daemon without metrics: what the metrics cost.
    #[arg(long, requires = "ring")]
    pub metrics: bool,
    /// Run everything this many times (in-process then --ring, alternating) and, with --ring,
    /// print the median ratio: one run of a few seconds is at the mercy of machine noise.
    #[arg(long, default_value_t = 1, value_parser = number_in(1..=1000usize))]
    pub repeat: usize,
    /// Skip the CRC-32C check of each record before its decode (to measure what it costs).
    #[arg(long)]
    pub no_crc: bool,
    /// The JPEG decoder: pillow (the default, as in the daemon: libjpeg-turbo's arithmetic,
    /// Pillow's bytes for baseline JPEGs, zune-jpeg for the rest) or zune (zune-jpeg for every
    /// JPEG: within 4 levels of Pillow's pixels). Coefficient records are read by the former
    /// either way. Not with --ring (the daemon's own decoder is used).
    #[arg(long, value_enum, default_value_t = JpegDecoder::Pillow, conflicts_with = "ring")]
    pub decoder: JpegDecoder,
}

/// `--decoder`'s choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JpegDecoder {
    /// zune-jpeg.
    Zune,
    /// Pillow's bytes (`loader::image::jpeg`).
    Pillow,
}

/// Runs the bench `--repeat` times; with `--ring`, prints the median ratio.
pub fn run(args: &BenchArgs) -> Result<()> {
    let batch_size = u32::try_from(args.batch_size)
        .map_err(|_| UsageError(format!("--batch-size {} is too large", args.batch_size)))?;
    let job = JobSpec::single(
        &args.split,
        TransformSpec::try_from(&args.transform)?,
        args.seed,
        batch_size,
    );
    job.validate().map_err(super::flag_error)?;
    let ring = if args.ring {
        Some(std::env::current_exe().context("finding the loader binary for --ring")?)
    } else {
        None
    };
    let options = BenchOptions {
        shards: args.shards.clone(),
        job,
        threads: args.threads,
        samples: args.samples,
        start_step: args.start_step,
        digests: args.digests,
        ring,
        ranks: args.ranks,
        metrics: args.metrics,
        no_crc: args.no_crc,
        pillow_exact: args.decoder == JpegDecoder::Pillow,
    };
    let (mut ratios, mut metrics) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        let ratio = loader::bench::run(&options, &mut std::io::stdout().lock()).map_err(
            |e: BenchError| -> anyhow::Error {
                if e.is_usage() {
                    UsageError(e.to_string()).into()
                } else {
                    e.into()
                }
            },
        )?;
        ratios.extend(ratio.ring);
        metrics.extend(ratio.metrics);
    }
    for (what, mut ratios) in [
        ("ring / in-process", ratios),
        ("with / without metrics", metrics),
    ] {
        if ratios.len() > 1 {
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            println!(
                "{what} over {} repeats: {} (sorted); median {median:.3}",
                ratios.len(),
                shown.join(", ")
            );
        }
    }
    Ok(())
}
