//! `shard-tool`: pack an image folder tree into rsb shards, and check, inspect and read them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shard_tool::image::{DEFAULT_MAX_PIXELS, DEFAULT_TRANSCODE_QUALITY, ImageOptions};
use shard_tool::{
    Dataset, LayoutOptions, Manifest, NO_LABEL, PackEvent, PackOptions, bench, synth,
};

/// Exit status of a pack that finished but could not store every image file.
const EXIT_REJECTS: u8 = 3;

#[derive(Parser)]
#[command(
    name = "shard-tool",
    version,
    about = "Pack an ImageNet-style folder tree into checked, memory-mapped rsb shards.",
    long_about = "Pack an ImageNet-style folder tree into checked, memory-mapped rsb shards, \
                  then verify, inspect or extract them.\n\n\
                  Typical use:\n  \
                  shard-tool pack /data/imagenet --out /data/imagenet-rsb\n  \
                  shard-tool verify /data/imagenet-rsb\n  \
                  shard-tool inspect /data/imagenet-rsb"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print no progress bars or summaries, only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output (repeat for more; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Pack ROOT (train/, val/, test/ with class folders, or a flat val/) into shards.
    ///
    /// Every image is decoded once in strict mode. JPEGs are stored byte for byte; PNGs (whatever
    /// the extension) and CMYK JPEGs are converted to RGB JPEGs; files that do not decode are
    /// listed in manifest.json and report.txt with the reason, never dropped silently.
    ///
    /// Every file is written under a temporary name and renamed when complete, manifest.json
    /// last: a killed pack leaves nothing that opens as a dataset, and running the same command
    /// again keeps the finished shards and completes the job.
    ///
    /// Exit status: 0 every image stored; 3 the dataset is complete but some image files could
    /// not be stored (see report.txt); 1 error, nothing usable written.
    Pack(PackArgs),
    /// Check every checksum of a packed dataset; name every record that does not match.
    ///
    /// Exit status: 0 intact; 1 damaged (each problem is printed) or unreadable.
    Verify {
        /// Dataset directory (made by `pack`).
        dir: PathBuf,
        /// Threads.
        #[arg(short = 'j', long, default_value_t = default_threads())]
        threads: usize,
    },
    /// Show counts per split and class, sizes, and the options a dataset was packed with.
    Inspect {
        /// Dataset directory.
        dir: PathBuf,
        /// List the record count of every class.
        #[arg(long)]
        classes: bool,
    },
    /// Write one record's image bytes, exactly as stored, to a file.
    Extract(ExtractArgs),
    /// Write a synthetic ImageFolder tree (for demos and tests).
    Synth(SynthArgs),
    /// Measure pack throughput against zune-jpeg's decode-only rate on the same files.
    ///
    /// Reads every file of ROOT once to warm the page cache, then for each round decodes all
    /// JPEGs from memory (the baseline: zune-jpeg, strict mode, RGB out, as the packer decodes)
    /// and packs ROOT into a scratch directory, with the same number of threads. Prints
    /// images/s of both, their ratio, and the pack's peak RSS.
    Bench(BenchArgs),
}

#[derive(Args)]
struct PackArgs {
    /// Source root holding train/, val/ and/or test/.
    root: PathBuf,
    /// Output directory (created if missing).
    #[arg(short, long)]
    out: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(short = 'j', long, default_value_t = default_threads())]
    threads: usize,
    /// Target shard file size (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB")]
    shard_size: ByteSize,
    /// Seed of the pack-time shuffle (recorded in the manifest).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Downscale images whose longer side exceeds N pixels and re-encode them (FFCV's
    /// speed trick; changes pixels, so off by default; recorded in the manifest).
    #[arg(long, value_name = "N", help_heading = "Image options")]
    max_side: Option<u32>,
    /// JPEG quality of images downscaled by --max-side.
    #[arg(long, default_value_t = 90, help_heading = "Image options")]
    quality: u8,
    /// JPEG quality of PNG and CMYK sources converted to RGB JPEG (4:4:4, baseline).
    #[arg(long, default_value_t = DEFAULT_TRANSCODE_QUALITY, help_heading = "Image options")]
    transcode_quality: u8,
    /// Reject images with more pixels than this (default: Pillow's decompression-bomb error
    /// threshold, so nothing is stored that timm could not open).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, help_heading = "Image options")]
    max_pixels: u64,
    /// Reject files larger than this without reading them.
    #[arg(long, default_value = "256MiB", help_heading = "Image options")]
    max_file_size: ByteSize,
    /// Labels of a flat val/: Kaggle LOC_val_solution.csv or devkit
    /// ILSVRC2012_validation_ground_truth.txt (default: looked for in ROOT and ROOT/val).
    #[arg(long, value_name = "FILE", help_heading = "Validation labels")]
    val_labels: Option<PathBuf>,
    /// The devkit's synset table as text, one wnid per line in ILSVRC2012_ID order (needed
    /// with the devkit ground truth, whose IDs are not class indices; see the README).
    #[arg(long, value_name = "FILE", help_heading = "Validation labels")]
    devkit_synsets: Option<PathBuf>,
}

