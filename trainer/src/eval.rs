//! Evaluation: top-1 and top-5 of a model in eval mode on the loader's eval batches (timm's
//! `validate`: resize, center crop, plain logits, the true class's rank).

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Device;
use loader::JobSpec;
use loader::client::{Client, ClientOptions};
use loader::job::Position;

use crate::data::DataError;
use crate::metrics::Metric;
use crate::normalize::{BatchError, normalize};
use crate::resnet::ResNet;
use crate::upload::{Pixels, Uploader};

/// What is evaluated, where, and how its batches reach the device.
pub struct Target<'a> {
    /// The model (its eval-mode copy is what runs).
    pub model: &'a ResNet,
    /// Its device.
    pub device: &'a Device,
    /// The batches' way there.
    pub upload: &'a Uploader,
}

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The loader.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A batch that does not match its shape.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The logits could not be read back.
    #[error("reading logits: {0}")]
    Logits(String),
    /// A set's dataset could not be opened for its file names.
    #[error("{dir}: {message}")]
    Dataset {
        /// The set's dataset directory.
        dir: std::path::PathBuf,
        /// Why.
        message: String,
    },
}

/// Top-1 and top-5 of `model` (eval mode) on the batches of `job` (the recipe's eval job),
/// telling `on_image` each image's record id and its five best classes, best first (for other
/// label sets, such as ImageNet-ReaL's).
pub fn evaluate(
    target: &Target<'_>,
    socket: &Path,
    job: &JobSpec,
    step: u64,
    epoch: u32,
    on_image: &mut dyn FnMut(u32, &[u32]),
) -> Result<Metric, EvalError> {
    let valid = target.model.valid();
    let inner = target.device.clone().inner();
    let mut client = Client::connect(ClientOptions {
        socket: socket.to_path_buf(),
        job_id: format!("eval-{}", std::process::id()),
        job: job.clone(),
        start: Position::default(),
        epochs: Some(1),
        slots: None,
        reconnect_timeout: std::time::Duration::from_secs(300),
    })
    .map_err(DataError::from)?;
    let side = job.transform.img_size() as usize;
    let (mut top1, mut top5, mut n) = (0u64, 0u64, 0u64);
    while let Some(batch) = client.next_batch().map_err(DataError::from)? {
        let batch = Arc::new(batch);
        let shape = [batch.count, side, side];
        let pixels = target
            .upload
            .upload(&Pixels::Slot(Arc::clone(&batch)), shape, &inner)?;
        let logits = valid.forward(normalize(pixels));
        let [rows, classes] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| EvalError::Logits(format!("{e:?}")))?;
        let rows_of = values
            .chunks_exact(classes)
            .zip(batch.labels())
            .zip(batch.ids());
        for ((row, &label), &id) in rows_of.take(rows) {
            on_image(id, &best5(row));
            let own = row
                .get(label as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            // Rank of the true class: how many classes score higher (ties count against).
            let above = row.iter().filter(|&&v| v > own).count();
            top1 += u64::from(above < 1);
            top5 += u64::from(above < 5);
        }
        n += batch.count as u64;
    }
    let pct = |k: u64| 100.0 * k as f64 / n.max(1) as f64;
    drop(client);
    Ok(Metric::Eval {
        step,
        epoch,
        top1: pct(top1),
        top5: pct(top5),
        samples: n,
    })
}

/// The five best classes of one row of logits, best first (ties: the lower index first, as
/// `torch.topk` on CPU gives them).
pub fn best5(row: &[f32]) -> [u32; 5] {
    let mut best: [(f32, u32); 5] = [(f32::NEG_INFINITY, u32::MAX); 5];
    for (i, &v) in row.iter().enumerate() {
        if v > best[4].0 {
            best[4] = (v, i as u32);
            let mut k = 4;
            while k > 0 && best[k].0 > best[k - 1].0 {
                best.swap(k, k - 1);
                k -= 1;
            }
        }
    }
    best.map(|(_, i)| i)
}

/// One set of `trainer eval --set NAME=DIR[:SPLIT]`: a packed dataset and the split to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalSet {
    /// The name in the table (`val`, `v2`, ...).
    pub name: String,
    /// Dataset directory made by `shard-tool pack`.
    pub dir: std::path::PathBuf,
    /// Split; `None`: the recipe's `rsb.val_split`.
    pub split: Option<String>,
}

impl std::str::FromStr for EvalSet {
    type Err = String;

