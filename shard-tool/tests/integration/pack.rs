//! `pack` on synthetic trees: what happens to each odd file, round trips, layouts.

use std::fs;
use std::path::Path;

use shard_tool::coefficients::is_coefficients;
use shard_tool::synth::{self, TreeSpec};
use shard_tool::{Dataset, Manifest, record::flags};

use crate::util::{sha256, shard_tool};

fn small_tree(root: &Path, odd_files: bool) {
    let spec = TreeSpec {
        classes: 3,
        train_per_class: 6,
        val_per_class: 2,
        size: 24,
        odd_files,
    };
    synth::write_tree(root, &spec).unwrap();
}

#[test]
fn odd_files_each_get_the_documented_outcome_and_nothing_else_is_lost() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    small_tree(src.path(), true);
    let odd = src.path().join("train/class_000");
    fs::write(
        odd.join("bomb.JPEG"),
        synth::huge_declared_jpeg(60_000, 50_000),
    )
    .unwrap();
    fs::write(odd.join("README.txt"), "not an image").unwrap();
    fs::create_dir_all(src.path().join("train/class_003")).unwrap();

    let assert = shard_tool()
        .arg("pack")
        .arg(src.path())
        .arg("--out")
        .arg(out.path())
        .assert()
        .code(3);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    let report = fs::read_to_string(out.path().join("report.txt")).unwrap();
    let expect = [
        "kept: train/class_000/grayscale.JPEG: grayscale JPEG kept single-channel",
        "converted: train/class_000/png_named.JPEG: PNG converted to RGB JPEG",
        "converted: train/class_000/cmyk.JPEG: CMYK JPEG converted to RGB JPEG",
        "REJECTED: train/class_000/empty.JPEG: empty file (0 bytes)",
        "REJECTED: train/class_000/truncated.JPEG: JPEG does not decode (strict mode)",
        "REJECTED: train/class_000/bomb.JPEG: declares 60000x50000",
        "ignored: train/class_000/README.txt: not an image file by extension",
        // Every train record is re-encoded with restart markers (the default), none as is.
        "train: 24 image files, 21 stored (0 as is, 1 PNG converted, 1 CMYK converted, \
         0 downscaled, 21 re-encoded with restart markers; 1 grayscale), 3 rejected, 1 \
         non-image files ignored",
    ];
    for line in expect {
        assert!(report.contains(line), "report lacks {line:?}:\n{report}");
        assert!(
            stderr.contains(line),
            "terminal output lacks {line:?}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("train/class_003 holds no images"),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 image file(s) could not be stored"),
        "{stderr}"
    );

    let manifest = Manifest::load(out.path()).unwrap();
    assert_eq!(
        manifest.classes,
        ["class_000", "class_001", "class_002", "class_003"]
    );
    let train = manifest.split("train").unwrap();
    assert_eq!(train.per_class, [6 + 3, 6, 6, 0]);
    shard_tool()
        .arg("verify")
        .arg(out.path())
        .assert()
        .success();
}

