//! Exact resume. Model initialization draws from burn's process-wide generator: every test
//! here holds [`common::burn_rng`], so that no other test of this binary draws meanwhile.

use std::path::Path;

use loader::request::job::Position;
use trainer::run::metrics::Metric;
use trainer::run::{RunDir, TrainOptions, Weights, train};

use crate::common;
use common::{dataset, losses, tiny_recipe};

#[test]
fn a_run_resumed_from_its_checkpoint_repeats_the_uninterrupted_losses() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let options = |out: &str, max_steps, resume| {
        common::options(
            tiny_recipe(),
            &shards,
            dir.path().join(out),
            max_steps,
            resume,
        )
    };
    let last = train(&options("whole", 5, false), &mut |_| {}).unwrap();
    assert!(
        matches!(last, Some(Metric::Eval { samples: 12, .. })),
        "{last:?}"
    );
    let whole = losses(&dir.path().join("whole"));
    assert_eq!(whole.len(), 5);
    assert!(whole.iter().all(|(_, l)| l.is_finite()));

    train(&options("split", 2, false), &mut |_| {}).unwrap();
    // A second start without --resume must not overwrite the run.
    let err = train(&options("split", 5, false), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    train(&options("split", 5, true), &mut |_| {}).unwrap();
    let split = losses(&dir.path().join("split"));
    assert_eq!(split, whole, "losses after the resume differ");
    // timm's summary.csv: rewritten from the metrics, so the resumed run's is the whole run's
    // (one row for its one epoch, not one per start).
    let summary = |run: &str| std::fs::read_to_string(dir.path().join(run).join("summary.csv"));
    let whole_summary = summary("whole").unwrap();
    assert_eq!(whole_summary.lines().count(), 2, "{whole_summary}");
    assert_eq!(summary("split").unwrap(), whole_summary);
    // TensorBoard: the resumed run's events (two files, one per start) hold every step once,
    // with the uninterrupted run's values. (Timings differ run to run; the split run also
    // evaluated where its first start ended, as its metrics.jsonl says.)
    let events = |run: &str| -> Vec<(i64, String, f32)> {
        trainer::run::tensorboard::scalars(&dir.path().join(run))
            .unwrap()
            .into_iter()
            .filter(|(_, tag, _)| tag == "train_loss" || tag == "lr")
            .collect()
    };
    let whole_events = events("whole");
    assert_eq!(whole_events.len(), 5 * 2, "{whole_events:?}");
    assert_eq!(events("split"), whole_events);
    let latest = RunDir::new(dir.path().join("split")).latest().unwrap();
    let state = latest.state().unwrap();
    assert_eq!(state.steps_done, 5);
    assert_eq!(state.next, Position { epoch: 0, step: 5 });
    assert!(state.dataset.is_some());

    // The same run resumed on another pack of the same size is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other = common::dataset_sized(other_dir.path(), 32);
    let on_other = common::options(tiny_recipe(), &other, dir.path().join("split"), 6, true);
    let err = train(&on_other, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("another pack"), "{err}");

    // --init-from: weights equal to the run's own initialization give its first loss exactly;
    // the trained weights give another one.
    let device = burn::tensor::Device::flex().autodiff();
    let config = tiny_recipe();
    device.seed(config.seed);
    let initial = config.model().unwrap().init(&device).unwrap();
    let initial_path = dir.path().join("initial.safetensors");
    trainer::model::timm_weights::export(&initial, &initial_path).unwrap();
    let from = |name: &str, weights: &Path| {
        let o = TrainOptions {
            init_from: Some(Weights::at(weights)),
            ..options(name, 1, false)
        };
        train(&o, &mut |_| {}).unwrap();
        losses(&dir.path().join(name))
    };
    assert_eq!(from("init", &initial_path), whole[..1]);
    let trained = latest.load_model(initial).unwrap();
    let trained_path = dir.path().join("trained.safetensors");
    trainer::model::timm_weights::export(&trained, &trained_path).unwrap();
    let other = from("init-trained", &trained_path);
    assert_ne!(
        other[0].1, whole[0].1,
        "trained weights gave the initial loss"
    );
    // A checkpoint directory gives what its weights as a file give.
    assert_eq!(from("init-dir", latest.dir()), other);
    // --new-head: the same weights but the classifier's fresh initialization, said once.
    let mut notes = Vec::new();
    let o = TrainOptions {
        init_from: Some(Weights::Checkpoint(latest.clone())),
        new_head: true,
        ..options("init-new-head", 1, false)
    };
    train(&o, &mut |e| {
        if let trainer::run::Event::Note(n) = e {
            notes.push(n)
        }
    })
    .unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("--new-head"), "{notes:?}");
    let renewed = losses(&dir.path().join("init-new-head"));
    assert_ne!(renewed[0].1, other[0].1, "the head was not renewed");
}

