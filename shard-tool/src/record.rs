/*!
The on-disk layout of shard and index files, format version 1.

This module is the only place that knows where each byte sits. Every other module (the writer,
the reader, `verify`, and the loader through the reader) goes through the types here.

A dataset directory holds, per split (`train`, `val`, `test`):

```text
<split>-00000.rsb ...   shard files: a header, the records back to back, a JSON footer
<split>.idx             the index: one fixed-size entry per record, in record order
manifest.json           written last; a directory without it is an unfinished pack
```

Shard file:

```text
[0, 64)                          ShardHeader (magic, version, counts, footer location, CRCs)
[64, footer_offset)              records, each: RecordHeader (32 B) | path bytes | image bytes
[footer_offset, end of file)     footer: JSON (ShardFooter), its CRC-32C is in the header
```

Every byte of a shard is covered by exactly one CRC-32C: the header's own, a record's (which
covers its header fields, path and image bytes), or the footer's. The records tile the region
between header and footer with no gaps, so a flipped byte anywhere is caught and attributed to
one record. The manifest adds an XXH3-64 of each whole file.

All integers are little-endian. Record headers sit at arbitrary offsets (records are not
padded), so the structs here use `zerocopy`'s unaligned little-endian integer types and are read
in place from the memory map.
*/

use serde::{Deserialize, Serialize};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// First bytes of every shard file.
pub const SHARD_MAGIC: [u8; 8] = *b"RSBSHARD";
/// First bytes of every index file.
pub const INDEX_MAGIC: [u8; 8] = *b"RSBINDEX";
/// First bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"RREC";

/// Label stored for images of an unlabelled split (e.g. a flat `test/` folder).
pub const NO_LABEL: u32 = u32::MAX;

/// Size of [`ShardHeader`] in bytes; the first record starts here.
pub const SHARD_HEADER_LEN: usize = 64;
/// Size of [`RecordHeader`] in bytes.
pub const RECORD_HEADER_LEN: usize = 32;
/// Size of [`IndexHeader`] in bytes.
pub const INDEX_HEADER_LEN: usize = 32;
/// Size of one [`IndexEntry`] in bytes.
pub const INDEX_ENTRY_LEN: usize = 24;

/// Per-record flags: what the packer did to the source file.
pub mod flags {
    /// The source was a PNG (whatever its extension) and was transcoded to JPEG.
    pub const FROM_PNG: u16 = 1 << 0;
    /// The source was a CMYK or YCCK JPEG and was transcoded to an RGB JPEG.
    pub const FROM_CMYK: u16 = 1 << 1;
    /// The image was larger than `--max-side` and was downscaled and re-encoded.
    pub const RESIZED: u16 = 1 << 2;
    /// The stored JPEG is single-channel (kept as is; readers expand it to RGB).
    pub const GRAYSCALE: u16 = 1 << 3;
    /// The stored JPEG is the source (or its conversion) re-encoded losslessly with restart
    /// markers: the same DCT coefficients, tables and sampling, so the same pixels in every
    /// decoder; the footer records the source's SHA-256.
    pub const RESTART_MARKERS: u16 = 1 << 4;
    /// The stored bytes are not a JPEG but the restart-marked JPEG's coefficients
    /// ([`crate::coefficients`]): the same pixels, read without Huffman decoding; `extract`
    /// writes the JPEG back. Always set with [`RESTART_MARKERS`].
    pub const COEFFICIENTS: u16 = 1 << 5;
    /// Any flag that means the stored pixels differ from the source file's.
    pub const MODIFIED: u16 = FROM_PNG | FROM_CMYK | RESIZED;
    /// Any flag that means the stored bytes differ from the source file's.
    pub const REWRITTEN: u16 = MODIFIED | RESTART_MARKERS | COEFFICIENTS;
}

/// Header at offset 0 of a shard file.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ShardHeader {
    /// [`SHARD_MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`].
    pub version: U32,
    /// Number of this shard within its split.
    pub shard: U32,
    /// Records stored in this shard.
    pub record_count: U32,
    /// Source files of this shard's position range that were rejected (listed in the footer).
    pub reject_count: U32,
    /// First position (in the split's shuffled source list) covered by this shard.
    pub first_position: U64,
    /// One past the last position covered by this shard.
    pub end_position: U64,
    /// Byte offset of the JSON footer.
    pub footer_offset: U64,
    /// Length of the JSON footer; the file ends right after it.
    pub footer_len: U64,
    /// CRC-32C of the footer bytes.
    pub footer_crc: U32,
    /// CRC-32C of bytes `[0, 60)` of this header.
    pub header_crc: U32,
}