#[test]
fn every_record_round_trips_with_its_label_and_bytes() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    small_tree(src.path(), true);
    shard_tool()
        .args(["pack", "--shard-size", "1MiB", "-j", "2"])
        .arg(src.path())
        .arg("--out")
        .arg(out.path())
        .assert()
        .code(3);
    // SAFETY: nothing writes the dataset while it is open.
    let dataset = unsafe { Dataset::open(out.path()) }.unwrap();
    let classes = &dataset.manifest().classes;
    let mut seen_classes_in_order = Vec::new();
    for split in dataset.splits() {
        for i in 0..split.len() {
            let r = split.get(i).unwrap();
            assert!(r.checksum_ok());
            let folder = r.path.split('/').nth(1).unwrap();
            assert_eq!(classes[r.label as usize], folder, "label of {}", r.path);
            assert_eq!(split.label(i).unwrap(), r.label);
            let source = fs::read(src.path().join(r.path)).unwrap();
            // Restart markers are given to the train split only (it is read by random crops).
            let restarted = r.flags & flags::RESTART_MARKERS != 0;
            assert_eq!(
                restarted,
                split.name() == "train",
                "{}: flags {:#x}",
                r.path,
                r.flags
            );
            if r.flags & flags::REWRITTEN == 0 {
                assert_eq!(sha256(r.data), sha256(&source), "{} changed", r.path);
            } else if r.flags & flags::MODIFIED == 0 {
                assert_ne!(r.data, &source[..]);
                assert!(
                    crate::util::pixels(r.data) == crate::util::pixels(&source),
                    "{}: other pixels",
                    r.path
                );
            } else {
                // Converted (a PNG, a CMYK JPEG): a JPEG, or in train the coefficients of one.
                assert_ne!(r.data, &source[..]);
                let coefficients = r.flags & flags::COEFFICIENTS != 0;
                assert_eq!(coefficients, is_coefficients(r.data), "{}", r.path);
                assert!(coefficients || r.data.starts_with(&[0xFF, 0xD8, 0xFF]));
            }
            seen_classes_in_order.push(r.label);
        }
    }
    // Shuffled at pack time: the records are not grouped by class.
    let sorted = {
        let mut s = seen_classes_in_order.clone();
        s.sort();
        s
    };
    assert_ne!(seen_classes_in_order, sorted);
    assert!(dataset.split("train").unwrap().get(10_000).is_err());
    assert!(dataset.split("test").is_err());
}

#[test]
fn extract_writes_the_stored_bytes_by_index_and_by_name() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    small_tree(src.path(), false);
    shard_tool()
        .arg("pack")
        .arg(src.path())
        .arg("--out")
        .arg(out.path())
        .assert()
        .success();
    let file = out.path().join("x.jpg");
    let name = "val/class_002/val_002_00001.jpg";
    shard_tool()
        .arg("extract")
        .arg(out.path())
        .args(["--name", name, "--out"])
        .arg(&file)
        .assert()
        .success();
    assert_eq!(
        fs::read(&file).unwrap(),
        fs::read(src.path().join(name)).unwrap()
    );
    shard_tool()
        .arg("extract")
        .arg(out.path())
        .args(["--split", "val", "--index", "0", "--out"])
        .arg(&file)
        .assert()
        .success();
    // A bare file name is written in the current directory (its parent is the empty path).
    shard_tool()
        .current_dir(out.path())
        .arg("extract")
        .arg(out.path())
        .args(["--split", "val", "--index", "0", "--out", "bare.jpg"])
        .assert()
        .success();
    assert_eq!(
        fs::read(out.path().join("bare.jpg")).unwrap(),
        fs::read(&file).unwrap()
    );
    let all = out.path().join("all");
    shard_tool()
        .arg("extract")
        .arg(out.path())
        .args(["--all", "--out"])
        .arg(&all)
        .assert()
        .success();
    assert_eq!(
        crate::util::tree_digest(&all.join("val/class_001"), &[]),
        crate::util::tree_digest(&src.path().join("val/class_001"), &[])
    );
    shard_tool()
        .arg("extract")
        .arg(out.path())
        .args(["--index", "1", "--all", "--out"])
        .arg(&all)
        .assert()
        .failure();
    shard_tool()
        .arg("extract")
        .arg(out.path())
        .args(["--split", "val", "--index", "99", "--out"])
        .arg(&file)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("split `val` has 6 records"));
    // The target must be a file: a directory or a device is refused (exit 2), not renamed over
    // (as root, `--out /dev/null` would have replaced the machine's /dev/null).
    for (target, said) in [
        (all.as_path(), "is a directory, not a regular file"),
        (
            Path::new("/dev/null"),
            "/dev/null: is a character device, not a regular file",
        ),
    ] {
        shard_tool()
            .arg("extract")
            .arg(out.path())
            .args(["--split", "val", "--index", "0", "--out"])
            .arg(target)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(said));
    }
}

