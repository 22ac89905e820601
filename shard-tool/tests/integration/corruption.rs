//! `verify` against damaged datasets: every flipped byte is found and attributed.

use std::fs;
use std::path::Path;

use rand::{Rng, SeedableRng};
use shard_tool::Dataset;
use shard_tool::synth::{self, TreeSpec};

use crate::util::shard_tool;

fn packed(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    let out = dir.join("out");
    let spec = TreeSpec {
        classes: 4,
        train_per_class: 8,
        val_per_class: 2,
        size: 20,
        ..TreeSpec::default()
    };
    synth::write_tree(&src, &spec).unwrap();
    shard_tool()
        .arg("pack")
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    out
}

fn flip(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

fn verify_output(out: &Path) -> String {
    let assert = shard_tool().arg("verify").arg(out).assert().code(1);
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

/// (global index, byte range, source path) of every record of train-00000.rsb.
fn records(out: &Path) -> Vec<(u64, std::ops::Range<usize>, String)> {
    // SAFETY: read, then dropped before any file is changed.
    let dataset = unsafe { Dataset::open(out) }.unwrap();
    let train = dataset.split("train").unwrap();
    (0..train.len())
        .map(|i| {
            let e = train.entry(i).unwrap();
            let start = e.offset.get() as usize;
            let r = train.get(i).unwrap();
            (i, start..start + e.len.get() as usize, r.path.to_owned())
        })
        .collect()
}

#[test]
fn a_flipped_byte_anywhere_in_a_shard_fails_verify_and_names_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = packed(dir.path());
    let shard = out.join("train-00000.rsb");
    let records = records(&out);
    let len = fs::metadata(&shard).unwrap().len() as usize;
    let footer_start = records.last().unwrap().1.end;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    // Bytes in the header, in the first and last record, and random ones anywhere.
    let mut offsets = vec![
        0,
        13,
        63,
        64,
        64 + 31,
        footer_start - 1,
        footer_start,
        len - 1,
    ];
    offsets.extend((0..24).map(|_| rng.random_range(0..len)));
    for at in offsets {
        flip(&shard, at);
        let stdout = verify_output(&out);
        assert!(stdout.contains("FAILED"), "byte {at}: {stdout}");
        assert!(stdout.contains("train-00000.rsb"), "byte {at}: {stdout}");
        if let Some((i, _, path)) = records.iter().find(|(_, r, _)| r.contains(&at)) {
            let named = format!("train record {i} ({path})");
            assert!(
                stdout.contains(&named),
                "byte {at} should name {named}: {stdout}"
            );
        } else if at < 64 {
            assert!(stdout.contains("header"), "byte {at}: {stdout}");
        } else {
            assert!(stdout.contains("footer"), "byte {at}: {stdout}");
        }
        flip(&shard, at);
    }
    shard_tool().arg("verify").arg(&out).assert().success();
}

#[test]
fn damaged_index_truncated_shard_and_missing_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = packed(dir.path());
    let index = out.join("train.idx");
    flip(&index, 40);
    let stdout = verify_output(&out);
    assert!(stdout.contains("train.idx"), "{stdout}");
    flip(&index, 40);

    let shard = out.join("val-00000.rsb");
    let bytes = fs::read(&shard).unwrap();
    fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let stdout = verify_output(&out);
    assert!(stdout.contains("val-00000.rsb"), "{stdout}");
    shard_tool()
        .arg("inspect")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains("truncated"));

    fs::remove_file(&shard).unwrap();
    let stdout = verify_output(&out);
    assert!(stdout.contains("val-00000.rsb"), "{stdout}");
}

#[test]
fn an_index_changed_after_packing_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = packed(dir.path());
    let index = out.join("train.idx");
    // Every entry a copy of entry 0 (its header intact): each record still parses, and a
    // reader that trusted the index would serve one image all epoch.
    let mut bytes = fs::read(&index).unwrap();
    let header = shard_tool::record::INDEX_HEADER_LEN;
    let entry = shard_tool::record::INDEX_ENTRY_LEN;
    let first = bytes[header..header + entry].to_vec();
    for chunk in bytes[header..].chunks_exact_mut(entry) {
        chunk.copy_from_slice(&first);
    }
    fs::write(&index, bytes).unwrap();
    // SAFETY: nothing changes the files while this runs.
    let e = unsafe { Dataset::open(&out) }.err().unwrap();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    assert!(
        text.contains("train.idx") && text.contains("XXH3"),
        "{text}"
    );
    // And the tools say so.
    shard_tool()
        .arg("inspect")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "the index was changed after packing",
        ));
}

/// `out`'s manifest, changed by `edit`.
fn edit_manifest(out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = out.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut m);
    fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

#[test]
fn a_manifest_naming_files_outside_the_dataset_or_twice_is_refused() {
    for (edit, want) in [
        (
            Box::new(|m: &mut serde_json::Value| {
                m["splits"][0]["shards"][0]["file"] = "../../etc/passwd".into();
            }) as Box<dyn FnOnce(&mut serde_json::Value)>,
            "\"../../etc/passwd\", which is not a file of the dataset directory",
        ),
        (
            Box::new(|m: &mut serde_json::Value| {
                let shards = m["splits"][0]["shards"].as_array_mut().unwrap();
                let again = shards.clone();
                shards.extend(again);
            }),
            "twice",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = packed(dir.path());
        edit_manifest(&out, edit);
        for tool in ["verify", "inspect"] {
            shard_tool()
                .arg(tool)
                .arg(&out)
                .timeout(std::time::Duration::from_secs(20))
                .assert()
                .failure()
                .stderr(predicates::str::contains(want));
        }
    }
}

#[test]
fn a_fifo_or_a_device_in_place_of_a_dataset_file_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let out = packed(dir.path());
    let shard = out.join("val-00000.rsb");
    fs::remove_file(&shard).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&shard)
        .status()
        .unwrap();
    assert!(made.success());
    // verify reports the file among its problems; the readers refuse to open the dataset.
    let stdout = verify_output(&out);
    assert!(
        stdout.contains("val-00000.rsb") && stdout.contains("not a regular file"),
        "{stdout}"
    );
    shard_tool()
        .arg("inspect")
        .arg(&out)
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .failure()
        .stderr(predicates::str::contains("not a regular file"));
    fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
    let stdout = verify_output(&out);
    assert!(
        stdout.contains("val-00000.rsb") && stdout.contains("not a regular file"),
        "{stdout}"
    );
}
