//! Virtual ranks through the whole run (holding [`crate::common::burn_rng`]: model initialization draws
//! from burn's process-wide generator): 4 ranks cross an epoch end (BN statistics reduced,
//! evaluation), and a run resumed mid-epoch from its checkpoint repeats the uninterrupted
//! losses.

use trainer::recipe::TrainConfig;
use trainer::run::metrics::Metric;
use trainer::run::{Event, train};

use crate::common;
use common::{dataset, losses, tiny_recipe};

/// The tiny recipe on 4 ranks of 4 images.
fn recipe() -> TrainConfig {
    let mut c = tiny_recipe();
    c.rsb.world_size = 4;
    c
}

#[test]
fn four_ranks_cross_an_epoch_and_resume_mid_epoch_exactly() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let options = |out: &str, max_steps, resume| {
        common::options(recipe(), &shards, dir.path().join(out), max_steps, resume)
    };
    let mut steps_per_epoch = 0;
    let mut evals = 0;
    train(&options("whole", 7, false), &mut |e| match e {
        Event::Started {
            steps_per_epoch: s, ..
        } => steps_per_epoch = s,
        Event::Metric(Metric::Eval { .. }) => evals += 1,
        _ => {}
    })
    .unwrap();
    // torch's DistributedSampler (no repeats): ceil(90 / 4) = 23 samples per rank, floor(23
    // / 4) = 5 batches of 4 per rank and epoch.
    let timm = 90usize.div_ceil(4) / 4;
    assert_eq!(steps_per_epoch, timm as u64);
    // The end of epoch 0 (step 5) and the last step.
    assert_eq!(evals, 2);
    let whole = losses(&dir.path().join("whole"));
    assert_eq!(whole.len(), 7);

    // Stopped mid-epoch at step 3 (its checkpoint holds each rank's BN statistics), resumed.
    train(&options("split", 3, false), &mut |_| {}).unwrap();
    let latest = trainer::run::RunDir::new(dir.path().join("split"))
        .latest()
        .unwrap();
    assert!(latest.has_ranks());
    train(&options("split", 7, true), &mut |_| {}).unwrap();
    assert_eq!(
        losses(&dir.path().join("split")),
        whole,
        "losses after the resume differ"
    );

    // Another world size cannot resume this run.
    let mut two = recipe();
    two.rsb.world_size = 2;
    let other = common::options(two, &shards, dir.path().join("split"), 9, true);
    let err = train(&other, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("another recipe"), "{err}");
}
