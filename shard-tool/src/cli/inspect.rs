//! `shard-tool inspect`: counts per split and class, sizes, and the pack's options.

use shard_tool::console::escaped;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use clap::Args;
use shard_tool::{Dataset, NO_LABEL};

/// `shard-tool inspect` flags.
#[derive(Args)]
pub struct InspectArgs {
    /// Dataset directory.
    pub dir: PathBuf,
    /// List the record count of every class.
    #[arg(long)]
    pub classes: bool,
}

/// Prints the summary.
pub fn run(args: &InspectArgs) -> Result<ExitCode> {
    let (dir, all_classes) = (args.dir.as_path(), args.classes);
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
    writeln!(stdout, "source    {}", escaped(&m.source_root))?;
    let o = &m.options;
    writeln!(
        stdout,
        "options   seed {}, shard size {}, max side {}, resize quality {}, transcode quality {}, \
         max pixels {}, restart interval {}, train records {}",
        o.seed,
        ByteSize(o.shard_size),
        o.image.max_side.map_or("none".into(), |s| s.to_string()),
        o.image.quality,
        o.image.transcode_quality,
        o.image.max_pixels,
        match o.image.restart_interval {
            0 => "none (JPEGs stored as they were)".to_owned(),
            n => format!("~{n} MCUs"),
        },
        if o.image.coefficients {
            "coefficients"
        } else {
            "jpeg"
        }
    )?;
    let first_last = match (m.classes.first(), m.classes.last()) {
        (Some(a), Some(b)) => format!(" ({} .. {})", escaped(a), escaped(b)),
        _ => String::new(),
    };
    writeln!(stdout, "classes   {}{first_last}", m.classes.len())?;
    for (split, sm) in dataset.splits().iter().zip(&m.splits) {
        write_split(&mut stdout, split, sm, &m.classes, all_classes)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One split's counts, and its classes' (every class's with `all_classes`).
fn write_split(
    stdout: &mut impl Write,
    split: &shard_tool::Split,
    sm: &shard_tool::manifest::SplitManifest,
    classes: &[String],
    all_classes: bool,
) -> Result<()> {
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
         rejected {}, ignored {}\n  re-encoded losslessly with restart markers {} (the same pixels, \
         decoded by the loader only where a crop reads; the others are decoded whole), of them \
         stored as coefficients {} (read without Huffman decoding; extract writes the JPEG back)",
        sm.kept_as_is,
        sm.transcoded_png,
        sm.transcoded_cmyk,
        sm.resized,
        sm.grayscale,
        sm.rejected.len(),
        sm.ignored.len(),
        sm.restart_markers,
        sm.coefficients
    )?;
    // Counted from the index, not copied from the manifest, so this shows what is stored.
    let mut per_class = vec![0u64; classes.len()];
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
            escaped(&classes[min_i]),
            escaped(&classes[max_i]),
            (split.len() - unlabelled) as f64 / per_class.len() as f64
        )?;
        if all_classes {
            for (name, n) in classes.iter().zip(&per_class) {
                writeln!(stdout, "    {} {n}", escaped(name))?;
            }
        }
    }
    Ok(())
}

/// The index and value of the best of `v` by `better`.
fn extreme(v: &[u64], better: impl Fn(u64, u64) -> bool) -> (usize, u64) {
    let mut best = (0, v.first().copied().unwrap_or(0));
    for (i, &x) in v.iter().enumerate() {
        if better(x, best.1) {
            best = (i, x);
        }
    }
    best
}
