/*!
`pack`: source tree → shards, index and manifest, in parallel, resumable, never half-done.

Per split, the sorted file list is shuffled once with the recorded seed; position *p* of that
order becomes record *p* (minus rejects), so no shard holds a single class. Worker threads read
and check files in any order; one writer stores them in position order, which keeps shard
contents independent of the thread count and makes resuming simple: completed shards cover a
prefix of the positions, recorded in their footers, and a rerun continues after the last one.

At most `16 × threads` files and 64 MiB of source bytes are in flight at once (read, decoded,
or waiting for the writer), so memory does not grow with the dataset: see
[`PackOptions::peak_memory_bound`].
*/

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::atomic::{open_lock, remove_stale_temporaries, write_atomic};
use crate::error::{Error, PathContext, Result};
use crate::image::{Checked, ImageChecker, ImageOptions, Rejection, Stored};
use crate::layout::{LayoutOptions, SourceSplit, SourceTree, discover};
use crate::manifest::{
    FORMAT_NAME, MANIFEST_FILE, Manifest, PackedWith, REPORT_FILE, ShardSum, Skipped, SplitManifest,
};
use crate::record::{FORMAT_VERSION, NO_LABEL, flags};
use crate::report::report;
use crate::resume::{self, SplitState};
use crate::writer::{ShardWriter, write_index};

/// Default target size of a shard file.
pub const DEFAULT_SHARD_SIZE: u64 = 1 << 30;
/// Files larger than this are rejected without being read.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 << 20;
/// Source bytes read but not yet written, at most (a larger file is let through alone).
pub const IN_FLIGHT_BYTES: u64 = 64 << 20;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Target shard size; a shard is closed before the record that would take it past this.
    pub shard_size: u64,
    /// Shuffle seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// Image acceptance and re-encoding.
    pub image: ImageOptions,
    /// Where flat-val labels come from.
    pub layout: LayoutOptions,
    /// Reject source files larger than this.
    pub max_file_bytes: u64,
}

