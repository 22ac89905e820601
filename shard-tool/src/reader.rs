/*!
Reading a packed dataset through memory maps: record `i` of a split in O(1), zero-copy.

Lookup is one read of a fixed-size index entry at `32 + 24 * i` in the mapped `<split>.idx`,
then a bounds-checked slice of the mapped shard it names. Nothing is read into the heap: the
page cache holds the data and is shared by every process that maps the same files (the loader
daemon, `verify`, several trainers).

Mapping a file is `unsafe` because the map's contents change if the file is modified or
truncated while mapped. [`Dataset::open`] is therefore an `unsafe fn` whose contract is that
the dataset's files stay as `pack` left them; they are never written after the manifest exists.
Corruption at rest is not a safety problem: every read is bounds-checked and malformed bytes
become errors.
*/

use std::path::{Path, PathBuf};

use memmap2::{Advice, Mmap};
use zerocopy::FromBytes;

use crate::error::{Error, PathContext, Result};
use crate::manifest::{Manifest, SplitManifest};
use crate::open::map;
use crate::record::{
    FORMAT_VERSION, INDEX_ENTRY_LEN, INDEX_HEADER_LEN, INDEX_MAGIC, IndexEntry, IndexHeader,
    NO_LABEL, RECORD_HEADER_LEN, RECORD_MAGIC, RecordHeader, SHARD_HEADER_LEN, SHARD_MAGIC,
    ShardFooter, ShardHeader,
};

/// An opened dataset directory.
pub struct Dataset {
    dir: PathBuf,
    manifest: Manifest,
    splits: Vec<Split>,
}

/// One split of an opened dataset.
pub struct Split {
    name: String,
    index: Mmap,
    shards: Vec<Mmap>,
    len: u64,
}

/// A record, borrowed from the mapped shard.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Global index in its split.
    pub index: u64,
    /// Class index, or [`crate::NO_LABEL`].
    pub label: u32,
    /// Width of the stored image.
    pub width: u32,
    /// Height of the stored image.
    pub height: u32,
    /// [`crate::record::flags`].
    pub flags: u16,
    /// Source path relative to the packed root.
    pub path: &'a str,
    /// The image bytes (a JPEG file).
    pub data: &'a [u8],
    header: &'a RecordHeader,
}

impl Record<'_> {
    /// Whether the record's bytes match its CRC-32C (costs one pass over the image bytes).
    pub fn checksum_ok(&self) -> bool {
        self.header.compute_crc(self.path.as_bytes(), self.data) == self.header.crc.get()
    }
}

impl Dataset {
    /// Opens the dataset in `dir`: reads the manifest, maps every index and shard file and
    /// checks their headers.
    ///
    /// # Safety
    /// The files of the dataset must not be modified or truncated while the returned value (or
    /// anything borrowed from it) is alive. `pack` never writes to a finished dataset.
    ///
    /// # Errors
    /// [`Error::Incomplete`] for a directory without a manifest; format, version and I/O
    /// errors naming the file.
    pub unsafe fn open(dir: &Path) -> Result<Dataset> {
        let manifest = Manifest::load(dir)?;
        let mut splits = Vec::with_capacity(manifest.splits.len());
        let classes = manifest.classes.len() as u64;
        for split in &manifest.splits {
            // SAFETY: the caller's promise that the files stay unchanged is passed along.
            splits.push(unsafe { Split::open(dir, split, classes) }?);
        }
        Ok(Dataset {
            dir: dir.to_path_buf(),
            manifest,
            splits,
        })
    }

    /// The dataset directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// All splits, in pack order.
    pub fn splits(&self) -> &[Split] {
        &self.splits
    }

    /// The split called `name`.
    ///
    /// # Errors
    /// [`Error::NoSplit`] naming the splits that exist.
    pub fn split(&self, name: &str) -> Result<&Split> {
        self.splits
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NoSplit {
                split: name.to_owned(),
                available: self.manifest.split_names(),
            })
    }
}

