//! `kill -9` during a pack, then the same command again: a complete dataset, byte-identical to
//! an uninterrupted pack.
//!
//! To kill at a known point without racing the packer, the test stops it (SIGSTOP) whenever
//! it sees shards finished and one half-written, checks that this is still so while it is
//! frozen, and only then kills it with SIGKILL (else lets it go on and looks again).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shard_tool::synth::{self, TreeSpec};
use shard_tool::{LayoutOptions, layout, shuffled_order};

use crate::util::{shard_tool, shard_tool_std, tree_digest};

fn pack_args(src: &Path, out: &Path, threads: &str) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["pack".into(), src.into(), "--out".into()];
    args.push(out.into());
    for a in ["--shard-size", "1MiB", "--threads", threads] {
        args.push(a.into());
    }
    args
}

/// Names of finished shard files and unfinished temporaries (`.*.rsb-tmp`) in `out`.
fn listing(out: &Path) -> (Vec<String>, Vec<String>) {
    let mut done = Vec::new();
    let mut tmp = Vec::new();
    for e in fs::read_dir(out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".rsb") {
            done.push(name);
        } else if name.ends_with(shard_tool::atomic::TEMP_SUFFIX) {
            tmp.push(name);
        }
    }
    done.sort();
    (done, tmp)
}

#[test]
fn kill_9_mid_pack_then_rerun_completes_an_identical_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let spec = TreeSpec {
        classes: 5,
        train_per_class: 200,
        val_per_class: 10,
        size: 96,
        ..TreeSpec::default()
    };
    synth::write_tree(&src, &spec).unwrap();

    // The file at 3/4 of train's pack order is empty: rejected, in both packs.
    let tree = layout::discover(&src, &LayoutOptions::default()).unwrap();
    let train = &tree.splits[0];
    let order = shuffled_order(train, 42);
    let victim = src.join(&train.files[order[order.len() * 3 / 4]].path);
    fs::write(&victim, b"").unwrap();

    let out = dir.path().join("out");
    let mut child = shard_tool_std()
        .args(pack_args(&src, &out, "1"))
        .arg("--quiet")
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let signal = |name: &str| {
        let ok = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(ok.success());
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "never saw two shards done and one half-written"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the packer finished before the kill"
        );
        let (done, tmp) = if out.exists() {
            listing(&out)
        } else {
            Default::default()
        };
        if done.len() >= 2 && tmp.len() == 1 {
            signal("-STOP");
            let (done, tmp) = listing(&out);
            if done.len() >= 2 && tmp.len() == 1 {
                break;
            }
            signal("-CONT");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (done, tmp) = listing(&out);
    assert!(!out.join("manifest.json").exists());
    assert!(done.len() >= 2, "finished shards before the kill: {done:?}");
    assert_eq!(tmp.len(), 1, "one shard was being written: {tmp:?}");
    shard_tool()
        .arg("inspect")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicates::str::contains("did not finish"));

    let resumed = shard_tool()
        .args(pack_args(&src, &out, "1"))
        .assert()
        .code(3);
    let stderr = String::from_utf8_lossy(&resumed.get_output().stderr).into_owned();
    assert!(
        stderr.contains("removed 1 unfinished temporary file"),
        "{stderr}"
    );
    assert!(stderr.contains("empty file (0 bytes)"), "{stderr}");
    shard_tool().arg("verify").arg(&out).assert().success();

    // An uninterrupted pack of the same tree, with another thread count, gives the same bytes.
    let reference = dir.path().join("reference");
    shard_tool()
        .args(pack_args(&src, &reference, "2"))
        .assert()
        .code(3);
    let skip = ["manifest.json"];
    assert_eq!(tree_digest(&out, &skip), tree_digest(&reference, &skip));
}