impl PackOptions {
    /// Options with defaults for everything but the output directory.
    pub fn new(out: impl Into<PathBuf>) -> PackOptions {
        PackOptions {
            out: out.into(),
            shard_size: DEFAULT_SHARD_SIZE,
            seed: 42,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            image: ImageOptions::default(),
            layout: LayoutOptions::default(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }

    /// Files in flight at once, at most. A deep window keeps workers busy while the single
    /// writer is descheduled or a shard is being finished (measured: 4 per thread lost ~8 % of
    /// the pack rate on 2 cores, 16 per thread none).
    pub fn window(&self) -> usize {
        16 * self.threads.max(1)
    }

    /// Upper bound on the packer's working memory in bytes, independent of the dataset size:
    /// each thread's decode buffer for the largest image allowed; in-flight source files (at
    /// most [`IN_FLIGHT_BYTES`], or one file of up to `max_file_bytes` alone) and as much again
    /// for converted copies; two 1 MiB shard write buffers. Real use is far lower (median
    /// ImageNet file: 110 KB, 500x375): see `shard-tool bench`.
    pub fn peak_memory_bound(&self) -> u64 {
        let decode = self.threads as u64 * self.image.max_pixels * 3;
        decode + 2 * IN_FLIGHT_BYTES.max(self.max_file_bytes) + (2 << 20)
    }

    fn validate(&self) -> Result<()> {
        if self.threads == 0 {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        if self.shard_size < 1 << 20 {
            return Err(Error::Config("--shard-size must be at least 1 MiB".into()));
        }
        let q = [self.image.quality, self.image.transcode_quality];
        if q.iter().any(|q| !(1..=100).contains(q)) {
            return Err(Error::Config(
                "JPEG qualities must be within 1..=100".into(),
            ));
        }
        if self.image.max_side == Some(0) {
            return Err(Error::Config("--max-side must be positive".into()));
        }
        Ok(())
    }
}

/// Progress reported while packing (to draw a bar; the library prints nothing).
#[derive(Debug, Clone)]
pub enum PackEvent<'a> {
    /// A split is about to be packed: `files` in all, `done_files` already in resumed shards.
    SplitStarted {
        /// Split name.
        split: &'a str,
        /// Image files in the split.
        files: u64,
        /// Bytes of those files.
        bytes: u64,
        /// Files covered by shards of an earlier, interrupted run.
        done_files: u64,
        /// Bytes of those files.
        done_bytes: u64,
    },
    /// One source file was handled (stored or rejected).
    FileDone {
        /// Its size in bytes.
        bytes: u64,
    },
    /// A source file was rejected.
    Rejected {
        /// Path relative to the root.
        path: &'a str,
        /// Why.
        reason: &'a str,
    },
    /// Something worth a warning (empty class folder, stale files removed, ...).
    Warning(&'a str),
}

/// Result of a pack.
#[derive(Debug, Clone)]
pub struct PackSummary {
    /// The manifest written (or found, if the pack was already complete).
    pub manifest: Manifest,
    /// True if the output already held this finished pack and nothing was done.
    pub already_complete: bool,
}

impl PackSummary {
    /// Image files not stored, over all splits.
    pub fn rejected(&self) -> u64 {
        self.manifest
            .splits
            .iter()
            .map(|s| s.rejected.len() as u64)
            .sum()
    }
}

/// Packs the tree at `root` into `options.out`.
///
/// Rerunning the same command after an interruption keeps every completed shard and finishes
/// the job; rerunning it on a finished output does nothing.
///
/// # Errors
/// Layout errors, I/O errors, and [`Error::Mismatch`] when the output directory holds work of
/// a pack with another source or other options. Files that fail to decode are not errors:
/// they are listed in the manifest and the report (see [`PackSummary::rejected`]).
pub fn pack(
    root: &Path,
    options: &PackOptions,
    on_event: &mut dyn FnMut(PackEvent<'_>),
) -> Result<PackSummary> {
    options.validate()?;
    let started = std::time::Instant::now();
    let tree = discover(root, &options.layout)?;
    tracing::debug!(elapsed = ?started.elapsed(), "scanned the source tree");
    for w in &tree.warnings {
        on_event(PackEvent::Warning(w));
    }
    let fingerprint = fingerprint(&tree, options);
    let out = &options.out;
    fs::create_dir_all(out).at(out)?;
    // Held until the pack returns: two packers on one --out would each remove the other's
    // unfinished files as stale.
    let _lock = lock_out(out)?;

    match Manifest::load(out) {
        Ok(manifest) if manifest.fingerprint == fingerprint => {
            return Ok(PackSummary {
                manifest,
                already_complete: true,
            });
        }
        Ok(manifest) => {
            return Err(Error::Mismatch(format!(
                "{} already holds a finished pack of {} with other files or options \
                 (fingerprint {} here, {fingerprint} now); choose another --out or delete it",
                out.display(),
                manifest.source_root,
                manifest.fingerprint
            )));
        }
        Err(Error::WithPath { source, .. }) if matches!(*source, Error::Incomplete) => {}
        Err(e) => return Err(e),
    }
    // Only a packer writes in --out (it holds the lock): every temporary there is a packer's.
    let stale = remove_stale_temporaries(out, |_| true)?;
    if stale > 0 {
        on_event(PackEvent::Warning(&format!(
            "removed {stale} unfinished temporary file(s) (.*{}) of an interrupted run",
            crate::atomic::TEMP_SUFFIX
        )));
    }

    let mut splits = Vec::new();
    for split in &tree.splits {
        splits.push(pack_split(&tree, split, options, &fingerprint, on_event)?);
    }

    let manifest = manifest(root, &tree, options, fingerprint, splits);
    tracing::debug!(elapsed = ?started.elapsed(), "all splits packed");
    let report_path = out.join(REPORT_FILE);
    write_atomic(&report_path, |w| {
        std::io::Write::write_all(w, report(&manifest, None).as_bytes())
    })?;
    let manifest_path = out.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&manifest).at(&manifest_path)?;
    write_atomic(&manifest_path, |w| std::io::Write::write_all(w, &json))?;
    tracing::debug!(elapsed = ?started.elapsed(), "manifest written");
    Ok(PackSummary {
        manifest,
        already_complete: false,
    })
}

/// The lock file in a pack's output directory.
pub const LOCK_FILE: &str = ".pack.lock";

/// Takes `out`'s pack lock (an exclusive `flock` on [`LOCK_FILE`], released when the file
/// closes, even when the process is killed), writing our pid into it for a second packer's
/// message. The file stays: removing it would let a third packer lock a new file while a
/// second still waits on the old one.
fn lock_out(out: &Path) -> Result<fs::File> {
    use std::io::{Read, Seek, Write};
    let path = out.join(LOCK_FILE);
    let mut file = open_lock(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // A pid is a few bytes; a lock file is never trusted for more.
            let _ = (&mut file).take(64).read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Error::Locked {
                holder: if holder.is_empty() {
                    "pid unknown".to_string()
                } else {
                    crate::console::escaped(holder).into_owned()
                },
            })
            .at(out);
        }
        Err(fs::TryLockError::Error(e)) => return Err(Error::Io(e)).at(&path),
    }
    file.set_len(0).at(&path)?;
    file.rewind().at(&path)?;
    write!(file, "pid {}", std::process::id()).at(&path)?;
    Ok(file)
}

/// The manifest of a finished pack of `tree`.
fn manifest(
    root: &Path,
    tree: &SourceTree,
    options: &PackOptions,
    fingerprint: String,
    splits: Vec<SplitManifest>,
) -> Manifest {
    Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        created_by: concat!("shard-tool ", env!("CARGO_PKG_VERSION")).into(),
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        source_root: root.display().to_string(),
        fingerprint,
        options: PackedWith {
            seed: options.seed,
            shuffle: "rand 0.9 SliceRandom::shuffle with ChaCha8Rng::seed_from_u64(seed ^ \
                      xxh3_64(split name)) over the files sorted by path"
                .into(),
            shard_size: options.shard_size,
            image: options.image,
            resize_filter: "lanczos3 (fast_image_resize)".into(),
            class_order: match (&tree.classes_from, tree.numbered_classes) {
                (Some(from), true) => format!(
                    "numbers, classes from {from}: class folder N is that dataset's class N"
                ),
                (Some(from), false) => {
                    format!("classes from {from}: each class folder keeps that dataset's index")
                }
                (None, true) => "numbers: class folder N is class N (ImageNet-V2's layout)".into(),
                (None, false) => {
                    "names: class folders sorted as strings (ImageFolder's order)".into()
                }
            },
        },
        classes: tree.classes.clone(),
        splits,
    }
}

