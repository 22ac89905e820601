//! `pack` on the real data of `../shared/data` (skipped with a message when it is absent).

use std::fs;
use std::path::Path;

use shard_tool::{Dataset, Manifest, record::flags};

use crate::util::{sha256, shard_tool, shared_data, untar};

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
fn imagenet_sample_packs_verifies_and_extracts_byte_identical() {
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
        if r.flags & flags::MODIFIED == 0 {
            let source = fs::read(src.join(r.path)).unwrap();
            assert_eq!(sha256(r.data), sha256(&source), "{}", r.path);
            as_is += 1;
        }
    }
    assert_eq!(as_is, m.split("train").unwrap().kept_as_is);
    assert_eq!(as_is, 1000, "the sample holds no PNG or CMYK file");
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
}
