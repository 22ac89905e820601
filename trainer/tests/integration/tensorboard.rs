//! A run's TensorBoard event files read by TensorBoard's own reader (`EventAccumulator`, in
//! `trainer/tests/tensorboard/check_events.py`): the scalar tags, their step counts and last
//! values are metrics.jsonl's, and the recipe and the preview grid are there.

use std::process::Command;

use crate::common;

#[test]
fn tensorboards_own_reader_reads_what_metrics_jsonl_says() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tensorboard/check_events.py"
    );
    let has_tensorboard = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_tensorboard {
        eprintln!(
            "skipped: python3 cannot import tensorboard (pip install tensorboard); .ci/run \
             installs it"
        );
        return;
    }
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = common::dataset(dir.path());
    let out = dir.path().join("run");
    let options = common::options(common::tiny_recipe(), &shards, out.clone(), 6, false);
    trainer::run::train(&options, &mut |_| {}).unwrap();
    let check = Command::new("python3")
        .arg(script)
        .arg(&out)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    eprintln!("{printed}{}", String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "{printed}");
    // Six steps, one evaluation after the last.
    assert!(
        printed.contains("train_loss                  6 points"),
        "{printed}"
    );
    assert!(
        printed.contains("eval_top1                   1 points"),
        "{printed}"
    );
}
