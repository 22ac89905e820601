//! `shard-tool bench`: pack throughput against zune-jpeg's decode-only rate, same files.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::Args;
use shard_tool::console::number_in;
use shard_tool::{LayoutOptions, PackOptions, bench};

use super::default_threads;

/// `shard-tool bench` flags.
#[derive(Args)]
pub struct BenchArgs {
    /// Source root (as for `pack`).
    pub root: PathBuf,
    /// Threads for both the baseline and the pack.
    #[arg(short = 'j', long, default_value_t = default_threads(), value_parser = number_in(super::THREADS))]
    pub threads: usize,
    /// Rounds; the best of each is reported.
    #[arg(long, default_value_t = 2, value_parser = number_in(1..=1000u32))]
    pub rounds: u32,
    /// Directory to pack into: each run packs into a new private folder inside it
    /// (`bench-pack-XXXXXX`), removed at the end; nothing else in it is touched.
    #[arg(long, default_value = "target/bench-pack")]
    pub scratch: PathBuf,
}

/// Runs the rounds and prints the rates.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let tree = shard_tool::layout::discover(&args.root, &LayoutOptions::default())
        .with_context(|| format!("scanning {}", args.root.display()))?;
    let paths: Vec<PathBuf> = tree
        .splits
        .iter()
        .flat_map(|s| s.files.iter().map(|f| args.root.join(&f.path)))
        .collect();
    let total: u64 = tree
        .splits
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.size))
        .sum();
    writeln!(
        stdout,
        "bench: {} files ({}) from {}, {} thread(s), {} round(s)",
        paths.len(),
        ByteSize(total),
        args.root.display(),
        args.threads,
        args.rounds
    )?;
    // Warm the page cache so neither side pays for the first disk read.
    for p in &paths {
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    }
    let (mut best_decode, mut best_pack, mut pack_peak) = (0f64, 0f64, 0u64);
    std::fs::create_dir_all(&args.scratch)
        .with_context(|| format!("creating {}", args.scratch.display()))?;
    // Our own folder: the scratch directory a user names may hold anything.
    let scratch = tempfile::Builder::new()
        .prefix("bench-pack-")
        .tempdir_in(&args.scratch)
        .with_context(|| format!("creating a folder in {}", args.scratch.display()))?;
    for round in 1..=args.rounds {
        let files: Vec<Vec<u8>> = paths
            .iter()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .collect::<Result<_>>()?;
        let decode = bench::decode_only(&files, args.threads);
        drop(files);

        let (packed, elapsed, peak) = pack_round(&args, scratch.path(), round)?;
        let pack_rate = packed as f64 / elapsed.as_secs_f64();
        writeln!(
            stdout,
            "round {round}: decode-only {:.1} img/s ({} images in {:.2} s); pack {pack_rate:.1} \
             img/s ({packed} files in {:.2} s); pack/decode {:.3}; pack peak RSS {}",
            decode.per_sec(),
            decode.images,
            decode.elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            pack_rate / decode.per_sec(),
            ByteSize(peak)
        )?;
        best_decode = best_decode.max(decode.per_sec());
        best_pack = best_pack.max(pack_rate);
        pack_peak = pack_peak.max(peak);
    }
    let scratch_path = scratch.path().to_path_buf();
    scratch
        .close()
        .with_context(|| format!("removing {}", scratch_path.display()))?;
    let mut bound = PackOptions::new(".");
    bound.threads = args.threads;
    writeln!(
        stdout,
        "best of {} rounds: decode-only {best_decode:.1} img/s, pack {best_pack:.1} img/s; \
         pack/decode {:.3} (goal >= 0.9); pack peak RSS {} (bound {})",
        args.rounds,
        best_pack / best_decode.max(1e-9),
        ByteSize(pack_peak),
        ByteSize(bound.peak_memory_bound())
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Packs the tree into a fresh scratch directory: the files packed, the time it took, and the
/// pack's peak RSS (0 where it cannot be measured).
fn pack_round(
    args: &BenchArgs,
    scratch: &std::path::Path,
    round: u32,
) -> Result<(u64, std::time::Duration, u64)> {
    let out = scratch.join(format!("round-{round}"));
    // Start each pack with no dirty pages of earlier rounds left for it to wait on.
    let _ = std::process::Command::new("sync").status();
    let mut options = PackOptions::new(&out);
    options.threads = args.threads;
    let had_reset = bench::reset_peak_rss();
    let start = Instant::now();
    let summary = shard_tool::pack(&args.root, &options, &mut |_| {})?;
    let elapsed = start.elapsed();
    let peak = bench::peak_rss().filter(|_| had_reset).unwrap_or(0);
    let packed: u64 = summary.manifest.splits.iter().map(|s| s.source_files).sum();
    Ok((packed, elapsed, peak))
}
