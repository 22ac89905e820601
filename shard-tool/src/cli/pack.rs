//! `shard-tool pack`: an image folder tree into shards, with progress and a report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::Args;
use indicatif::ProgressBar;
use shard_tool::console::number_in;
use shard_tool::image::{DEFAULT_MAX_PIXELS, DEFAULT_TRANSCODE_QUALITY, ImageOptions};
use shard_tool::{LayoutOptions, PackEvent, PackOptions};

use shard_tool::console::{escaped, say};

use super::{default_threads, progress_bar};

/// Exit status of a pack that finished but could not store every image file.
const EXIT_REJECTS: u8 = 3;

/// `shard-tool pack` flags.
#[derive(Args)]
pub struct PackArgs {
    /// Source root holding train/, val/ and/or test/.
    pub root: PathBuf,
    /// Output directory (created if missing).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(short = 'j', long, default_value_t = default_threads(), value_parser = number_in(super::THREADS))]
    pub threads: usize,
    /// Target shard file size (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB")]
    pub shard_size: ByteSize,
    /// Seed of the pack-time shuffle (recorded in the manifest).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Downscale images whose longer side exceeds N pixels and re-encode them (FFCV's
    /// speed trick; changes pixels, so off by default; recorded in the manifest).
    #[arg(long, value_name = "N", help_heading = "Image options", value_parser = number_in(1..=65_535u32))]
    pub max_side: Option<u32>,
    /// JPEG quality of images downscaled by --max-side.
    #[arg(long, default_value_t = 90, help_heading = "Image options", value_parser = number_in(1..=100u8))]
    pub quality: u8,
    /// JPEG quality of PNG and CMYK sources converted to RGB JPEG (4:4:4, baseline).
    #[arg(long, default_value_t = DEFAULT_TRANSCODE_QUALITY, help_heading = "Image options", value_parser = number_in(1..=100u8))]
    pub transcode_quality: u8,
    /// Re-encode each train JPEG losslessly with a restart marker about every N MCUs (the
    /// same DCT coefficients, so the same pixels in Pillow and every decoder; checked for each
    /// image), so that the loader decodes only the part a crop keeps: A3's loader throughput
    /// per core x1.74 on imagenet-sample, for 1.3 % more bytes and a pack 4x slower (docs/packing.md,
    /// "Restart markers"). val/ and test/ are stored as they are (eval decodes whole images).
    /// 0 stores every source byte for byte. Recorded in the manifest; each record's footer
    /// entry keeps its source's SHA-256.
    #[arg(long, value_name = "N", default_value_t = shard_tool::restart::DEFAULT_INTERVAL_MCUS, help_heading = "Image options", value_parser = number_in(0..=64u32))]
    pub restart_interval: u32,
    /// What a train record holds: `coefficients` (the default: the restart-marked JPEG's
    /// quantised DCT coefficients, which the loader reads without Huffman decoding: A3's rate
    /// per core x1.5 on imagenet-sample, for 1.7x the bytes) or `jpeg` (the restart-marked JPEG
    /// itself). Either way the pixels are the source's, and `extract` gives back the same JPEG.
    /// Applies only to JPEGs given restart markers (not with --restart-interval 0).
    /// docs/packing.md, "Coefficient records".
    #[arg(
        long,
        value_enum,
        default_value = "coefficients",
        help_heading = "Image options"
    )]
    pub records: RecordKind,
    /// Reject images with more pixels than this (default: Pillow's decompression-bomb error
    /// threshold, so nothing is stored that timm could not open).
    /// At most 65,535² (a JPEG's sides are at most 65,535).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS, help_heading = "Image options", value_parser = number_in(1..=65_535u64 * 65_535))]
    pub max_pixels: u64,
    /// Reject files larger than this without reading them.
    #[arg(long, default_value = "256MiB", help_heading = "Image options")]
    pub max_file_size: ByteSize,
    /// Labels of a flat val/: Kaggle LOC_val_solution.csv or devkit
    /// ILSVRC2012_validation_ground_truth.txt (default: looked for in ROOT and ROOT/val).
    #[arg(long, value_name = "FILE", help_heading = "Validation labels")]
    pub val_labels: Option<PathBuf>,
    /// The devkit's synset table as text, one wnid per line in ILSVRC2012_ID order (needed
    /// with the devkit ground truth, whose IDs are not class indices; see docs/packing.md).
    #[arg(long, value_name = "FILE", help_heading = "Validation labels")]
    pub devkit_synsets: Option<PathBuf>,
    /// Follow symbolic links that lead out of ROOT (by default such a link is an error naming
    /// it: a link planted in a shared dataset folder would copy any file you can read into
    /// shards others read).
    #[arg(long)]
    pub follow_external_symlinks: bool,
    /// How class folders become class indices: auto (numbers when every class folder is one,
    /// as ImageNet-V2's 0 … 999, else names), names (sorted as strings, as ImageFolder and
    /// timm), numbers (folder N is class N). Recorded in the manifest.
    #[arg(long, value_enum, default_value = "auto")]
    pub class_order: shard_tool::layout::ClassOrder,
    /// Take the class list from another packed dataset (its directory or manifest.json):
    /// each class folder keeps that dataset's index, e.g. a 200-class subset of ImageNet
    /// packed with --classes-from imagenet-rsb is labelled 0..999 as a model trained on
    /// imagenet-rsb predicts; numbered folders (ImageNet-V2) index its list. A folder that
    /// is not one of its classes is an error. Recorded in the manifest.
    #[arg(long, value_name = "DATASET")]
    pub classes_from: Option<PathBuf>,
}