/// Header in front of each record's path and image bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RecordHeader {
    /// [`RECORD_MAGIC`].
    pub magic: [u8; 4],
    /// Class index, or [`NO_LABEL`].
    pub label: U32,
    /// Width of the stored image in pixels.
    pub width: U32,
    /// Height of the stored image in pixels.
    pub height: U32,
    /// Length of the image bytes that follow the path.
    pub data_len: U32,
    /// Length of the UTF-8 source path (relative to the packed root) that follows this header.
    pub path_len: U16,
    /// [`flags`].
    pub flags: U16,
    /// Position of the source file in the split's shuffled source list.
    pub position: U32,
    /// CRC-32C of header bytes `[0, 28)`, then the path, then the image bytes.
    pub crc: U32,
}

/// Header at offset 0 of an index file.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IndexHeader {
    /// [`INDEX_MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`].
    pub version: U32,
    /// [`INDEX_ENTRY_LEN`]; lets a reader reject an index with a different entry layout.
    pub entry_len: U32,
    /// Number of entries that follow.
    pub count: U64,
    /// Number of shard files of this split.
    pub shard_count: U32,
    /// CRC-32C of bytes `[0, 28)` of this header.
    pub header_crc: U32,
}

/// One index entry: where record `i` of a split lives. Entry `i` is at
/// `INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN`, which is what makes lookup O(1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IndexEntry {
    /// Byte offset of the record within its shard.
    pub offset: U64,
    /// Shard number within the split.
    pub shard: U32,
    /// Total record length: header, path and image bytes.
    pub len: U32,
    /// Class index, or [`NO_LABEL`]; kept here so samplers and `inspect` never touch shard pages.
    pub label: U32,
    /// Copy of the record's CRC-32C, cross-checked by `verify`.
    pub crc: U32,
}

/// First bytes of a coefficient record ([`flags::COEFFICIENTS`]; made and read by
/// `crate::coefficients`, whose module documentation draws the whole layout).
pub const COEFFICIENTS_MAGIC: [u8; 4] = *b"RSBC";

/// Bytes of a coefficient record before its JPEG header: magic, header length, chunk count.
pub const COEFFICIENTS_PREFIX_LEN: usize = 12;

/// What is wrong with a coefficient record's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("coefficient record: {0}")]
pub struct MalformedRecord(pub &'static str);

/// Whether `bytes` are a coefficient record (as opposed to a JPEG).
pub fn is_coefficients(bytes: &[u8]) -> bool {
    bytes.starts_with(&COEFFICIENTS_MAGIC)
}

/// A coefficient record's parts, borrowed from its bytes.
#[derive(Debug, Clone, Copy)]
pub struct CoefficientRecord<'a> {
    /// The JPEG's bytes from SOI to the end of its SOS segment.
    pub header: &'a [u8],
    /// N + 1 little-endian u32 offsets into `body`.
    offsets: &'a [u8],
    /// The blocks.
    pub body: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*bytes.get(at..at + 4)?.first_chunk()?))
}

impl<'a> CoefficientRecord<'a> {
    /// Splits `bytes` into header, offsets and body, checking that the offsets rise from 0 to
    /// the body's length.
    ///
    /// # Errors
    /// [`MalformedRecord`].
    pub fn parse(bytes: &'a [u8]) -> Result<CoefficientRecord<'a>, MalformedRecord> {
        if !is_coefficients(bytes) {
            return Err(MalformedRecord("no RSBC magic"));
        }
        let h = u32_at(bytes, 4).ok_or(MalformedRecord("truncated prefix"))? as usize;
        let n = u32_at(bytes, 8).ok_or(MalformedRecord("truncated prefix"))? as usize;
        let header = bytes
            .get(COEFFICIENTS_PREFIX_LEN..COEFFICIENTS_PREFIX_LEN.saturating_add(h))
            .ok_or(MalformedRecord("the header runs past the end"))?;
        let at = COEFFICIENTS_PREFIX_LEN + h;
        let table = n
            .checked_add(1)
            .and_then(|k| k.checked_mul(4))
            .and_then(|len| bytes.get(at..at.checked_add(len)?))
            .ok_or(MalformedRecord("the chunk offsets run past the end"))?;
        let body = &bytes[at + table.len()..];
        let record = CoefficientRecord {
            header,
            offsets: table,
            body,
        };
        let mut last = 0;
        for k in 0..=n {
            let o = record.offset(k);
            if (k == 0 && o != 0) || o < last || o > body.len() {
                return Err(MalformedRecord("chunk offsets out of order"));
            }
            last = o;
        }
        if last != body.len() {
            return Err(MalformedRecord(
                "the last chunk does not end at the body's end",
            ));
        }
        Ok(record)
    }

    /// Chunks in the body.
    pub fn chunks(&self) -> usize {
        self.offsets.len() / 4 - 1
    }

    /// Where chunk `k` starts in the body (`k == chunks()`: the body's end).
    pub fn offset(&self, k: usize) -> usize {
        u32_at(self.offsets, 4 * k).map_or(usize::MAX, |o| o as usize)
    }

    /// Where the body starts within the record's bytes.
    pub fn body_start(&self) -> usize {
        COEFFICIENTS_PREFIX_LEN + self.header.len() + self.offsets.len()
    }
}

const _: () = assert!(size_of::<ShardHeader>() == SHARD_HEADER_LEN);
const _: () = assert!(size_of::<RecordHeader>() == RECORD_HEADER_LEN);
const _: () = assert!(size_of::<IndexHeader>() == INDEX_HEADER_LEN);
const _: () = assert!(size_of::<IndexEntry>() == INDEX_ENTRY_LEN);

impl ShardHeader {
    /// The CRC that `header_crc` must hold.
    pub fn compute_crc(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..SHARD_HEADER_LEN - 4])
    }
}

