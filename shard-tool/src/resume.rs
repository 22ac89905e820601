//! Resuming an interrupted pack: the shards a killed run finished are kept when their footers
//! show they belong to this pack and follow each other; the first that does not, and every
//! later one, is removed and packed again.

use std::fs;
use std::path::Path;

use crate::error::{Error, PathContext, Result};
use crate::open::map;
use crate::reader::read_shard_footer;
use crate::record::{IndexEntry, shard_file_name};
use crate::writer::ShardSummary;

/// Everything gathered about one split while packing it: what an interrupted run left,
/// then what this run adds.
pub(crate) struct SplitState {
    /// The shards written so far, in order.
    pub(crate) shards: Vec<ShardSummary>,
    /// Their records' index entries, in position order.
    pub(crate) entries: Vec<IndexEntry>,
}

/// Loads the shards of an interrupted run that are complete and belong to this pack; says
/// through `warn` which shards are packed again.
pub(crate) fn resume(
    out: &Path,
    split: &str,
    fingerprint: &str,
    warn: &mut dyn FnMut(&str),
) -> Result<SplitState> {
    let mut state = SplitState {
        shards: Vec::new(),
        entries: Vec::new(),
    };
    let mut expected_start = 0;
    for shard in 0u32.. {
        let path = out.join(shard_file_name(split, shard));
        if !path.exists() {
            break;
        }
        // SAFETY: nothing else writes this file; the map is dropped before this function
        // returns or the file is removed.
        let footer = unsafe { map(&path) }.and_then(|m| read_shard_footer(&m).at(&path));
        let footer = match footer {
            Ok(f) if f.fingerprint != fingerprint => {
                return Err(Error::Mismatch(format!(
                    "{} was written by a pack with other files or options (fingerprint {}, \
                     now {fingerprint}); choose another --out or delete the directory",
                    path.display(),
                    f.fingerprint
                )));
            }
            Ok(f) if f.split == split && f.shard == shard && f.first_position == expected_start => {
                f
            }
            other => {
                let why = match other {
                    Err(e) => e.chain(),
                    Ok(_) => "its positions do not follow the previous shard".into(),
                };
                remove_from(out, split, shard)?;
                warn(&format!(
                    "{}: {why}; it and later shards of {split} will be packed again",
                    path.display()
                ));
                break;
            }
        };
        let sum = crate::manifest::file_sum(&path)?;
        state
            .entries
            .extend(footer.records.iter().map(|r| index_entry(shard, r)));
        expected_start = footer.end_position;
        state.shards.push(ShardSummary { footer, sum });
    }
    Ok(state)
}

/// The index entry of a record a shard's footer lists.
pub(crate) fn index_entry(shard: u32, r: &crate::record::FooterRecord) -> IndexEntry {
    let mut e = <IndexEntry as zerocopy::FromZeros>::new_zeroed();
    e.offset.set(r.offset);
    e.shard.set(shard);
    e.len.set(r.len);
    e.label.set(r.label);
    e.crc.set(r.crc);
    e
}

/// Removes shard `from` of `split` and every later one.
fn remove_from(out: &Path, split: &str, from: u32) -> Result<()> {
    for shard in from.. {
        let path = out.join(shard_file_name(split, shard));
        if !path.exists() {
            return Ok(());
        }
        fs::remove_file(&path).at(&path)?;
    }
    Ok(())
}