#[test]
fn a_diverged_run_stops_at_its_first_non_finite_value_leaving_a_good_checkpoint() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    // LAMB at the recipe's largest learning rate, no warm-up: each step multiplies the
    // weights (the trust ratio scales the step to them) until f32 overflows.
    let mut config = tiny_recipe();
    config.lr = 10.0;
    config.warmup_epochs = 0;
    config.rsb.checkpoint_interval = 2;
    let out = dir.path().join("diverged");
    let options = common::options(config.clone(), &shards, out.clone(), 200, false);
    let mut notes = Vec::new();
    let err = train(&options, &mut |e| {
        if let trainer::run::Event::Note(n) = e {
            notes.push(n)
        }
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, trainer::run::TrainError::Diverged { .. }),
        "{text}"
    );
    assert!(text.contains("training stopped"), "{text}");
    assert!(text.contains("What usually helps: a lower --lr"), "{text}");
    // Every line the run wrote reads back, every loss finite: no `null` for plot, compare,
    // study or a resume to trip on.
    let written = losses(&out);
    assert!(
        !written.is_empty() && written.len() < 200,
        "{}",
        written.len()
    );
    assert!(written.iter().all(|(_, l)| l.is_finite()), "{written:?}");
    // The checkpoint the message names is the run's latest, and its weights are finite.
    let latest = RunDir::new(&out)
        .latest()
        .expect("a checkpoint before the divergence");
    assert!(text.contains(&latest.dir().display().to_string()), "{text}");
    let device = burn::tensor::Device::flex().autodiff();
    let model = latest
        .load_model(config.model().unwrap().init(&device).unwrap())
        .unwrap();
    assert_eq!(model.non_finite_values(), 0);
    assert!(latest.state().unwrap().steps_done <= written.last().unwrap().0);
}

#[test]
fn a_state_json_that_contradicts_itself_is_refused_and_the_metrics_kept() {
    let _rng = common::burn_rng();
    let dir = tempfile::tempdir().unwrap();
    let shards = dataset(dir.path());
    let out = dir.path().join("run");
    let options =
        |max_steps, resume| common::options(tiny_recipe(), &shards, out.clone(), max_steps, resume);
    train(&options(2, false), &mut |_| {}).unwrap();
    let before = std::fs::read_to_string(RunDir::new(&out).metrics()).unwrap();
    let state_file = RunDir::new(&out).latest().unwrap().dir().join("state.json");
    let original = std::fs::read_to_string(&state_file).unwrap();
    assert!(original.contains("\"steps_done\": 2,"), "{original}");
    // The u64::MAX (it "resumed" and exited 0 having done nothing), and a count behind
    // its position (which would have cut metrics.jsonl to nothing).
    for bad in ["18446744073709551615", "0"] {
        let edited = original.replace("\"steps_done\": 2,", &format!("\"steps_done\": {bad},"));
        std::fs::write(&state_file, edited).unwrap();
        let err = train(&options(5, true), &mut |_| {}).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "steps_done {bad} does not fit next = epoch 0, step 2"
            )),
            "{text}"
        );
        assert!(err.is_bad_input(), "{text}");
        let after = std::fs::read_to_string(RunDir::new(&out).metrics()).unwrap();
        assert_eq!(after, before, "metrics.jsonl changed");
    }
    std::fs::write(&state_file, original).unwrap();
    train(&options(3, true), &mut |_| {}).unwrap();
    assert_eq!(losses(&out).len(), 3);
}