    fn from_str(s: &str) -> Result<EvalSet, String> {
        let (name, rest) = s
            .split_once('=')
            .filter(|(n, r)| !n.is_empty() && !r.is_empty())
            .ok_or_else(|| {
                format!("{s:?}: expected NAME=DIR or NAME=DIR:SPLIT (val=imagenet-rsb:val)")
            })?;
        let (dir, split) = match rest.rsplit_once(':') {
            Some((dir, split)) if !dir.is_empty() && !split.is_empty() => {
                (dir, Some(split.to_owned()))
            }
            _ => (rest, None),
        };
        Ok(EvalSet {
            name: name.to_owned(),
            dir: dir.into(),
            split,
        })
    }
}

/// What one set gave.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SetScore {
    /// The set's name.
    pub name: String,
    /// Its dataset directory.
    pub dir: String,
    /// Its split.
    pub split: String,
    /// Images evaluated.
    pub images: u64,
    /// Top-1 in percent.
    pub top1: f64,
    /// Top-5 in percent.
    pub top5: f64,
    /// ImageNet-ReaL, over this set's images named `ILSVRC2012_val_*.JPEG` whose ReaL list is
    /// not empty (`None` without a ReaL file).
    pub real: Option<RealSummary>,
}

/// ReaL accuracies of one set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RealSummary {
    /// Images counted (a ReaL file name with a non-empty list).
    pub images: u64,
    /// ReaL top-1 in percent.
    pub top1: f64,
    /// ReaL top-5 in percent.
    pub top5: f64,
}

impl From<crate::real::RealScore> for RealSummary {
    fn from(s: crate::real::RealScore) -> RealSummary {
        RealSummary {
            images: s.counted,
            top1: s.top1_percent(),
            top5: s.top5_percent(),
        }
    }
}

/// Evaluates `model` on one set: a loader in this process on the set's dataset, the recipe's
/// eval transform and batch (`job`) on the set's split (default `default_split`), its labels
/// checked against `num_classes`; with `real`, also ReaL over the images whose file names are
/// ImageNet validation names.
///
/// # Errors
/// [`EvalError`] naming the set's directory or split.
pub fn evaluate_set(
    target: &Target<'_>,
    set: &EvalSet,
    job: &JobSpec,
    default_split: &str,
    num_classes: usize,
    workers: u32,
    real: Option<&crate::real::RealLabels>,
) -> Result<SetScore, EvalError> {
    let split_name = set
        .split
        .clone()
        .unwrap_or_else(|| default_split.to_owned());
    let source = crate::data::DataSource::Shards {
        dir: set.dir.clone(),
        workers,
    };
    let batches = source.open()?;
    let info = loader::client::describe(batches.socket(), &split_name).map_err(DataError::from)?;
    crate::data::check_split(&info, num_classes, &format!("--set {}", set.name))?;
    let job = JobSpec {
        split: split_name.clone(),
        ..job.clone()
    };
    let dataset_err = |message: String| EvalError::Dataset {
        dir: set.dir.clone(),
        message,
    };
    // SAFETY: packed datasets are never written after `pack` finishes; the loader in this
    // process maps the same files under the same promise.
    let dataset =
        unsafe { shard_tool::Dataset::open(&set.dir) }.map_err(|e| dataset_err(e.chain()))?;
    let split = dataset
        .split(&split_name)
        .map_err(|e| dataset_err(e.chain()))?;
    let mut score = real.map(|_| crate::real::RealScore::default());
    let m = evaluate(target, batches.socket(), &job, 0, 0, &mut |id, best| {
        if let (Some(real), Some(score)) = (real, score.as_mut())
            && let Ok(record) = split.get(u64::from(id))
            && let Some(labels) = real.of_file(record.path)
        {
            score.add(best, labels);
        }
    })?;
    let Metric::Eval {
        top1,
        top5,
        samples,
        ..
    } = m
    else {
        return Err(EvalError::Logits("evaluation gave no accuracies".into()));
    };
    Ok(SetScore {
        name: set.name.clone(),
        dir: set.dir.display().to_string(),
        split: split_name,
        images: samples,
        top1,
        top5,
        real: score.filter(|s| s.counted > 0).map(RealSummary::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top5_is_best_first_and_sets_parse() {
        let row = [0.1, 3.0, -1.0, 3.0, 2.0, 0.5, 7.0];
        assert_eq!(best5(&row), [6, 1, 3, 4, 5]);
        let set: EvalSet = "v2=/data/v2-rsb:test".parse().expect("set");
        assert_eq!(set.name, "v2");
        assert_eq!(set.dir, std::path::Path::new("/data/v2-rsb"));
        assert_eq!(set.split.as_deref(), Some("test"));
        let set: EvalSet = "val=imagenet-rsb".parse().expect("set");
        assert_eq!(set.split, None);
        assert!("imagenet-rsb".parse::<EvalSet>().is_err());
    }
}
