//! The machine's own faults: a disk that fills while a run writes its checkpoint or its
//! metrics, and while a pack writes its shards. Each stops naming the file, leaves the last
//! good checkpoint (or the finished shards) as they were, and the same command run again
//! once there is room finishes what an uninterrupted run does.
//!
//! The disk is a tmpfs of a few hundred kilobytes, mounted for the test (root only: elsewhere
//! the tests say so and skip).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use shard_tool::synth::{self, TreeSpec};
use trainer::run::{RunDir, train};

use crate::common;
use common::{dataset, losses, tiny_recipe};

/// A tmpfs mounted on a fresh folder, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A tmpfs of `bytes`, or `None` (said on stderr) where this process may not mount one.
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a small tmpfs here ({}); the disk-full tests need \
                     root",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: no mount command ({e})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk to the last `keep` bytes with a file, which [`SmallDisk::free`] removes.
    fn fill_leaving(&self, keep: u64) {
        let filler = self.path().join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        f.set_len(written.saturating_sub(keep)).unwrap();
        f.sync_all().unwrap();
    }

    /// Removes the filler.
    fn free(&self) {
        fs::remove_file(self.path().join("filler")).unwrap();
    }

    /// Makes the disk `bytes` large.
    fn resize(&self, bytes: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() { du(&e.path()) } else { m.len() }
        })
        .sum()
}

/// Names in `dir` that are rsb's temporaries (none must be left by a failed write).
fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(shard_tool::atomic::TEMP_SUFFIX))
        .collect()
}

#[test]
fn a_disk_that_fills_while_a_run_writes_stops_it_naming_the_file_and_resume_is_exact() {
    let _rng = common::burn_rng();
    let Some(disk) = SmallDisk::mount(8 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let options =
        |out: PathBuf, steps, resume| common::options(tiny_recipe(), &shards, out, steps, resume);
    // The uninterrupted run, on a disk with room.
    let whole = dir.path().join("whole");
    train(&options(whole.clone(), 4, false), &mut |_| {}).unwrap();

    let run = disk.path().join("run");
    train(&options(run.clone(), 2, false), &mut |_| {}).unwrap();
    let first = RunDir::new(&run).latest().unwrap();
    let checkpoint = du(first.dir());

    // 1. Room for the metrics and events of two steps, not for a checkpoint: the checkpoint
    //    at step 4 fails naming its file; step 2's stays the latest, whole.
    disk.fill_leaving(checkpoint / 2);
    let err = train(&options(run.clone(), 4, true), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&run.display().to_string()), "{err}");
    let latest = RunDir::new(&run).latest().unwrap();
    assert_eq!(latest, first);
    assert_eq!(latest.state().unwrap().steps_done, 2);
    // Nothing half-written is left: no checkpoint folder of step 4, no staging folder.
    assert!(!run.join("ckpt-0000000004").exists());
    assert_eq!(temporaries(&run), Vec::<String>::new());
    eprintln!("checkpoint of {checkpoint} bytes on a full disk: {err}");

    // 2. No room at all: the resume stops at the first file it rewrites, recipe.toml; it and
    //    metrics.jsonl keep what they held.
    disk.free();
    disk.fill_leaving(0);
    let files = ["recipe.toml", "metrics.jsonl", "summary.csv"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(run.join(f)).unwrap())
        .collect();
    let err = train(&options(run.clone(), 4, true), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("recipe.toml"), "{err}");
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(run.join(f)).unwrap())
        .collect();
    assert_eq!(after, before);
    assert_eq!(temporaries(&run), Vec::<String>::new());
    eprintln!("a start on a full disk: {err}");

    // 3. Room again: the same command goes on from step 2 and gives the uninterrupted losses.
    disk.free();
    train(&options(run.clone(), 4, true), &mut |_| {}).unwrap();
    assert_eq!(losses(&run), losses(&whole));
    assert_eq!(
        RunDir::new(&run)
            .latest()
            .unwrap()
            .state()
            .unwrap()
            .steps_done,
        4
    );
}

#[test]
fn a_disk_that_fills_while_packing_stops_naming_the_file_and_the_rerun_finishes_it() {
    let Some(disk) = SmallDisk::mount(96 << 10) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let spec = TreeSpec {
        classes: 3,
        train_per_class: 60,
        val_per_class: 8,
        size: 32,
        ..TreeSpec::default()
    };
    synth::write_tree(&src, &spec).unwrap();
    let mut options = shard_tool::PackOptions::new(dir.path().join("reference"));
    options.shard_size = 1 << 20;
    shard_tool::pack(&src, &options, &mut |_| {}).unwrap();
    let reference = du(&dir.path().join("reference"));
    assert!(
        reference > 96 << 10,
        "the pack fits the small disk: {reference} bytes"
    );

    let out = disk.path().join("shards");
    options.out = out.clone();
    let err = shard_tool::pack(&src, &options, &mut |_| {})
        .unwrap_err()
        .chain();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains(&out.display().to_string()), "{err}");
    assert!(!out.join("manifest.json").exists());
    eprintln!("pack of {reference} bytes onto 96 KiB: {err}");

    disk.resize(4 << 20);
    shard_tool::pack(&src, &options, &mut |_| {}).unwrap();
    assert_eq!(temporaries(&out), Vec::<String>::new());
    let report = shard_tool::verify(&out, 1, &|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Shards and indexes byte for byte those of the pack that never ran out of room.
    for entry in fs::read_dir(dir.path().join("reference")).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".rsb") || name.ends_with(".idx") {
            assert_eq!(
                fs::read(out.join(&*name)).unwrap(),
                fs::read(dir.path().join("reference").join(&*name)).unwrap(),
                "{name}"
            );
        }
    }
}