impl TryFrom<PackArgs> for PackOptions {
    type Error = anyhow::Error;

    fn try_from(a: PackArgs) -> Result<PackOptions> {
        let mut o = PackOptions::new(a.out);
        o.threads = a.threads;
        o.shard_size = a.shard_size.as_u64();
        o.seed = a.seed;
        o.max_file_bytes = a.max_file_size.as_u64();
        o.image = ImageOptions {
            max_pixels: a.max_pixels,
            max_side: a.max_side,
            quality: a.quality,
            transcode_quality: a.transcode_quality,
        };
        o.layout = LayoutOptions {
            val_labels: a.val_labels,
            devkit_synsets: a.devkit_synsets,
        };
        Ok(o)
    }
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("which").required(true))]
struct ExtractArgs {
    /// Dataset directory.
    dir: PathBuf,
    /// Global record index within --split.
    #[arg(long, group = "which")]
    index: Option<u64>,
    /// Source path relative to the packed root, e.g. train/n01440764/n01440764_10026.JPEG.
    #[arg(long, group = "which")]
    name: Option<String>,
    /// Every record of every split, written under --out (a directory) at its source path:
    /// the packed tree back, converted files as the JPEGs they became.
    #[arg(long, group = "which")]
    all: bool,
    /// Split of --index.
    #[arg(long, default_value = "train")]
    split: String,
    /// File to write (a directory with --all).
    #[arg(short, long)]
    out: PathBuf,
}

