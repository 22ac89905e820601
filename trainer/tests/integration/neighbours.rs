//! A neighbour who can write in the run folder (a group-writable one, as shared machines
//! have) plants links at every name the trainer could be predicted to write, and keeps
//! folders of their own beside the checkpoints: three starts of a run (2 steps, then resumed
//! to 4 and 6) must write through none of them, and pruning must take only checkpoints.

use std::fs;
use std::path::Path;

use trainer::run::{Event, train};

use crate::common;
use common::{dataset, tiny_recipe};

/// The names earlier builds opened with `File::create` (following a link), planted as links
/// to `victim`: the fixed temporaries of every whole file, and the event file names of the
/// next minute for a start after `steps` steps.
fn plant(run: &Path, victim: &Path, steps: u64) {
    let mut names: Vec<String> = [
        "summary.csv",
        "metrics.jsonl",
        "recipe.toml",
        "eval-sets.json",
        "curves.png",
    ]
    .iter()
    .map(|n| format!("{n}.tmp"))
    .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    names.extend((now..now + 60).map(|s| format!("events.out.tfevents.{steps:012}.{s:010}.rsb")));
    for name in names {
        let at = run.join(name);
        if fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(victim, at).unwrap();
        }
    }
}

/// The names in `dir` that `keep` keeps, sorted.
fn names_where(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| keep(n))
        .collect();
    v.sort();
    v
}

#[test]
fn nothing_planted_in_a_run_folder_is_written_through_and_pruning_takes_only_checkpoints() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    // A user's own things that start like a checkpoint's name, and a link where a checkpoint
    // is to come.
    for own in ["ckpt-0000000004-best", "ckpt-best", "ckpt-0-mine"] {
        fs::create_dir(run.join(own)).unwrap();
        fs::write(run.join(own).join("keep.txt"), own).unwrap();
    }
    fs::write(run.join("ckpt-notes.txt"), b"mine").unwrap();
    std::os::unix::fs::symlink(&victim, run.join("ckpt-0000000008")).unwrap();

    let mut notes = Vec::new();
    for (steps, resume) in [(2, false), (4, true), (6, true)] {
        plant(&run, &victim, steps - 2);
        let options = common::options(tiny_recipe(), &shards, run.clone(), steps, resume);
        train(&options, &mut |e| {
            if let Event::Note(n) = e {
                notes.push(n);
            }
        })
        .unwrap();
    }

    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    for file in ["summary.csv", "metrics.jsonl", "recipe.toml", "latest"] {
        let meta = fs::symlink_metadata(run.join(file)).unwrap();
        assert_eq!(meta.is_symlink(), file == "latest", "{file}");
    }
    assert_eq!(common::losses(&run).len(), 6);
    let checkpoints = names_where(&run, |n| n.starts_with("ckpt-"));
    assert_eq!(
        checkpoints,
        [
            "ckpt-0-mine",
            "ckpt-0000000004",
            "ckpt-0000000004-best",
            "ckpt-0000000006",
            "ckpt-0000000008",
            "ckpt-best",
            "ckpt-notes.txt"
        ]
    );
    for own in ["ckpt-0000000004-best", "ckpt-best", "ckpt-0-mine"] {
        assert_eq!(
            fs::read_to_string(run.join(own).join("keep.txt")).unwrap(),
            own
        );
    }
    // Each start named each of them once.
    for own in [
        "ckpt-0000000004-best",
        "ckpt-best",
        "ckpt-0-mine",
        "ckpt-0000000008",
    ] {
        let said = notes
            .iter()
            .filter(|n| n.contains(own) && n.contains("left alone, never pruned"))
            .count();
        assert_eq!(said, 3, "{own}: {notes:?}");
    }
    // Nothing of ours is left half-made.
    let leftovers = names_where(&run, |n| n.ends_with(shard_tool::atomic::TEMP_SUFFIX));
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
