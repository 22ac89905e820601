//! `pack` on the real data of `../shared/data` (skipped with a message when it is absent).

use std::fs;
use std::path::Path;

use shard_tool::{Dataset, Manifest, record::flags};

/// Every record re-encoded with restart markers decodes to its source's pixels; returns how
/// many there were. (Pillow's side: tests/restart_pixels.sh.)
fn restarted_records_have_their_sources_pixels(dataset: &Dataset, src: &Path) -> u64 {
    let mut n = 0;
    for split in dataset.splits() {
        for i in 0..split.len() {
            let r = split.get(i).unwrap();
            if r.flags & flags::RESTART_MARKERS == 0 || r.flags & flags::MODIFIED != 0 {
                continue;
            }
            let source = fs::read(src.join(r.path)).unwrap();
            assert!(
                pixels(r.data) == pixels(&source),
                "{}: other pixels than its source",
                r.path
            );
            shard_tool::restart::Intervals::default()
                .parse(r.data)
                .unwrap();
            n += 1;
        }
    }
    n
}

use crate::util::{pixels, sha256, shard_tool, shared_data, untar};

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        // `metadata` follows the symlink the corpus tree is made of.
        if fs::metadata(&path).unwrap().is_dir() {
            n += count_files(&path);
        } else {
            n += 1;
        }
    }
    n
}

#[test]
fn imagenet_sample_packs_verifies_and_its_records_are_its_pixels() {
    let Some(tar) = shared_data("imagenet-sample.tar") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    untar(&tar, dir.path());
    let src = dir.path().join("imagenet-sample");
    let out = dir.path().join("out");
    shard_tool()
        .arg("pack")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .args(["--shard-size", "32MiB"])
        .assert()
        .success();
    shard_tool().arg("verify").arg(&out).assert().success();

    // SAFETY: nothing writes the dataset while it is open.
    let dataset = unsafe { Dataset::open(&out) }.unwrap();
    let m = dataset.manifest();
    assert_eq!(m.classes.len(), 1000);
    assert_eq!(m.classes[0], "n01440764");
    assert_eq!(m.classes[999], "n15075141");
    let train = dataset.split("train").unwrap();
    assert_eq!(train.len(), 1000);
    assert!(train.shard_count() >= 3);
    let mut as_is = 0;
    for i in 0..train.len() {
        let r = train.get(i).unwrap();
        assert_eq!(
            r.path.split('/').nth(1),
            Some(m.classes[r.label as usize].as_str())
        );
        if r.flags & flags::REWRITTEN == 0 {
            let source = fs::read(src.join(r.path)).unwrap();
            assert_eq!(sha256(r.data), sha256(&source), "{}", r.path);
            as_is += 1;
        }
    }
    let sm = m.split("train").unwrap();
    assert_eq!(as_is, sm.kept_as_is);
    assert_eq!(
        (sm.transcoded_png, sm.transcoded_cmyk),
        (0, 0),
        "the sample holds no PNG or CMYK file"
    );
    // Every file of the sample is baseline and re-encodes (the default --restart-interval).
    assert_eq!(as_is, 0);
    assert_eq!(sm.restart_markers, 1000);
    assert_eq!(
        restarted_records_have_their_sources_pixels(&dataset, &src),
        1000
    );

    // Packed with --restart-interval 0, every record is its source, byte for byte.
    let plain = dir.path().join("plain");
    shard_tool()
        .arg("pack")
        .arg(&src)
        .arg("--out")
        .arg(&plain)
        .args(["--restart-interval", "0"])
        .assert()
        .success();
    // SAFETY: as above.
    let dataset = unsafe { Dataset::open(&plain) }.unwrap();
    assert_eq!(dataset.manifest().split("train").unwrap().kept_as_is, 1000);
    let train = dataset.split("train").unwrap();
    for i in 0..train.len() {
        let r = train.get(i).unwrap();
        assert_eq!(r.flags & flags::REWRITTEN, 0);
        let source = fs::read(src.join(r.path)).unwrap();
        assert_eq!(sha256(r.data), sha256(&source), "{}", r.path);
    }
}

#[test]
fn jpeg_corpus_every_file_is_stored_or_rejected_with_a_reason_and_nothing_panics() {
    let Some(tar) = shared_data("jpeg-corpus.tar") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    untar(&tar, dir.path());
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink(dir.path().join("jpeg-corpus"), tree.join("train")).unwrap();
    let out = dir.path().join("out");
    let assert = shard_tool()
        .arg("pack")
        .arg(&tree)
        .arg("--out")
        .arg(&out)
        // The corpus is linked in from outside the tree.
        .arg("--follow-external-symlinks")
        .assert()
        .code(3);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let m = Manifest::load(&out).unwrap();
    let train = m.split("train").unwrap();
    let total = count_files(&tree.join("train"));
    let accounted = train.records as usize + train.rejected.len() + train.ignored.len();
    assert_eq!(
        accounted, total,
        "every file is stored, rejected or ignored"
    );
    assert!(
        train.rejected.len() > 50,
        "the corpus has ~100 corrupt files"
    );
    assert!(train.records > 100);
    assert!(train.transcoded_cmyk >= 1 && train.transcoded_png >= 1);
    assert!(train.rejected.iter().all(|r| !r.reason.is_empty()));
    shard_tool().arg("verify").arg(&out).assert().success();
    // SAFETY: nothing writes the dataset while it is open.
    let dataset = unsafe { Dataset::open(&out) }.unwrap();
    let restarted = restarted_records_have_their_sources_pixels(&dataset, &tree);
    let split = dataset.split("train").unwrap();
    let converted_then_restarted = (0..split.len())
        .map(|i| split.get(i).unwrap().flags)
        .filter(|f| f & flags::RESTART_MARKERS != 0 && f & flags::MODIFIED != 0)
        .count() as u64;
    assert_eq!(restarted + converted_then_restarted, train.restart_markers);
    assert!(restarted >= 50, "only {restarted} corpus files re-encoded");
}