impl Split {
    /// Maps the split's index and shards and checks what a reader relies on: the index is
    /// the one the manifest hashed (XXH3, milliseconds for ImageNet's 1.28 M entries), every
    /// label names one of the dataset's `classes` (or none), every shard has its size.
    ///
    /// # Safety
    /// As [`Dataset::open`].
    unsafe fn open(dir: &Path, split: &SplitManifest, classes: u64) -> Result<Split> {
        let index_path = dir.join(&split.index.file);
        // SAFETY: passed on from the caller.
        let index = unsafe { map(&index_path) }?;
        let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&index));
        if hash != split.index.xxh3 {
            return Err(Error::Corrupt(format!(
                "XXH3 {hash}, the manifest says {}: the index was changed after packing; pack \
                 the dataset again",
                split.index.xxh3
            ))
            .with_path(&index_path));
        }
        let header = read_index_header(&index).at(&index_path)?;
        let count = header.count.get();
        if count != split.records || header.shard_count.get() as usize != split.shards.len() {
            return Err(Error::Corrupt(format!(
                "index lists {count} records in {} shards, the manifest {} in {}",
                header.shard_count.get(),
                split.records,
                split.shards.len()
            ))
            .with_path(&index_path));
        }
        let entries = index_entries(&index).at(&index_path)?;
        if let Some((i, e)) = entries.iter().enumerate().find(|(_, e)| {
            let l = e.label.get();
            l != NO_LABEL && u64::from(l) >= classes
        }) {
            return Err(Error::Corrupt(format!(
                "record {i} has label {}, and the manifest lists {classes} classes",
                e.label.get()
            ))
            .with_path(&index_path));
        }
        let mut shards = Vec::with_capacity(split.shards.len());
        for shard in &split.shards {
            let path = dir.join(&shard.sum.file);
            // SAFETY: passed on from the caller.
            let map = unsafe { map(&path) }?;
            if map.len() as u64 != shard.sum.bytes {
                return Err(Error::Corrupt(format!(
                    "{} bytes, the manifest says {}: the file was truncated or replaced",
                    map.len(),
                    shard.sum.bytes
                ))
                .with_path(&path));
            }
            read_shard_header(&map).at(&path)?;
            // Training reads records in random order; read-ahead would only waste cache.
            // Advice is a hint, so failing to give it changes nothing.
            let _ = map.advise(Advice::Random);
            shards.push(map);
        }
        Ok(Split {
            name: split.name.clone(),
            index,
            shards,
            len: count,
        })
    }

    /// `train`, `val` or `test`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the split holds no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of shard files.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The index entry of record `i`.
    ///
    /// # Errors
    /// [`Error::OutOfRange`].
    pub fn entry(&self, i: u64) -> Result<&IndexEntry> {
        let out_of_range = || Error::OutOfRange {
            split: self.name.clone(),
            index: i,
            len: self.len,
        };
        if i >= self.len {
            return Err(out_of_range());
        }
        let start = INDEX_HEADER_LEN + i as usize * INDEX_ENTRY_LEN;
        self.index
            .get(start..start + INDEX_ENTRY_LEN)
            .and_then(|b| IndexEntry::ref_from_bytes(b).ok())
            .ok_or_else(out_of_range)
    }

    /// The label of record `i`, from the index alone.
    ///
    /// # Errors
    /// [`Error::OutOfRange`].
    pub fn label(&self, i: u64) -> Result<u32> {
        Ok(self.entry(i)?.label.get())
    }

    /// Record `i`, borrowed from its mapped shard. The checksum is not computed here (see
    /// [`Record::checksum_ok`]); structural checks are.
    ///
    /// # Errors
    /// [`Error::OutOfRange`], or [`Error::Corrupt`] wrapped with the record index.
    pub fn get(&self, i: u64) -> Result<Record<'_>> {
        let entry = self.entry(i)?;
        self.record_at(entry)
            .map_err(|e| e.with_record(&self.name, i))
            .map(|mut r| {
                r.index = i;
                r
            })
    }

    fn record_at(&self, entry: &IndexEntry) -> Result<Record<'_>> {
        let shard = self
            .shards
            .get(entry.shard.get() as usize)
            .ok_or_else(|| Error::Corrupt(format!("index names shard {}", entry.shard)))?;
        let start = usize::try_from(entry.offset.get())
            .map_err(|_| Error::Corrupt("offset beyond address space".into()))?;
        let bytes = start
            .checked_add(entry.len.get() as usize)
            .and_then(|end| shard.get(start..end))
            .ok_or_else(|| Error::Corrupt("record extends past the end of its shard".into()))?;
        parse_record(bytes)
    }

    /// The mapped bytes of shard `n` (for `verify`).
    pub fn shard_bytes(&self, n: usize) -> Option<&[u8]> {
        self.shards.get(n).map(|m| &m[..])
    }
}