#[test]
fn rerunning_a_finished_pack_does_nothing_and_other_options_are_refused() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    small_tree(src.path(), false);
    let pack = |seed: &str| {
        let mut cmd = shard_tool();
        cmd.arg("pack")
            .arg(src.path())
            .arg("--out")
            .arg(out.path())
            .args(["--seed", seed]);
        cmd
    };
    pack("1").assert().success();
    let before = crate::util::tree_digest(out.path(), &[]);
    pack("1")
        .assert()
        .success()
        .stderr(predicates::str::contains("nothing to do"));
    assert_eq!(crate::util::tree_digest(out.path(), &[]), before);
    pack("2")
        .assert()
        .failure()
        .stderr(predicates::str::contains("already holds a finished pack"));
}

#[test]
fn flat_val_with_kaggle_labels_and_an_unopened_dataset() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = src.path();
    for (class, i) in [("n01", 0), ("n02", 1)] {
        fs::create_dir_all(r.join("train").join(class)).unwrap();
        fs::write(
            r.join(format!("train/{class}/a.JPEG")),
            synth::class_image(i, 0, 16, 16),
        )
        .unwrap();
    }
    fs::create_dir_all(r.join("val")).unwrap();
    for k in 1..=3 {
        fs::write(
            r.join(format!("val/ILSVRC2012_val_{k:08}.JPEG")),
            synth::class_image(k, 1, 16, 16),
        )
        .unwrap();
    }
    fs::write(
        r.join("LOC_val_solution.csv"),
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n02 0 0 1 1\n\
         ILSVRC2012_val_00000002,n01 0 0 1 1\nILSVRC2012_val_00000003,n02 0 0 1 1\n",
    )
    .unwrap();
    shard_tool()
        .arg("inspect")
        .arg(out.path())
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "rerun the same `shard-tool pack`",
        ));
    shard_tool()
        .arg("pack")
        .arg(r)
        .arg("--out")
        .arg(out.path())
        .assert()
        .success();
    // SAFETY: nothing writes the dataset while it is open.
    let dataset = unsafe { Dataset::open(out.path()) }.unwrap();
    let val = dataset.split("val").unwrap();
    let mut labels: Vec<(String, u32)> = (0..val.len())
        .map(|i| {
            let r = val.get(i).unwrap();
            (r.path.to_owned(), r.label)
        })
        .collect();
    labels.sort();
    let labels: Vec<u32> = labels.into_iter().map(|(_, l)| l).collect();
    assert_eq!(labels, [1, 0, 1]);
    shard_tool()
        .arg("inspect")
        .arg(out.path())
        .assert()
        .success()
        .stdout(predicates::str::contains("val: 3 records"));
}

#[test]
fn a_subset_packed_with_classes_from_keeps_the_full_datasets_labels() {
    let (full_src, sub_src, out) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    small_tree(full_src.path(), false);
    // The subset: only the last class's folder, as a downstream set of one ImageNet class.
    let class = "class_002";
    let from = full_src.path().join("val").join(class);
    let to = sub_src.path().join("val").join(class);
    fs::create_dir_all(&to).unwrap();
    for entry in fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let (full, sub) = (out.path().join("full"), out.path().join("sub"));
    shard_tool()
        .arg("pack")
        .arg(full_src.path())
        .arg("--out")
        .arg(&full)
        .assert()
        .success();
    shard_tool()
        .arg("pack")
        .arg(sub_src.path())
        .arg("--out")
        .arg(&sub)
        .arg("--classes-from")
        .arg(full.join("manifest.json"))
        .assert()
        .success();
    let (full_m, sub_m) = (
        Manifest::load(&full).unwrap(),
        Manifest::load(&sub).unwrap(),
    );
    assert_eq!(sub_m.classes, full_m.classes);
    assert!(
        sub_m.options.class_order.starts_with("classes from"),
        "{}",
        sub_m.options.class_order
    );
    // Every record of the subset has the full dataset's index of its class.
    // SAFETY: nothing writes the dataset while it is open.
    let dataset = unsafe { Dataset::open(&sub) }.unwrap();
    let val = dataset.split("val").unwrap();
    assert_eq!(val.len(), 2);
    for i in 0..val.len() {
        assert_eq!(val.get(i).unwrap().label, 2);
    }
    // Packed on its own, the same folder would be class 0.
    let own = out.path().join("own");
    shard_tool()
        .arg("pack")
        .arg(sub_src.path())
        .arg("--out")
        .arg(&own)
        .assert()
        .success();
    assert_eq!(Manifest::load(&own).unwrap().classes, [class]);
    // A dataset that is not packed is named, as bad input (exit status 2).
    shard_tool()
        .arg("pack")
        .arg(sub_src.path())
        .arg("--out")
        .arg(out.path().join("never"))
        .arg("--classes-from")
        .arg(sub_src.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "is not a packed dataset (no manifest.json)",
        ));
}