/// What `--records` stores for a train JPEG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordKind {
    /// The JPEG, re-encoded with restart markers.
    Jpeg,
    /// The JPEG's DCT coefficients ([`shard_tool::coefficients`]).
    Coefficients,
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
            restart_interval: a.restart_interval,
            coefficients: a.records == RecordKind::Coefficients,
        };
        o.layout = LayoutOptions {
            val_labels: a.val_labels,
            devkit_synsets: a.devkit_synsets,
            follow_external_symlinks: a.follow_external_symlinks,
            class_order: a.class_order,
            classes_from: a
                .classes_from
                .as_deref()
                .map(shard_tool::layout::ClassList::from_dataset)
                .transpose()
                .context("--classes-from")?,
        };
        Ok(o)
    }
}

/// Packs and prints the summary; exit status 3 when some image files could not be stored.
pub fn run(args: PackArgs, quiet: bool) -> Result<ExitCode> {
    let root = args.root.clone();
    let options = PackOptions::try_from(args)?;
    let started = Instant::now();
    let mut progress = Progress {
        bar: ProgressBar::hidden(),
        quiet,
        bytes_done: 0,
        at_start: (0, 0),
        split_start: Instant::now(),
    };
    let summary = shard_tool::pack(&root, &options, &mut |e| progress.show(e))
        .with_context(|| format!("packing {} into {}", root.display(), options.out.display()))?;
    progress.bar.finish_and_clear();
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

/// A pack's progress: a bar per split, its rate, and the lines said above it.
struct Progress {
    bar: ProgressBar,
    quiet: bool,
    bytes_done: u64,
    /// Files and bytes already in finished shards when the split started (a resumed pack).
    at_start: (u64, u64),
    split_start: Instant,
}

impl Progress {
    fn show(&mut self, event: PackEvent<'_>) {
        match event {
            PackEvent::SplitStarted {
                split,
                files,
                done_files,
                done_bytes,
                ..
            } => {
                self.bar.finish_and_clear();
                self.bar = progress_bar(files, self.quiet);
                self.bar.set_prefix(split.to_owned());
                self.bar.set_position(done_files);
                if done_files > 0 && !self.quiet {
                    say(
                        &self.bar,
                        format!(
                            "{split}: resuming after {done_files} files already in finished shards"
                        ),
                    );
                }
                self.bytes_done = done_bytes;
                self.at_start = (done_files, done_bytes);
                self.split_start = Instant::now();
                self.bar.reset_eta();
            }
            PackEvent::FileDone { bytes } => {
                self.bytes_done += bytes;
                self.bar.inc(1);
                if self.bar.position().is_multiple_of(64) {
                    let secs = self.split_start.elapsed().as_secs_f64().max(1e-3);
                    let images = (self.bar.position() - self.at_start.0) as f64;
                    self.bar.set_message(format!(
                        "{:.0} images/s, {:.1} MB/s",
                        images / secs,
                        (self.bytes_done - self.at_start.1) as f64 / secs / 1e6
                    ));
                }
            }
            PackEvent::Rejected { path, reason } => {
                if !self.quiet {
                    say(
                        &self.bar,
                        format!("rejected: {}: {}", escaped(path), escaped(reason)),
                    );
                }
            }
            PackEvent::Warning(w) => {
                if !self.quiet {
                    say(&self.bar, format!("warning: {w}"));
                }
            }
        }
    }
}