/// Parses a record from exactly its bytes.
///
/// # Errors
/// [`Error::Corrupt`] if the magic, lengths or path encoding are wrong.
pub fn parse_record(bytes: &[u8]) -> Result<Record<'_>> {
    let (header, rest) = RecordHeader::ref_from_prefix(bytes)
        .map_err(|_| Error::Corrupt("record shorter than its header".into()))?;
    if header.magic != RECORD_MAGIC {
        return Err(Error::Corrupt("record magic bytes are wrong".into()));
    }
    if header.record_len() != bytes.len() as u64 {
        return Err(Error::Corrupt(format!(
            "record header says {} bytes, the index {}",
            header.record_len(),
            bytes.len()
        )));
    }
    let (path, data) = rest.split_at(header.path_len.get() as usize);
    let path =
        std::str::from_utf8(path).map_err(|_| Error::Corrupt("record path is not UTF-8".into()))?;
    debug_assert_eq!(RECORD_HEADER_LEN + path.len() + data.len(), bytes.len());
    Ok(Record {
        index: 0,
        label: header.label.get(),
        width: header.width.get(),
        height: header.height.get(),
        flags: header.flags.get(),
        path,
        data,
        header,
    })
}

/// Checks and returns the header of a mapped shard.
///
/// # Errors
/// [`Error::BadMagic`], [`Error::Version`] or [`Error::Corrupt`].
pub fn read_shard_header(bytes: &[u8]) -> Result<&ShardHeader> {
    let (header, _) = ShardHeader::ref_from_prefix(bytes)
        .map_err(|_| Error::Corrupt("shorter than a shard header".into()))?;
    if header.magic != SHARD_MAGIC {
        return Err(Error::BadMagic { what: "shard" });
    }
    if header.compute_crc() != header.header_crc.get() {
        return Err(Error::Corrupt("shard header checksum mismatch".into()));
    }
    if header.version.get() != FORMAT_VERSION {
        return Err(Error::Version {
            found: header.version.get(),
            supported: FORMAT_VERSION,
        });
    }
    let end = header
        .footer_offset
        .get()
        .checked_add(header.footer_len.get());
    if header.footer_offset.get() < SHARD_HEADER_LEN as u64 || end != Some(bytes.len() as u64) {
        return Err(Error::Corrupt(
            "footer location does not match the file length (truncated?)".into(),
        ));
    }
    Ok(header)
}

/// Checks and parses the footer of a shard whose header is valid.
///
/// # Errors
/// [`Error::Corrupt`] on a checksum mismatch, a JSON error if it does not parse.
pub fn read_shard_footer(bytes: &[u8]) -> Result<ShardFooter> {
    let header = read_shard_header(bytes)?;
    let start = header.footer_offset.get() as usize;
    let footer = &bytes[start..];
    if crc32c::crc32c(footer) != header.footer_crc.get() {
        return Err(Error::Corrupt("shard footer checksum mismatch".into()));
    }
    Ok(serde_json::from_slice(footer)?)
}

/// Checks and returns the header of a mapped index file.
///
/// # Errors
/// [`Error::BadMagic`], [`Error::Version`] or [`Error::Corrupt`].
pub fn read_index_header(bytes: &[u8]) -> Result<&IndexHeader> {
    let (header, rest) = IndexHeader::ref_from_prefix(bytes)
        .map_err(|_| Error::Corrupt("shorter than an index header".into()))?;
    if header.magic != INDEX_MAGIC {
        return Err(Error::BadMagic { what: "index" });
    }
    if header.compute_crc() != header.header_crc.get() {
        return Err(Error::Corrupt("index header checksum mismatch".into()));
    }
    if header.version.get() != FORMAT_VERSION {
        return Err(Error::Version {
            found: header.version.get(),
            supported: FORMAT_VERSION,
        });
    }
    if header.entry_len.get() as usize != INDEX_ENTRY_LEN
        || Some(rest.len() as u64) != header.count.get().checked_mul(INDEX_ENTRY_LEN as u64)
    {
        return Err(Error::Corrupt(
            "index length does not match its entry count (truncated?)".into(),
        ));
    }
    Ok(header)
}

/// The entries of a mapped index file whose header is valid.
///
/// # Errors
/// As [`read_index_header`].
pub fn index_entries(bytes: &[u8]) -> Result<&[IndexEntry]> {
    read_index_header(bytes)?;
    <[IndexEntry]>::ref_from_bytes(&bytes[INDEX_HEADER_LEN..])
        .map_err(|_| Error::Corrupt("index entries are misaligned".into()))
}
