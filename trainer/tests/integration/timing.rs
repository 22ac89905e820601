//! Each step's samples/s is its own interval's, around checkpoints and evaluations too: a step
//! whose loss is read just before a checkpoint must not look free, nor the next one pay for the
//! checkpoint.

use trainer::run::metrics::Metric;
use trainer::run::train;

use crate::common;

#[test]
fn no_step_is_timed_over_a_checkpoint_or_an_evaluation() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = common::dataset(dir.path());
    let mut recipe = common::tiny_recipe();
    // 90 images of 4: 22 steps per epoch; checkpoints every 5 steps and at the epoch's end,
    // where the run also evaluates.
    recipe.rsb.checkpoint_interval = 5;
    let options = common::options(recipe, &shards, dir.path().join("run"), 26, false);
    let (mut checkpoints, mut evals) = (0, 0);
    train(&options, &mut |e| match e {
        trainer::run::Event::Checkpoint(_) => checkpoints += 1,
        trainer::run::Event::Metric(Metric::Eval { .. }) => evals += 1,
        _ => {}
    })
    .unwrap();
    assert_eq!(
        (checkpoints, evals),
        (7, 2),
        "steps 5, 10, 15, 20, 22, 25, 26"
    );
    let rates: Vec<(u64, f64)> = trainer::run::RunDir::new(dir.path().join("run"))
        .read_metrics()
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            Metric::Step {
                step,
                samples_per_s,
                ..
            } => Some((step, samples_per_s)),
            Metric::Eval { .. } => None,
        })
        .collect();
    assert_eq!(rates.len(), 26);
    let mut sorted: Vec<f64> = rates.iter().map(|r| r.1).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    for (step, rate) in &rates {
        assert!(
            rate.is_finite() && *rate <= 3.0 * median,
            "step {step}: {rate:.0} samples/s, the median {median:.0}: {rates:?}"
        );
    }
}