#[derive(Args)]
struct SynthArgs {
    /// Directory to create the tree in.
    #[arg(short, long)]
    out: PathBuf,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: u32,
    /// Training images per class.
    #[arg(long, default_value_t = 100)]
    train_per_class: u32,
    /// Validation images per class.
    #[arg(long, default_value_t = 20)]
    val_per_class: u32,
    /// Side of the square images in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Add ImageNet's odd files to train/class_000: a PNG named .JPEG, a CMYK JPEG, a
    /// grayscale JPEG, a truncated JPEG and a zero-byte file.
    #[arg(long)]
    odd_files: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Source root (as for `pack`).
    root: PathBuf,
    /// Threads for both the baseline and the pack.
    #[arg(short = 'j', long, default_value_t = default_threads())]
    threads: usize,
    /// Rounds; the best of each is reported.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Scratch directory for the pack outputs (removed at the end).
    #[arg(long, default_value = "target/bench-pack")]
    scratch: PathBuf,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Pack(args) => cmd_pack(args, quiet),
        Command::Verify { dir, threads } => cmd_verify(&dir, threads, quiet),
        Command::Inspect { dir, classes } => cmd_inspect(&dir, classes),
        Command::Extract(args) => cmd_extract(args, quiet),
        Command::Synth(args) => cmd_synth(args, quiet),
        Command::Bench(args) => cmd_bench(args),
    }
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>6} [{bar:32}] {human_pos}/{human_len} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints a line above a live bar, or plainly when the bar is hidden (not a terminal, or
/// `--quiet`), where `ProgressBar::println` would print nothing.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn cmd_pack(args: PackArgs, quiet: bool) -> Result<ExitCode> {
    let root = args.root.clone();
    let options = PackOptions::try_from(args)?;
    let started = Instant::now();
    let mut bar = ProgressBar::hidden();
    let mut bytes_done = 0u64;
    let (mut done_files_at_start, mut done_bytes_at_start) = (0u64, 0u64);
    let mut split_start = Instant::now();
    let mut on_event = |event: PackEvent<'_>| match event {
        PackEvent::SplitStarted {
            split,
            files,
            done_files,
            done_bytes,
            ..
        } => {
            bar.finish_and_clear();
            bar = progress_bar(files, quiet);
            bar.set_prefix(split.to_owned());
            bar.set_position(done_files);
            if done_files > 0 && !quiet {
                say(
                    &bar,
                    format!(
                        "{split}: resuming after {done_files} files already in finished shards"
                    ),
                );
            }
            bytes_done = done_bytes;
            (done_files_at_start, done_bytes_at_start) = (done_files, done_bytes);
            split_start = Instant::now();
            bar.reset_eta();
        }
        PackEvent::FileDone { bytes } => {
            bytes_done += bytes;
            bar.inc(1);
            if bar.position().is_multiple_of(64) {
                let secs = split_start.elapsed().as_secs_f64().max(1e-3);
                let images = (bar.position() - done_files_at_start) as f64;
                bar.set_message(format!(
                    "{:.0} images/s, {:.1} MB/s",
                    images / secs,
                    (bytes_done - done_bytes_at_start) as f64 / secs / 1e6
                ));
            }
        }
        PackEvent::Rejected { path, reason } => {
            if !quiet {
                say(&bar, format!("rejected: {path}: {reason}"));
            }
        }
        PackEvent::Warning(w) => {
            if !quiet {
                say(&bar, format!("warning: {w}"));
            }
        }
    };
    let summary = shard_tool::pack(&root, &options, &mut on_event)
        .with_context(|| format!("packing {} into {}", root.display(), options.out.display()))?;
    bar.finish_and_clear();
    let m = &summary.manifest;
    if !quiet {
        if summary.already_complete {
            eprintln!(
                "{} already holds this finished pack (fingerprint {}); nothing to do",
                options.out.display(),
                m.fingerprint
            );
        } else {
            let files: u64 = m.splits.iter().map(|s| s.source_files).sum();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "packed {files} image files in {secs:.1} s ({:.0} files/s) with {} threads",
                files as f64 / secs.max(1e-9),
                options.threads
            );
        }
        eprint!("{}", shard_tool::report(m, Some(20)));
        eprintln!("dataset: {}", options.out.display());
    }
    let rejected = summary.rejected();
    if rejected > 0 {
        eprintln!(
            "{rejected} image file(s) could not be stored; the dataset is complete without them \
             (listed in {}/report.txt)",
            options.out.display()
        );
        return Ok(ExitCode::from(EXIT_REJECTS));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_verify(dir: &Path, threads: usize, quiet: bool) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let manifest = Manifest::load(dir).with_context(|| format!("verifying {}", dir.display()))?;
    let bar = progress_bar(shard_tool::total_bytes(&manifest), quiet);
    bar.set_prefix("verify");
    let started = Instant::now();
    let report = shard_tool::verify(dir, threads, &|bytes| bar.inc(bytes))
        .with_context(|| format!("verifying {}", dir.display()))?;
    bar.finish_and_clear();
    for p in &report.problems {
        writeln!(stdout, "MISMATCH {p}")?;
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

fn cmd_inspect(dir: &Path, all_classes: bool) -> Result<ExitCode> {
    // SAFETY: `inspect` only reads, and nothing writes a finished dataset.
    let dataset =
        unsafe { Dataset::open(dir) }.with_context(|| format!("opening {}", dir.display()))?;
    let m = dataset.manifest();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "dataset   {}", dir.display())?;
    writeln!(
        stdout,
        "format    {} v{}, written by {}, fingerprint {}",
        m.format, m.version, m.created_by, m.fingerprint
    )?;
    writeln!(stdout, "source    {}", m.source_root)?;
    let o = &m.options;
    writeln!(
        stdout,
        "options   seed {}, shard size {}, max side {}, resize quality {}, transcode quality {}, \
         max pixels {}",
        o.seed,
        ByteSize(o.shard_size),
        o.image.max_side.map_or("none".into(), |s| s.to_string()),
        o.image.quality,
        o.image.transcode_quality,
        o.image.max_pixels
    )?;
    let first_last = match (m.classes.first(), m.classes.last()) {
        (Some(a), Some(b)) => format!(" ({a} .. {b})"),
        _ => String::new(),
    };
    writeln!(stdout, "classes   {}{first_last}", m.classes.len())?;
    for (split, sm) in dataset.splits().iter().zip(&m.splits) {
        let shard_bytes: u64 = sm.shards.iter().map(|s| s.sum.bytes).sum();
        writeln!(
            stdout,
            "\n{}: {} records in {} shard(s), {} on disk, {} of images (mean {}); layout: {}",
            sm.name,
            sm.records,
            sm.shards.len(),
            ByteSize(shard_bytes),
            ByteSize(sm.image_bytes),
            ByteSize(sm.image_bytes / sm.records.max(1)),
            sm.layout
        )?;
        writeln!(
            stdout,
            "  as is {}, PNG converted {}, CMYK converted {}, downscaled {}, grayscale {}, \
             rejected {}, ignored {}",
            sm.kept_as_is,
            sm.transcoded_png,
            sm.transcoded_cmyk,
            sm.resized,
            sm.grayscale,
            sm.rejected.len(),
            sm.ignored.len()
        )?;
        // Counted from the index, not copied from the manifest, so this shows what is stored.
        let mut per_class = vec![0u64; m.classes.len()];
        let mut unlabelled = 0u64;
        for i in 0..split.len() {
            match split.label(i)? {
                NO_LABEL => unlabelled += 1,
                l => match per_class.get_mut(l as usize) {
                    Some(c) => *c += 1,
                    None => bail!("{} record {i} has label {l}, past the class list", sm.name),
                },
            }
        }
        if unlabelled > 0 {
            writeln!(stdout, "  unlabelled {unlabelled}")?;
        }
        if split.len() > unlabelled && !per_class.is_empty() {
            let (min_i, min) = extreme(&per_class, |a, b| a < b);
            let (max_i, max) = extreme(&per_class, |a, b| a > b);
            writeln!(
                stdout,
                "  per class: min {min} ({}), max {max} ({}), mean {:.1}",
                m.classes[min_i],
                m.classes[max_i],
                (split.len() - unlabelled) as f64 / per_class.len() as f64
            )?;
            if all_classes {
                for (name, n) in m.classes.iter().zip(&per_class) {
                    writeln!(stdout, "    {name} {n}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn extreme(v: &[u64], better: impl Fn(u64, u64) -> bool) -> (usize, u64) {
    let mut best = (0, v.first().copied().unwrap_or(0));
    for (i, &x) in v.iter().enumerate() {
        if better(x, best.1) {
            best = (i, x);
        }
    }
    best
}

fn cmd_extract(args: ExtractArgs, quiet: bool) -> Result<ExitCode> {
    let dir = &args.dir;
    // SAFETY: `extract` only reads, and nothing writes a finished dataset.
    let dataset =
        unsafe { Dataset::open(dir) }.with_context(|| format!("opening {}", dir.display()))?;
    if args.all {
        return extract_all(&dataset, &args.out, quiet);
    }
    let record = match (&args.index, &args.name) {
        (Some(i), _) => dataset.split(&args.split)?.get(*i)?,
        (None, Some(name)) => find_by_name(&dataset, name)?,
        (None, None) => bail!("give --index N, --name PATH or --all"),
    };
    if !record.checksum_ok() {
        bail!(
            "record {} ({}) fails its checksum; run `shard-tool verify {}`",
            record.index,
            record.path,
            dir.display()
        );
    }
    std::fs::write(&args.out, record.data)
        .with_context(|| format!("writing {}", args.out.display()))?;
    if !quiet {
        eprintln!(
            "wrote {} bytes of record {} ({}, label {}, {}x{}) to {}",
            record.data.len(),
            record.index,
            record.path,
            record.label,
            record.width,
            record.height,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn extract_all(dataset: &Dataset, out: &Path, quiet: bool) -> Result<ExitCode> {
    let mut written = 0u64;
    for split in dataset.splits() {
        for i in 0..split.len() {
            let r = split.get(i)?;
            if !r.checksum_ok() {
                bail!(
                    "{} record {i} ({}) fails its checksum",
                    split.name(),
                    r.path
                );
            }
            // Paths come from the file: never let one climb out of --out.
            let rel = Path::new(r.path);
            if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
                bail!(
                    "{} record {i} has an unsafe path {:?}",
                    split.name(),
                    r.path
                );
            }
            let path = out.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, r.data).with_context(|| format!("writing {}", path.display()))?;
            written += 1;
        }
    }
    if !quiet {
        eprintln!("wrote {written} records under {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn find_by_name<'a>(dataset: &'a Dataset, name: &str) -> Result<shard_tool::Record<'a>> {
    let name = name.trim_start_matches("./");
    for split in dataset.splits() {
        for i in 0..split.len() {
            let r = split.get(i)?;
            if r.path == name {
                return Ok(r);
            }
        }
    }
    bail!(
        "no record has source path {name} (paths are relative to the packed root, e.g. train/<class>/<file>)"
    )
}

fn cmd_synth(args: SynthArgs, quiet: bool) -> Result<ExitCode> {
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

fn cmd_bench(args: BenchArgs) -> Result<ExitCode> {
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
    for round in 1..=args.rounds {
        let files: Vec<Vec<u8>> = paths
            .iter()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .collect::<Result<_>>()?;
        let decode = bench::decode_only(&files, args.threads);
        drop(files);

        let out = args.scratch.join(format!("round-{round}"));
        if out.exists() {
            std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
        }
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
    std::fs::remove_dir_all(&args.scratch)
        .with_context(|| format!("removing {}", args.scratch.display()))?;
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