/// `shard-tool pack SRC --out OUT`.
fn pack_into(src: &Path, out: &Path) -> assert_cmd::Command {
    let mut cmd = shard_tool();
    cmd.arg("pack").arg(src).arg("--out").arg(out);
    cmd
}

#[test]
fn names_with_control_characters_reach_the_terminal_escaped() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    small_tree(src.path(), false);
    // A file name that would clear the screen, and a class name with a newline in it.
    let class = src.path().join("train/evil\nclass");
    fs::create_dir_all(&class).unwrap();
    let jpeg = synth::class_image(0, 0, 24, 24);
    fs::write(class.join("a\x1b[2J.jpg"), &jpeg).unwrap();
    fs::write(src.path().join("train/class_000/b\x1b]0;x\x07.jpg"), &jpeg).unwrap();
    pack_into(src.path(), out.path()).assert().success();
    let name = "train/evil\nclass/a\x1b[2J.jpg";
    let extracted = shard_tool()
        .arg("extract")
        .arg(out.path())
        .args(["--name", name, "--out"])
        .arg(out.path().join("x.jpg"))
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&extracted.get_output().stderr).to_string();
    assert!(
        !stderr.contains('\x1b') && !stderr.contains("evil\n"),
        "{stderr:?}"
    );
    assert!(
        stderr.contains("train/evil\\nclass/a\\u{1b}[2J.jpg"),
        "{stderr:?}"
    );
    let inspected = shard_tool()
        .arg("inspect")
        .arg(out.path())
        .arg("--classes")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&inspected.get_output().stdout).to_string();
    assert!(stdout.contains("evil\\nclass"), "{stdout:?}");
    assert!(!stdout.contains("evil\n"), "{stdout:?}");
}

#[test]
fn a_second_packer_on_one_out_is_refused_naming_the_first() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    small_tree(src.path(), false);
    // The first packer, as it holds the directory: the lock taken, its pid written.
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out.path().join(shard_tool::LOCK_FILE))
        .unwrap();
    lock.try_lock().unwrap();
    std::io::Write::write_all(&mut &lock, b"pid 4242").unwrap();
    let second = pack_into(src.path(), out.path()).assert().code(2);
    let stderr = String::from_utf8_lossy(&second.get_output().stderr).to_string();
    assert!(
        stderr.contains("another `shard-tool pack` (pid 4242) is writing this directory"),
        "{stderr}"
    );
    assert!(!out.path().join("manifest.json").exists());
    // Released (the first one ended, or was killed: the kernel drops a dead process's lock),
    // the directory is packed, and the lock file names the last packer.
    drop(lock);
    pack_into(src.path(), out.path()).assert().success();
    let holder = fs::read_to_string(out.path().join(shard_tool::LOCK_FILE)).unwrap();
    assert!(holder.starts_with("pid "), "{holder}");
    // SAFETY: nothing writes the pack while the test reads it.
    unsafe { Dataset::open(out.path()) }.unwrap();
}
