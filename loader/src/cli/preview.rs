//! `loader preview`: a PNG grid of augmented samples, as a trainer would get them, with the
//! RandAugment ops applied to each.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use loader::batches::pipeline::Worker;
use loader::bench::open_job;
use loader::image::decode::RgbImage;
use loader::request::job::JobSpec;
use loader::request::transform::TransformSpec;
use shard_tool::console::escaped;
use shard_tool::console::number_in;

use super::TransformArgs;
use super::png::write_png;

/// `loader preview` flags.
#[derive(Args)]
pub struct PreviewArgs {
    /// Dataset directory made by `shard-tool pack`.
    pub shards: PathBuf,
    #[command(flatten)]
    pub transform: TransformArgs,
    /// Output PNG.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Samples in the grid.
    #[arg(long, default_value_t = 12, value_parser = number_in(1..=1024usize))]
    pub count: usize,
    /// Grid columns.
    #[arg(long, default_value_t = 6, value_parser = number_in(1..=64usize))]
    pub cols: usize,
    /// Epoch whose samples are shown.
    #[arg(long, default_value_t = 0, value_parser = number_in(0..=loader::request::job::MAX_EPOCHS))]
    pub epoch: u32,
    /// timm's --seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Split to read.
    #[arg(long, default_value = "train")]
    pub split: String,
}

/// Writes the grid and lists its tiles on stdout.
pub fn run(args: &PreviewArgs) -> Result<()> {
    let transform = TransformSpec::try_from(&args.transform)?;
    let (count, cols, epoch, seed, split_name) = (
        args.count,
        args.cols,
        args.epoch,
        args.seed,
        args.split.as_str(),
    );
    let mut stdout = std::io::stdout().lock();
    let spec = JobSpec::single(split_name, transform, seed, 1);
    let (dataset, plan) = open_job(&args.shards, &spec)?;
    let transform = plan.transform();
    let split = dataset.split(split_name)?;
    let samples: Vec<_> = plan
        .sampler()
        .epoch(epoch)
        .into_iter()
        .take(count)
        .collect();
    let (side, cols) = (
        transform.img_size() as usize,
        cols.clamp(1, samples.len().max(1)),
    );
    let rows = samples.len().div_ceil(cols);
    let mut grid = RgbImage::grid(cols, rows, side);
    let mut worker = Worker::new(transform, seed);
    let mut tile = vec![0u8; transform.image_bytes()];
    for (i, s) in samples.iter().enumerate() {
        let record = split.get(u64::from(s.index))?;
        worker
            .produce(
                record.data,
                epoch,
                std::slice::from_ref(s),
                &mut [&mut tile[..]],
            )
            .with_context(|| format!("record {} ({})", s.index, escaped(record.path)))?;
        grid.put_tile(i, cols, side, &tile);
        let ops: Vec<String> = worker
            .last_ops()
            .iter()
            .map(|a| {
                let interp = a.interpolation.map_or(String::new(), |f| format!(" {f:?}"));
                format!("{}({:?}{interp})", a.op.name(), a.arg)
            })
            .collect();
        let listed = if ops.is_empty() {
            "no RandAugment op".to_owned()
        } else {
            ops.join(", ")
        };
        writeln!(
            stdout,
            "tile {i} (row {}, col {}): record {} {} label {} repeat {}: {listed}",
            i / cols,
            i % cols,
            s.index,
            record.path,
            record.label,
            s.repeat,
        )?;
    }
    write_png(&args.out, &grid)?;
    eprintln!("wrote {} ({} tiles)", args.out.display(), samples.len());
    Ok(())
}
