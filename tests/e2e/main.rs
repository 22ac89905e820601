//! End-to-end: the README's main job (`tests/demo.sh`) with the binaries of this build.

mod daemon;
mod docs;
mod drill;
mod faults;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The machine's cores, as the tests of this binary (run on parallel threads) take them: most
/// share them, but the drills compare a client's rate before and during an attack, which
/// another test's load would make a figure about that test.
static CORES: RwLock<()> = RwLock::new(());

/// The cores, shared with the other tests that share them.
fn shared_cores() -> RwLockReadGuard<'static, ()> {
    // A test that failed holding the lock says so itself; the others go on.
    CORES.read().unwrap_or_else(|e| e.into_inner())
}

/// The cores, with no other test of this binary running.
fn all_cores() -> RwLockWriteGuard<'static, ()> {
    CORES.write().unwrap_or_else(|e| e.into_inner())
}

/// Directory of the binaries built for this test run (`target/debug`).
fn bin_dir() -> PathBuf {
    for name in ["shard-tool", "loader", "trainer"] {
        let bin = assert_cmd::cargo::cargo_bin(name);
        assert!(
            bin.exists(),
            "{} is not built: run the whole suite with `cargo test --workspace`",
            bin.display()
        );
    }
    let bin = assert_cmd::cargo::cargo_bin("shard-tool");
    bin.parent().unwrap().to_path_buf()
}

#[test]
fn readme_main_job_runs_end_to_end() {
    let _cores = shared_cores();
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("RSB_BIN_DIR", bin_dir())
        .env("RSB_DEMO_DIR", work.path().join("demo"))
        // Debug builds of burn are slow: two steps show the path works.
        .env("RSB_DEMO_TRAIN_STEPS", "2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("OK: 1203 records"), "{stdout}");
    assert!(stdout.contains("train: 1003 records"), "{stdout}");
    assert!(
        stderr.contains("REJECTED: train/class_000/truncated.JPEG"),
        "{stderr}"
    );
    let extracted = std::fs::read(work.path().join("demo/val-0.jpg")).unwrap();
    assert!(extracted.starts_with(&[0xFF, 0xD8, 0xFF]));
    let preview = std::fs::read(work.path().join("demo/preview.png")).unwrap();
    assert!(preview.starts_with(b"\x89PNG"));
    assert!(stdout.contains("tile 11 (row 1, col 5)"), "{stdout}");
    assert!(stdout.contains("samples/s"), "{stdout}");
    assert!(
        stdout.contains("3 ranks of one job") && stdout.contains("same bytes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("loader fetch: 8 batches, 256 samples"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 client(s)") || stdout.contains("0 client(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("final: top-1"), "{stdout}");
    assert!(stdout.contains("/run/latest: top-1"), "{stdout}");
    let curves = std::fs::read(work.path().join("demo/curves.png")).unwrap();
    assert!(curves.starts_with(b"\x89PNG"));
    assert!(
        stdout.contains("curves.png (2 steps, 1 evaluation(s); last top-1"),
        "{stdout}"
    );
    let after = std::fs::read_to_string(work.path().join("demo/status-after.txt")).unwrap();
    assert!(after.contains(" 0 connection(s) refused"), "{after}");
    // timm's summary.csv: its header, and the one (partial) epoch trained.
    let summary = std::fs::read_to_string(work.path().join("demo/run/summary.csv")).unwrap();
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("epoch,train_loss,eval_loss,eval_top1,eval_top5,lr"),
        "{summary}"
    );
    assert_eq!(lines.len(), 2, "{summary}");
    assert!(lines[1].starts_with("0,"), "{summary}");
    // TensorBoard: one event file for the run's one start.
    let event_files: Vec<String> = std::fs::read_dir(work.path().join("demo/run"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("events.out.tfevents.000000000000."))
        .collect();
    assert_eq!(event_files.len(), 1, "{event_files:?}");
    let metrics = std::fs::read_to_string(work.path().join("demo/run/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("{\"kind\":\"step\""))
            .count(),
        2,
        "{metrics}"
    );
}
