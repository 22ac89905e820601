//! `trainer study` end to end on a tiny packed dataset: every combination becomes a run, an
//! interrupted run resumes, finished runs and their extra-set scores are reused, a run of
//! another recipe is refused, and the table groups seeds as replicates.

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::str::contains;

use crate::common;

fn trainer() -> Command {
    let mut c = Command::cargo_bin("trainer").unwrap();
    c.timeout(std::time::Duration::from_secs(600));
    c
}

fn smoke() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml")
}

#[test]
fn a_seed_study_runs_resumes_reuses_and_groups_its_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let shards = common::dataset(dir.path());
    let study = dir.path().join("study");
    let command = |extra: &[&str]| {
        let mut c = trainer();
        c.args(["study", "--config"])
            .arg(smoke())
            .arg("--shards")
            .arg(&shards)
            .args(["-j", "2", "--max-steps", "2", "--vary", "seed=0,1"])
            .arg("--set")
            .arg(format!("again={}:val", shards.display()))
            .arg("--out")
            .arg(&study)
            .args(common::TINY_FLAGS)
            .args(extra);
        c
    };
    // seed=0 was interrupted after one step by an ordinary run with the same recipe.
    trainer()
        .args(["train", "--config"])
        .arg(smoke())
        .arg("--shards")
        .arg(&shards)
        .args(["-j", "2", "--max-steps", "1", "--seed", "0", "--out"])
        .arg(study.join("seed=0"))
        .args(common::TINY_FLAGS)
        .assert()
        .success();

    let out = command(&["--json"]).assert().success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        stderr.contains("run 1/2 seed=0: resumes after step 1"),
        "{stderr}"
    );
    assert!(stderr.contains("run 2/2 seed=1: starts"), "{stderr}");
    // Without a terminal the bar is hidden; what it would show above itself goes to stderr.
    for line in [
        "step 2/2 epoch 0 loss",
        "eval after epoch 0: top-1",
        "checkpoint ",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from {stderr}");
    }
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report}");
    assert_eq!(runs[1]["varied"], serde_json::json!([["seed", "1"]]));
    assert_eq!(runs[0]["steps"], 2);
    // Scored on the recipe's val split and on the extra set, which is the same split: the
    // same top-1 both ways.
    let score = |run: &serde_json::Value, set: &str, metric: &str| {
        run["scores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["set"] == set && s["metric"] == metric)
            .unwrap_or_else(|| panic!("{set} {metric} in {run}"))["value"]
            .as_f64()
            .unwrap()
    };
    for run in runs {
        assert_eq!(score(run, "val", "top1"), score(run, "again", "top1"));
    }
    // One group (only seeds vary), its mean over both runs.
    let rows = report["rows"].as_array().unwrap();
    let val_top1 = rows
        .iter()
        .find(|r| r["set"] == "val" && r["metric"] == "top1")
        .unwrap();
    assert_eq!(val_top1["group"], "all runs");
    assert_eq!(val_top1["stats"]["n"], 2);
    let mean = (score(&runs[0], "val", "top1") + score(&runs[1], "val", "top1")) / 2.0;
    assert!((val_top1["stats"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    // The seed reached the runs: their losses differ.
    let (a, b) = (
        common::losses(&study.join("seed=0")),
        common::losses(&study.join("seed=1")),
    );
    assert_eq!((a.len(), b.len()), (2, 2));
    assert_ne!(a, b, "seed 0 and seed 1 trained alike");
    // `tensorboard --logdir STUDY` shows the runs by folder name: each has its events, the
    // resumed one in two files (one per start) holding each of its 2 steps once.
    for (run, starts) in [("seed=0", 2), ("seed=1", 1)] {
        let dir = study.join(run);
        let files = trainer::run::tensorboard::event_files(&dir).unwrap();
        assert_eq!(files.len(), starts, "{run}: {files:?}");
        let steps: Vec<i64> = trainer::run::tensorboard::scalars(&dir)
            .unwrap()
            .into_iter()
            .filter(|(_, tag, _)| tag == "train_loss")
            .map(|(step, _, _)| step)
            .collect();
        assert_eq!(steps, [1, 2], "{run}");
    }
    for file in ["study.txt", "study.json", "study.png"] {
        assert!(study.join(file).exists(), "{file}");
    }

    // Again: nothing is trained or evaluated twice.
    let before = std::fs::read(trainer::run::RunDir::new(study.join("seed=1")).metrics()).unwrap();
    command(&[])
        .assert()
        .success()
        .stderr(contains("run 2/2 seed=1: finished (2 steps): reused"))
        .stderr(contains("seed=1: scored on --set again (kept from before)"))
        .stdout(contains("all runs"));
    assert_eq!(
        std::fs::read(trainer::run::RunDir::new(study.join("seed=1")).metrics()).unwrap(),
        before
    );

    // The same directory with another recipe is refused, naming the run.
    command(&["--lr", "1e-3"])
        .assert()
        .code(2)
        .stderr(contains("seed=0 holds a run of another recipe"));
    // A value the recipe refuses is named before anything runs.
    trainer()
        .args(["study", "--config"])
        .arg(smoke())
        .arg("--shards")
        .arg(&shards)
        .args(["--vary", "epochs=2,0", "--out"])
        .arg(dir.path().join("never"))
        .assert()
        .code(2)
        .stderr(contains("--vary epochs=0 is outside"));
    assert!(!dir.path().join("never").exists());
}
