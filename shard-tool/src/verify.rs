/*!
`verify`: every checksum of a dataset, with every mismatch named.

Checks, per split: the index file's XXH3 against the manifest and its header; per shard (in
parallel): the whole-file XXH3 against the manifest, the header CRC, the footer CRC, and for
every record its CRC-32C, its agreement with the index entry and the footer (offset, length,
label, checksum), and that records tile the space between header and footer exactly. A
mismatch names the split, the shard file, the record's global index and its source path.
*/

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::Mmap;

use crate::error::Result;
use crate::manifest::{Manifest, SplitManifest, file_sum};
use crate::open::map;
use crate::reader::{index_entries, parse_record, read_shard_footer, read_shard_header};
use crate::record::{IndexEntry, SHARD_HEADER_LEN, ShardFooter};

/// One thing that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Split.
    pub split: String,
    /// File inside the dataset directory.
    pub file: String,
    /// Global index of the record in its split, when the problem is a record's.
    pub record: Option<u64>,
    /// Source path of that record, when known.
    pub source: Option<String>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(i) = self.record {
            write!(f, ": {} record {i}", self.split)?;
        }
        if let Some(s) = &self.source {
            write!(f, " ({s})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Everything wrong; empty means the dataset is intact.
    pub problems: Vec<Problem>,
}

/// Checks every byte of the dataset in `dir` with `threads` threads. `on_bytes` is called with
/// the size of each file as it is finished (for a progress bar).
///
/// # Errors
/// Only when the manifest cannot be read; damage to any other file is a [`Problem`].
pub fn verify(dir: &Path, threads: usize, on_bytes: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
    let manifest = Manifest::load(dir)?;
    let mut report = VerifyReport::default();
    for split in &manifest.splits {
        verify_split(dir, split, threads.max(1), on_bytes, &mut report);
    }
    Ok(report)
}

/// Total bytes `verify` reads for this manifest (for a progress bar's length).
pub fn total_bytes(manifest: &Manifest) -> u64 {
    manifest
        .splits
        .iter()
        .map(|s| s.index.bytes + s.shards.iter().map(|h| h.sum.bytes).sum::<u64>())
        .sum()
}

fn verify_split(
    dir: &Path,
    split: &SplitManifest,
    threads: usize,
    on_bytes: &(dyn Fn(u64) + Sync),
    report: &mut VerifyReport,
) {
    let index_path = dir.join(&split.index.file);
    // The index is only trusted if its checksum matches; otherwise footers locate records.
    // SAFETY: `verify` only reads; the dataset's files are not written after packing.
    let index_map = unsafe { map(&index_path) };
    let index = trusted_index(split, &index_map, &index_path, on_bytes, report);
    // Global index of each shard's first record, from the manifest's counts.
    let mut first = Vec::with_capacity(split.shards.len());
    let mut total = 0;
    for shard in &split.shards {
        first.push(total);
        total += shard.records;
    }
    let next = AtomicUsize::new(0);
    let found = Mutex::new(Vec::new());
    let checked = Mutex::new((0u64, 0u64));
    std::thread::scope(|scope| {
        for _ in 0..threads.min(split.shards.len()).max(1) {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(shard) = split.shards.get(n) else {
                        return;
                    };
                    let range = first[n]..first[n] + shard.records;
                    let entries =
                        index.and_then(|e| e.get(range.start as usize..range.end as usize));
                    let mut out = ShardCheck {
                        split,
                        shard: n,
                        first: range.start,
                        problems: Vec::new(),
                        records: 0,
                    };
                    out.run(dir, entries);
                    on_bytes(shard.sum.bytes);
                    if let Ok(mut c) = checked.lock() {
                        c.0 += out.records;
                        c.1 += shard.sum.bytes;
                    }
                    if let Ok(mut f) = found.lock() {
                        f.extend(out.problems);
                    }
                }
            });
        }
    });
    let (records, bytes) = checked.into_inner().unwrap_or_default();
    report.records += records;
    report.bytes += bytes;
    let mut found = found.into_inner().unwrap_or_default();
    found.sort_by(|a, b| (&a.file, a.record).cmp(&(&b.file, b.record)));
    report.problems.extend(found);
}