/// A hash of everything that decides the output bytes: format, options and the source list.
fn fingerprint(tree: &SourceTree, options: &PackOptions) -> String {
    let mut h = Xxh3::new();
    let settings = serde_json::json!({
        "version": FORMAT_VERSION,
        "seed": options.seed,
        "shard_size": options.shard_size,
        "image": options.image,
        "classes": tree.classes,
    });
    h.update(settings.to_string().as_bytes());
    for split in &tree.splits {
        h.update(split.name.as_bytes());
        h.update(split.layout.to_string().as_bytes());
        for f in &split.files {
            h.update(f.path.as_bytes());
            h.update(&f.label.to_le_bytes());
            h.update(&f.size.to_le_bytes());
        }
    }
    format!("{:016x}", h.digest())
}

/// The split's files in pack order: `order[p]` is the index into `split.files` of the file at
/// position `p` (record `p` when nothing before it was rejected).
pub fn shuffled_order(split: &SourceSplit, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..split.files.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ xxh3_64(split.name.as_bytes()));
    order.shuffle(&mut rng);
    order
}

/// What a worker hands the writer for one position.
enum Outcome {
    Stored { bytes: Vec<u8>, checked: Checked },
    Rejected(String),
}

fn pack_split(
    tree: &SourceTree,
    split: &SourceSplit,
    options: &PackOptions,
    fingerprint: &str,
    on_event: &mut dyn FnMut(PackEvent<'_>),
) -> Result<SplitManifest> {
    let order = shuffled_order(split, options.seed);
    let n = order.len() as u64;
    let mut state = resume::resume(&options.out, &split.name, fingerprint, &mut |w| {
        on_event(PackEvent::Warning(w));
    })?;
    let start = state.shards.last().map_or(0, |s| s.footer.end_position);
    let bytes_of = |range: std::ops::Range<u64>| -> u64 {
        range.map(|p| split.files[order[p as usize]].size).sum()
    };
    on_event(PackEvent::SplitStarted {
        split: &split.name,
        files: n,
        bytes: bytes_of(0..n),
        done_files: start,
        done_bytes: bytes_of(0..start),
    });

    if start < n {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<u64>();
        let (out_tx, out_rx) = crossbeam_channel::unbounded::<(u64, Outcome)>();
        std::thread::scope(|scope| {
            for _ in 0..options.threads {
                let (job_rx, out_tx) = (job_rx.clone(), out_tx.clone());
                let files = Files {
                    root: &tree.root,
                    confine: tree.confine.as_deref(),
                };
                let order = &order;
                scope.spawn(move || worker(files, split, order, options, job_rx, out_tx));
            }
            drop(out_tx);
            // The writer owns `job_tx`; dropping it (on success or error) lets workers exit.
            write_in_order(
                split,
                &order,
                options,
                fingerprint,
                (start, n),
                job_tx,
                out_rx,
                &mut state,
                on_event,
            )
        })?;
    }
    let shard_count = state.shards.len() as u32;
    let index = write_index(&options.out, &split.name, &state.entries, shard_count)?;
    Ok(split_manifest(tree, split, state, index))
}

/// Where a worker reads source files from.
#[derive(Clone, Copy)]
struct Files<'a> {
    root: &'a Path,
    /// Every file read must resolve inside this canonical path (see
    /// [`LayoutOptions::follow_external_symlinks`]).
    confine: Option<&'a Path>,
}

