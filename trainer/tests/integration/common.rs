//! What the run tests share: a small packed dataset, the tiny smoke recipe, the options of a
//! run, and the losses a run wrote.
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use trainer::data::DataSource;
use trainer::device::{DeviceKind, Precision};
use trainer::recipe::{Overrides, TrainConfig};
use trainer::run::metrics::Metric;
use trainer::run::{RunDir, TrainOptions};

/// A 3-class dataset of 90 + 12 small images, packed.
pub fn dataset(dir: &Path) -> PathBuf {
    dataset_sized(dir, 24)
}

/// [`dataset`] with images of `size` pixels (the same records, other pixels).
pub fn dataset_sized(dir: &Path, size: u32) -> PathBuf {
    let src = dir.join("src");
    let shards = dir.join("shards");
    let spec = shard_tool::synth::TreeSpec {
        classes: 3,
        train_per_class: 30,
        val_per_class: 4,
        size,
        ..shard_tool::synth::TreeSpec::default()
    };
    shard_tool::synth::write_tree(&src, &spec).unwrap();
    shard_tool::pack(&src, &shard_tool::PackOptions::new(&shards), &mut |_| {}).unwrap();
    shards
}

/// The smoke recipe at 16 px, an eighth of the width, 4 images per rank, drop-path on (its
/// masks must repeat after a resume).
pub fn tiny_recipe() -> TrainConfig {
    let text = include_str!("../../../configs/smoke.toml");
    let mut c = TrainConfig::parse(text, "smoke.toml", &Overrides::none())
        .unwrap()
        .config;
    c.num_classes = 3;
    c.img_size = 16;
    c.rsb.test_img_size = 16;
    c.batch_size = 4;
    c.rsb.width = 0.125;
    c.drop_path = 0.1;
    c
}

/// A run of `config` on `shards` into `dir/out`, on the CPU.
pub fn options(
    config: TrainConfig,
    shards: &Path,
    out: PathBuf,
    max_steps: u64,
    resume: bool,
) -> TrainOptions {
    TrainOptions {
        init_from: None,
        new_head: false,
        config,
        data: DataSource::Shards {
            dir: shards.to_path_buf(),
            workers: 2,
        },
        out: RunDir::new(out),
        resume,
        devices: vec![DeviceKind::Flex],
        precision: Some(Precision::F32),
        max_steps: Some(max_steps),
        digests: false,
        metrics_listen: None,
        processes: std::rc::Rc::new(trainer::ranks::processes::Alone),
    }
}

/// (step, loss) of every step the run in `out` wrote.
pub fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(RunDir::new(out).metrics())
        .unwrap()
        .lines()
        .filter_map(|l| match serde_json::from_str(l).unwrap() {
            Metric::Step { step, loss, .. } => Some((step, loss)),
            Metric::Eval { .. } => None,
        })
        .collect()
}

/// `trainer` flags that shrink the smoke recipe to [`dataset`]: 3 classes, 16 px, an eighth of
/// the width, 4 images per rank (as [`tiny_recipe`], without its drop-path).
pub const TINY_FLAGS: [&str; 10] = [
    "--num-classes",
    "3",
    "--img-size",
    "16",
    "--test-img-size",
    "16",
    "-b",
    "4",
    "--width",
    "0.125",
];

/// burn's random generator is process-wide, and every test of this binary runs on a thread of
/// one process: a test that seeds it and initializes a model (or draws from it at all) holds
/// this for its whole length, so that no other test draws in between and runs that must repeat
/// each other exactly (resume, ranks) do.
pub fn burn_rng() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that failed while holding it leaves nothing half-done in the generator.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