/// The split's index entries when its file matches the manifest (checksum and count); else
/// `None`, each problem added to `report`.
fn trusted_index<'a>(
    split: &SplitManifest,
    index_map: &'a Result<Mmap>,
    index_path: &Path,
    on_bytes: &(dyn Fn(u64) + Sync),
    report: &mut VerifyReport,
) -> Option<&'a [IndexEntry]> {
    let index_file = &split.index.file;
    let problem = |what: String| Problem {
        split: split.name.clone(),
        file: index_file.to_owned(),
        record: None,
        source: None,
        what,
    };
    let m = match (index_map, file_sum(index_path)) {
        (Ok(m), Ok(sum)) => {
            on_bytes(sum.bytes);
            report.bytes += sum.bytes;
            if sum.xxh3 != split.index.xxh3 {
                report.problems.push(problem(format!(
                    "XXH3 {} does not match the manifest's {}",
                    sum.xxh3, split.index.xxh3
                )));
            }
            m
        }
        (Err(e), _) => {
            report.problems.push(problem(e.chain()));
            return None;
        }
        (_, Err(e)) => {
            report.problems.push(problem(e.chain()));
            return None;
        }
    };
    let index = match index_entries(m) {
        Ok(e) if e.len() as u64 == split.records => Some(e),
        Ok(e) => {
            report.problems.push(problem(format!(
                "{} entries, the manifest says {}",
                e.len(),
                split.records
            )));
            None
        }
        Err(e) => {
            report.problems.push(problem(e.chain()));
            None
        }
    };
    if report.problems.iter().any(|p| p.file == *index_file) {
        return None;
    }
    index
}

/// The checks of one shard file.
struct ShardCheck<'a> {
    split: &'a SplitManifest,
    shard: usize,
    first: u64,
    problems: Vec<Problem>,
    records: u64,
}

