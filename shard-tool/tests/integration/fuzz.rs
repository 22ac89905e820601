//! The readers of a pack, fuzzed: a finished pack from the corpus (`fuzz/corpus/pack`) with one
//! of its files (the manifest, an index, a shard) mutated, then opened, every record read and
//! the whole verified. Whatever the bytes, each is an answer or an error naming the file, never
//! a panic, a read past a mapping, or an allocation the size of a length field.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use shard_tool::fuzzing::{Edit, cases, corpus_dir, mutate};

/// The corpus pack's files, in name order.
fn pack_files() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(corpus_dir("pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every record of every split of the pack in `dir`, read and checked, then the pack verified.
fn read_all(dir: &Path) {
    // SAFETY: nothing else writes the copy while it is open.
    let Ok(dataset) = (unsafe { shard_tool::Dataset::open(dir) }) else {
        return;
    };
    for name in ["train", "val"] {
        let Ok(split) = dataset.split(name) else {
            continue;
        };
        for i in 0..split.len() {
            if let Ok(record) = split.get(i) {
                let _ = record.checksum_ok();
            }
        }
    }
    let _ = shard_tool::verify(dir, 1, &|_| {});
}

/// `bytes` of file `name` with its header's checksums made right again, as a writer that
/// computed them over wrong numbers would leave them: what gets an edit of a count, an offset
/// or a length past the header's check, to the bounds checks behind it.
fn reseal(name: &str, mut bytes: Vec<u8>) -> Vec<u8> {
    use shard_tool::record::{INDEX_HEADER_LEN, IndexHeader, SHARD_HEADER_LEN, ShardHeader};
    use zerocopy::{FromBytes, IntoBytes};
    if name.ends_with(".idx")
        && let Ok((mut h, _)) = IndexHeader::read_from_prefix(&bytes)
    {
        h.header_crc.set(h.compute_crc());
        bytes[..INDEX_HEADER_LEN].copy_from_slice(h.as_bytes());
    } else if name.ends_with(".rsb")
        && let Ok((mut h, _)) = ShardHeader::read_from_prefix(&bytes)
    {
        let start = usize::try_from(h.footer_offset.get()).unwrap_or(usize::MAX);
        let len = usize::try_from(h.footer_len.get()).unwrap_or(usize::MAX);
        if let Some(footer) = start.checked_add(len).and_then(|end| bytes.get(start..end)) {
            h.footer_crc.set(crc32c::crc32c(footer));
        }
        h.header_crc.set(h.compute_crc());
        bytes[..SHARD_HEADER_LEN].copy_from_slice(h.as_bytes());
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_pack_with_any_file_mutated_is_read_without_a_panic(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(any::<Edit>(), 1..8),
        resealed in any::<bool>(),
    ) {
        let names = pack_files();
        let name = &names[which.index(names.len())];
        let dir = tempfile::tempdir().unwrap();
        for n in &names {
            fs::copy(corpus_dir("pack").join(n), dir.path().join(n)).unwrap();
        }
        let seed = fs::read(dir.path().join(name)).unwrap();
        let mut bytes = mutate(&seed, &edits);
        if resealed {
            bytes = reseal(name, bytes);
        }
        fs::write(dir.path().join(name), bytes).unwrap();
        read_all(dir.path());
    }
}

#[test]
fn the_corpus_pack_reads_whole() {
    let report = shard_tool::verify(&corpus_dir("pack"), 1, &|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.records > 0);
}
