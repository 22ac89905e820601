//! `shard-tool extract`: records back as files, as stored (the source bytes, unless the pack
//! re-encoded or converted them; the message says which).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use shard_tool::Dataset;
use shard_tool::atomic::write_atomic;
use shard_tool::console::{Usage, escaped};

/// `shard-tool extract` flags.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("which").required(true))]
pub struct ExtractArgs {
    /// Dataset directory.
    pub dir: PathBuf,
    /// Global record index within --split.
    #[arg(long, group = "which", value_parser = shard_tool::console::number_in(0..=u64::from(u32::MAX) - 1))]
    pub index: Option<u64>,
    /// Source path relative to the packed root, e.g. train/n01440764/n01440764_10026.JPEG.
    #[arg(long, group = "which")]
    pub name: Option<String>,
    /// Every record of every split, written under --out (a directory) at its source path:
    /// the packed tree back, converted files as the JPEGs they became.
    #[arg(long, group = "which")]
    pub all: bool,
    /// Split of --index.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// File to write (a directory with --all).
    #[arg(short, long)]
    pub out: PathBuf,
}

/// Writes the record(s).
pub fn run(args: ExtractArgs, quiet: bool) -> Result<ExitCode> {
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
        (None, None) => return Err(Usage("give --index N, --name PATH or --all".into()).into()),
    };
    if !record.checksum_ok() {
        bail!(
            "record {} ({}) fails its checksum; run `shard-tool verify {}`",
            record.index,
            escaped(record.path),
            dir.display()
        );
    }
    let jpeg = as_jpeg(&record)?;
    write_atomic(&args.out, |w| std::io::Write::write_all(w, &jpeg))
        .with_context(|| format!("writing {}", args.out.display()))?;
    if !quiet {
        eprintln!(
            "wrote {} bytes of record {} ({}, label {}, {}x{}) to {}{}",
            jpeg.len(),
            record.index,
            escaped(record.path),
            record.label,
            record.width,
            record.height,
            args.out.display(),
            holds(record.flags)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a record's bytes are, when they are not its source file's: a clause for the message.
fn holds(flags: u16) -> &'static str {
    use shard_tool::record::flags::*;
    if flags & FROM_PNG != 0 {
        "; a PNG source converted to JPEG (other bytes and pixels)"
    } else if flags & FROM_CMYK != 0 {
        "; a CMYK source converted to an RGB JPEG (other bytes and pixels)"
    } else if flags & RESIZED != 0 {
        "; downscaled by --max-side (other bytes and pixels)"
    } else if flags & COEFFICIENTS != 0 {
        "; the JPEG written back from the record's coefficients: the source re-encoded \
         losslessly with restart markers (other bytes, the same pixels; pack with --records jpeg \
         --restart-interval 0 to store sources byte for byte)"
    } else if flags & RESTART_MARKERS != 0 {
        "; the source re-encoded losslessly with restart markers (other bytes, the same pixels; \
         pack with --restart-interval 0 to store sources byte for byte)"
    } else {
        ""
    }
}

/// The record as a JPEG file: its bytes, or the JPEG libjpeg writes back from its coefficients.
fn as_jpeg<'a>(r: &shard_tool::Record<'a>) -> Result<std::borrow::Cow<'a, [u8]>> {
    if r.flags & shard_tool::record::flags::COEFFICIENTS == 0 {
        return Ok(std::borrow::Cow::Borrowed(r.data));
    }
    let jpeg = shard_tool::coefficients::to_jpeg(r.data).with_context(|| {
        format!(
            "record {} ({}): writing its coefficients back as a JPEG",
            r.index,
            escaped(r.path)
        )
    })?;
    Ok(std::borrow::Cow::Owned(jpeg))
}

/// Every record of every split under `out`, at its source path.
fn extract_all(dataset: &Dataset, out: &Path, quiet: bool) -> Result<ExitCode> {
    let (mut written, mut restarted) = (0u64, 0u64);
    for split in dataset.splits() {
        for i in 0..split.len() {
            let r = split.get(i)?;
            if !r.checksum_ok() {
                bail!(
                    "{} record {i} ({}) fails its checksum",
                    split.name(),
                    escaped(r.path)
                );
            }
            // Paths come from the file: never let one climb out of --out.
            let rel = Path::new(r.path);
            if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
                bail!(
                    "{} record {i} has an unsafe path {:?}",
                    split.name(),
                    escaped(r.path)
                );
            }
            let path = out.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let jpeg = as_jpeg(&r)?;
            write_atomic(&path, |w| std::io::Write::write_all(w, &jpeg))
                .with_context(|| format!("writing {}", path.display()))?;
            written += 1;
            restarted += u64::from(r.flags & shard_tool::record::flags::RESTART_MARKERS != 0);
        }
    }
    if !quiet {
        eprintln!(
            "wrote {written} records under {}; {restarted} are their sources re-encoded \
             losslessly with restart markers (other bytes, the same pixels)",
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The record whose source path is `name`.
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
    Err(Usage(format!(
        "no record has source path {name} (paths are relative to the packed root, e.g. \
         train/<class>/<file>)"
    ))
    .into())
}