impl IndexHeader {
    /// The CRC that `header_crc` must hold.
    pub fn compute_crc(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..INDEX_HEADER_LEN - 4])
    }
}

impl RecordHeader {
    /// The CRC that `crc` must hold for this header followed by `path` and `data`.
    pub fn compute_crc(&self, path: &[u8], data: &[u8]) -> u32 {
        let crc = crc32c::crc32c(&self.as_bytes()[..RECORD_HEADER_LEN - 4]);
        let crc = crc32c::crc32c_append(crc, path);
        crc32c::crc32c_append(crc, data)
    }

    /// Total record length (header, path, image bytes).
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.path_len.get()) + u64::from(self.data_len.get())
    }
}

/// The JSON footer of a shard: what the shard covers, record by record, so that a resumed pack
/// and `verify` can name every source file without the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFooter {
    /// Split this shard belongs to.
    pub split: String,
    /// Shard number within the split.
    pub shard: u32,
    /// Fingerprint of the pack (source list and options) that wrote this shard.
    pub fingerprint: String,
    /// First position covered (same as the header).
    pub first_position: u64,
    /// One past the last position covered (same as the header).
    pub end_position: u64,
    /// The stored records, in file order.
    pub records: Vec<FooterRecord>,
    /// Source files in this shard's position range that were not stored, with the reason.
    pub rejects: Vec<Rejected>,
}

/// A stored record as listed in a shard footer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FooterRecord {
    /// Position in the split's shuffled source list.
    pub position: u64,
    /// Source path relative to the packed root.
    pub path: String,
    /// Byte offset of the record in the shard.
    pub offset: u64,
    /// Total record length.
    pub len: u32,
    /// Class index, or [`NO_LABEL`].
    pub label: u32,
    /// The record's CRC-32C.
    pub crc: u32,
    /// [`flags`].
    pub flags: u16,
    /// SHA-256 (hex) of the source file, when the stored bytes are not the source's
    /// ([`flags::REWRITTEN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
}

/// A source file that was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Position in the split's shuffled source list.
    pub position: u64,
    /// Source path relative to the packed root.
    pub path: String,
    /// Why it was rejected, in words a user can act on.
    pub reason: String,
}

/// File name of shard `shard` of `split`.
pub fn shard_file_name(split: &str, shard: u32) -> String {
    format!("{split}-{shard:05}.rsb")
}

/// File name of the index of `split`.
pub fn index_file_name(split: &str) -> String {
    format!("{split}.idx")
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;

    #[test]
    fn record_crc_covers_every_header_field_and_payload() {
        let mut h = RecordHeader::new_zeroed();
        h.magic = RECORD_MAGIC;
        h.label.set(7);
        h.data_len.set(3);
        h.path_len.set(2);
        let base = h.compute_crc(b"ab", b"xyz");
        for byte in 0..RECORD_HEADER_LEN - 4 {
            let mut flipped = h;
            flipped.as_mut_bytes()[byte] ^= 0x10;
            assert_ne!(
                flipped.compute_crc(b"ab", b"xyz"),
                base,
                "header byte {byte}"
            );
        }
        assert_ne!(h.compute_crc(b"ac", b"xyz"), base);
        assert_ne!(h.compute_crc(b"ab", b"xyy"), base);
    }

    #[test]
    fn header_crc_excludes_only_itself() {
        let mut h = ShardHeader::new_zeroed();
        h.magic = SHARD_MAGIC;
        let base = h.compute_crc();
        h.header_crc.set(base);
        assert_eq!(h.compute_crc(), base);
        h.footer_crc.set(1);
        assert_ne!(h.compute_crc(), base);
    }

    #[test]
    fn names_sort_in_shard_order() {
        assert_eq!(shard_file_name("train", 3), "train-00003.rsb");
        assert!(shard_file_name("train", 9) < shard_file_name("train", 10));
        assert_eq!(index_file_name("val"), "val.idx");
    }
}