fn worker(
    files: Files<'_>,
    split: &SourceSplit,
    order: &[usize],
    options: &PackOptions,
    jobs: Receiver<u64>,
    out: Sender<(u64, Outcome)>,
) {
    let mut checker = ImageChecker::new(options.image.for_split(&split.name));
    for position in jobs {
        let file = &split.files[order[position as usize]];
        let path = files.root.join(&file.path);
        let outcome = load_and_check(&path, files.confine, options, &mut checker);
        if out.send((position, outcome)).is_err() {
            return;
        }
    }
}

fn load_and_check(
    path: &Path,
    confine: Option<&Path>,
    options: &PackOptions,
    checker: &mut ImageChecker,
) -> Outcome {
    let bytes = match read_limited(path, confine, options.max_file_bytes) {
        Ok(Ok(b)) => b,
        Ok(Err(len)) => {
            return Outcome::Rejected(format!(
                "file is {len} bytes, above the {}-byte limit",
                options.max_file_bytes
            ));
        }
        Err(e) => return Outcome::Rejected(Rejection::Read(e.reason()).to_string()),
    };
    // A decoder bug on a hostile file must cost one file, not the pack.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checker.check(&bytes)));
    match result {
        Ok(Ok(checked)) => Outcome::Stored { bytes, checked },
        Ok(Err(rejection)) => Outcome::Rejected(rejection.to_string()),
        Err(_) => {
            *checker = ImageChecker::new(checker.options());
            Outcome::Rejected("the decoder panicked on this file".into())
        }
    }
}