impl ShardCheck<'_> {
    fn file(&self) -> &str {
        &self.split.shards[self.shard].sum.file
    }

    fn push(&mut self, record: Option<u64>, source: Option<String>, what: String) {
        self.problems.push(Problem {
            split: self.split.name.clone(),
            file: self.file().to_owned(),
            record,
            source,
            what,
        });
    }

    fn run(&mut self, dir: &Path, index: Option<&[IndexEntry]>) {
        let Some((map, footer_end, footer)) = self.open(dir) else {
            return;
        };
        let Some(locations) = self.locations(index, &footer) else {
            return;
        };
        let mut cursor = SHARD_HEADER_LEN as u64;
        for (local, &location) in locations.iter().enumerate() {
            cursor = self.check_record(&map, &footer, local, location, cursor);
        }
        if cursor != footer_end {
            self.push(
                None,
                None,
                format!("records end at byte {cursor}, the footer starts at {footer_end}"),
            );
        }
    }

    /// The shard file checked whole and mapped, where its footer starts, and the footer if it
    /// reads; `None` when the file cannot be read at all (said as a problem).
    fn open(&mut self, dir: &Path) -> Option<(Mmap, u64, Option<ShardFooter>)> {
        let expected = self.split.shards[self.shard].clone();
        let path = dir.join(&expected.sum.file);
        match file_sum(&path) {
            Ok(sum) if sum.xxh3 != expected.sum.xxh3 || sum.bytes != expected.sum.bytes => {
                self.push(
                    None,
                    None,
                    format!(
                        "whole-file XXH3 {} ({} bytes) does not match the manifest's {} ({} bytes)",
                        sum.xxh3, sum.bytes, expected.sum.xxh3, expected.sum.bytes
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => {
                self.push(None, None, e.chain());
                return None;
            }
        }
        // SAFETY: `verify` only reads; the dataset's files are not written after packing.
        let map: Mmap = match unsafe { map(&path) } {
            Ok(m) => m,
            Err(e) => {
                self.push(None, None, e.chain());
                return None;
            }
        };
        let footer_end = match read_shard_header(&map) {
            Ok(h) => h.footer_offset.get(),
            Err(e) => {
                self.push(None, None, format!("header: {}", e.chain()));
                map.len() as u64
            }
        };
        let footer = match read_shard_footer(&map) {
            Ok(f) => Some(f),
            Err(e) => {
                self.push(None, None, format!("footer: {}", e.chain()));
                None
            }
        };
        Some((map, footer_end, footer))
    }

    /// Where each record should be, (offset, length, label, CRC): the index if trusted, else
    /// the footer; `None` when neither is intact (said as a problem).
    fn locations(
        &mut self,
        index: Option<&[IndexEntry]>,
        footer: &Option<ShardFooter>,
    ) -> Option<Vec<Location>> {
        let locations: Vec<Location> = match (index, footer) {
            (Some(entries), _) => entries
                .iter()
                .map(|e| {
                    (
                        e.offset.get(),
                        u64::from(e.len.get()),
                        e.label.get(),
                        e.crc.get(),
                    )
                })
                .collect(),
            (None, Some(f)) => f
                .records
                .iter()
                .map(|r| (r.offset, u64::from(r.len), r.label, r.crc))
                .collect(),
            (None, None) => {
                self.push(
                    None,
                    None,
                    "neither the index nor the footer is intact: records cannot be located".into(),
                );
                return None;
            }
        };
        let expected = self.split.shards[self.shard].records;
        if locations.len() as u64 != expected {
            self.push(
                None,
                None,
                format!("{} records, the manifest says {expected}", locations.len()),
            );
        }
        Some(locations)
    }

    /// Checks the record `local` of this shard at `location`, where the one before ended at
    /// `cursor`; returns where it ends.
    fn check_record(
        &mut self,
        map: &Mmap,
        footer: &Option<ShardFooter>,
        local: usize,
        (offset, len, label, crc): Location,
        cursor: u64,
    ) -> u64 {
        self.records += 1;
        let global = self.first + local as u64;
        let source = footer_source(footer, local);
        if offset != cursor {
            self.push(
                Some(global),
                source.clone(),
                format!("starts at byte {offset}, the previous record ends at {cursor}"),
            );
        }
        let end = offset.saturating_add(len);
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(a, b)| map.get(a..b));
        let Some(bytes) = bytes else {
            self.push(
                Some(global),
                source,
                "extends past the end of the file".into(),
            );
            return end;
        };
        let what = match parse_record(bytes) {
            Err(e) => Some(e.chain()),
            Ok(r) if !r.checksum_ok() => Some(format!(
                "CRC-32C mismatch at bytes {offset}..{end} (the record's bytes changed)"
            )),
            Ok(r) if r.label != label => Some(format!(
                "label {} in the record, {label} in the index",
                r.label
            )),
            // The loader splits such a record by its restart markers (a coefficient record by
            // its chunk offsets): they must be whole.
            Ok(r) if r.flags & crate::record::flags::RESTART_MARKERS != 0 => {
                let coefficients = r.flags & crate::record::flags::COEFFICIENTS != 0;
                if coefficients != crate::coefficients::is_coefficients(r.data) {
                    Some("its flags and its bytes disagree on whether it holds coefficients".into())
                } else {
                    crate::restart::Intervals::default()
                        .parse(r.data)
                        .err()
                        .map(|e| format!("flagged as re-encoded with restart markers, but {e}"))
                }
            }
            Ok(_) => None,
        };
        let what = what.or_else(|| {
            let footer_rec = footer.as_ref().and_then(|f| f.records.get(local))?;
            let agree = footer_rec.offset == offset
                && u64::from(footer_rec.len) == len
                && footer_rec.crc == crc
                && footer_rec.label == label;
            (!agree).then(|| "the index and the shard footer disagree".to_owned())
        });
        if let Some(what) = what {
            let source = source.or_else(|| {
                parse_record(bytes)
                    .ok()
                    .map(|r| format!("{} (as stored)", r.path))
            });
            self.push(Some(global), source, what);
        }
        end
    }
}

/// Where a record should be: (offset, length, label, CRC-32C).
type Location = (u64, u64, u32, u32);

fn footer_source(footer: &Option<ShardFooter>, local: usize) -> Option<String> {
    footer
        .as_ref()
        .and_then(|f| f.records.get(local))
        .map(|r| r.path.clone())
}