/// Reads a whole file with one open and one `fstat`, unless it is larger than `limit`
/// (then `Ok(Err(length))`, without reading it). Anything but a regular file (a FIFO, which
/// would block the pack forever, a device, a socket) is an error
/// ([`crate::user_file::open_regular`]), and so is a file that, opened, turns out to lie
/// outside `confine`: checking the opened descriptor, not the path, leaves no window to swap a
/// file for a link after the listing was checked.
fn read_limited(
    path: &Path,
    confine: Option<&Path>,
    limit: u64,
) -> Result<std::result::Result<Vec<u8>, u64>> {
    use std::os::unix::io::AsRawFd;
    let (file, len) = crate::user_file::open_sized(path)?;
    if let Some(root) = confine {
        let real = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).at(path)?;
        if !real.starts_with(root) {
            return Err(Error::Io(std::io::Error::other(format!(
                "resolves to {}, outside the tree being packed (--follow-external-symlinks \
                 accepts such links)",
                real.display()
            )))
            .with_path(path));
        }
    }
    if len > limit {
        return Ok(Err(len));
    }
    crate::user_file::read_to_cap(file, len, path, limit, "an image").map(Ok)
}

#[allow(clippy::too_many_arguments)]
fn write_in_order(
    split: &SourceSplit,
    order: &[usize],
    options: &PackOptions,
    fingerprint: &str,
    (start, n): (u64, u64),
    jobs: Sender<u64>,
    results: Receiver<(u64, Outcome)>,
    state: &mut SplitState,
    on_event: &mut dyn FnMut(PackEvent<'_>),
) -> Result<()> {
    let out = &options.out;
    let size = |p: u64| split.files[order[p as usize]].size;
    // Positions [next, next_job) are in flight, holding `in_flight` source bytes.
    let mut next_job = start;
    let mut in_flight = 0u64;
    let issue = |next_job: &mut u64, next: u64, in_flight: &mut u64| {
        while *next_job < n
            && *next_job - next < options.window() as u64
            && (*in_flight + size(*next_job) <= IN_FLIGHT_BYTES || *next_job == next)
        {
            *in_flight += size(*next_job);
            // Workers outlive this function, so the channel is open.
            let _ = jobs.send(*next_job);
            *next_job += 1;
        }
    };
    issue(&mut next_job, start, &mut in_flight);
    let mut shard_no = state.shards.len() as u32;
    let mut writer = ShardWriter::create(out, &split.name, shard_no, start, fingerprint)?;
    let mut pending: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut next = start;
    while next < n {
        let Ok((position, outcome)) = results.recv() else {
            return Err(Error::Config(
                "all pack workers stopped unexpectedly".into(),
            ));
        };
        pending.insert(position, outcome);
        while let Some(outcome) = pending.remove(&next) {
            let file = &split.files[order[next as usize]];
            match outcome {
                Outcome::Stored { bytes, checked } => {
                    let data = match &checked.stored {
                        Stored::Original => &bytes,
                        Stored::Encoded(new) => new,
                    };
                    let record_len = 32 + file.path.len() + data.len();
                    if !writer.is_empty() && writer.len() + record_len as u64 > options.shard_size {
                        state.shards.push(writer.finish(next)?);
                        shard_no += 1;
                        writer =
                            ShardWriter::create(out, &split.name, shard_no, next, fingerprint)?;
                    }
                    let dims = (checked.width, checked.height);
                    let entry = writer.append(
                        next,
                        &file.path,
                        file.label,
                        dims,
                        checked.flags,
                        data,
                        checked.source_sha256.as_deref(),
                    )?;
                    state.entries.push(entry);
                }
                Outcome::Rejected(reason) => {
                    writer.reject(next, &file.path, &reason);
                    on_event(PackEvent::Rejected {
                        path: &file.path,
                        reason: &reason,
                    });
                }
            }
            on_event(PackEvent::FileDone { bytes: file.size });
            in_flight -= file.size;
            next += 1;
            issue(&mut next_job, next, &mut in_flight);
        }
    }
    drop(jobs);
    if !writer.is_empty() {
        state.shards.push(writer.finish(n)?);
    }
    Ok(())
}

fn split_manifest(
    tree: &SourceTree,
    split: &SourceSplit,
    state: SplitState,
    index: crate::manifest::FileSum,
) -> SplitManifest {
    let labelled = split.files.iter().all(|f| f.label != NO_LABEL);
    let mut m = SplitManifest {
        name: split.name.clone(),
        layout: split.layout.to_string(),
        labelled,
        source_files: (split.files.len() + split.rejected.len()) as u64,
        records: state.entries.len() as u64,
        kept_as_is: 0,
        transcoded_png: 0,
        transcoded_cmyk: 0,
        resized: 0,
        grayscale: 0,
        restart_markers: 0,
        coefficients: 0,
        image_bytes: 0,
        per_class: if labelled {
            vec![0; tree.classes.len()]
        } else {
            Vec::new()
        },
        grayscale_files: Vec::new(),
        transcoded: Vec::new(),
        rejected: split.rejected.clone(),
        ignored: split.ignored.clone(),
        index,
        shards: Vec::new(),
    };
    for shard in &state.shards {
        for r in &shard.footer.records {
            let f = r.flags;
            m.kept_as_is += u64::from(f & flags::REWRITTEN == 0);
            m.transcoded_png += u64::from(f & flags::FROM_PNG != 0);
            m.transcoded_cmyk += u64::from(f & flags::FROM_CMYK != 0);
            m.resized += u64::from(f & flags::RESIZED != 0);
            m.grayscale += u64::from(f & flags::GRAYSCALE != 0);
            m.restart_markers += u64::from(f & flags::RESTART_MARKERS != 0);
            m.coefficients += u64::from(f & flags::COEFFICIENTS != 0);
            m.image_bytes += u64::from(r.len) - 32 - r.path.len() as u64;
            if f & flags::GRAYSCALE != 0 {
                m.grayscale_files.push(r.path.clone());
            }
            if let Some(c) = m.per_class.get_mut(r.label as usize) {
                *c += 1;
            }
            let what = if f & flags::FROM_PNG != 0 {
                Some("PNG converted to RGB JPEG")
            } else if f & flags::FROM_CMYK != 0 {
                Some("CMYK JPEG converted to RGB JPEG")
            } else {
                None
            };
            if let Some(what) = what {
                m.transcoded.push(Skipped {
                    path: r.path.clone(),
                    reason: what.into(),
                });
            }
        }
        m.rejected
            .extend(shard.footer.rejects.iter().map(|r| Skipped {
                path: r.path.clone(),
                reason: r.reason.clone(),
            }));
        m.shards.push(ShardSum {
            sum: shard.sum.clone(),
            records: shard.footer.records.len() as u64,
        });
    }
    m.grayscale_files.sort();
    m.transcoded.sort_by(|a, b| a.path.cmp(&b.path));
    m.rejected.sort_by(|a, b| a.path.cmp(&b.path));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking_and_a_file_outside_the_root_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap().join("data");
        fs::create_dir_all(&root).unwrap();
        let fifo = root.join("x.JPEG");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_limited(&fifo, None, 1 << 20).unwrap_err();
        assert!(err.reason().contains("not a regular file"), "{err:?}");

        // As if a file listed inside the tree had been swapped for a link after the listing.
        fs::write(dir.path().join("secret"), b"key").unwrap();
        let link = root.join("y.JPEG");
        std::os::unix::fs::symlink(dir.path().join("secret"), &link).unwrap();
        let err = read_limited(&link, Some(&root), 1 << 20).unwrap_err();
        assert!(err.reason().contains("outside the tree"), "{err:?}");
        assert_eq!(read_limited(&link, None, 1 << 20).unwrap().unwrap(), b"key");
    }
}
