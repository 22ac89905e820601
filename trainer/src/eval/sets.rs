//! Evaluation sets beyond a run's own val split (`trainer eval --set NAME=DIR[:SPLIT]`, a
//! study's `--set`): each a packed dataset read by a loader in this process with the recipe's
//! eval transform, scored with top-1/top-5 and, where its images are ImageNet's validation
//! images, ImageNet-ReaL's.

use loader::JobSpec;

use super::{EvalError, Target, evaluate};
use crate::data::source::{DataError, DataSource, check_split};
use crate::eval::real::{RealLabels, RealScore};

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
    /// Images whose logits held a NaN or an infinity, counted wrong (absent from files
    /// written before it was counted).
    #[serde(default)]
    pub non_finite: u64,
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

impl From<RealScore> for RealSummary {
    fn from(s: RealScore) -> RealSummary {
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
    real: Option<&RealLabels>,
) -> Result<SetScore, EvalError> {
    let split_name = set
        .split
        .clone()
        .unwrap_or_else(|| default_split.to_owned());
    let source = DataSource::Shards {
        dir: set.dir.clone(),
        workers,
    };
    let batches = source.open()?;
    let info =
        loader::wire::client::describe(batches.socket(), &split_name).map_err(DataError::from)?;
    check_split(&info, num_classes, &format!("--set {}", set.name))?;
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
    let mut score = real.map(|_| RealScore::default());
    let accuracy = evaluate(target, batches.socket(), &job, &mut |id, best| {
        if let (Some(real), Some(score)) = (real, score.as_mut())
            && let Ok(record) = split.get(u64::from(id))
            && let Some(labels) = real.of_file(record.path)
        {
            score.add(best, labels);
        }
    })?;
    Ok(SetScore {
        name: set.name.clone(),
        dir: set.dir.display().to_string(),
        split: split_name,
        images: accuracy.samples,
        top1: accuracy.top1,
        top5: accuracy.top5,
        non_finite: accuracy.non_finite,
        real: score.filter(|s| s.counted > 0).map(RealSummary::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_parse() {
        let set: EvalSet = "v2=/data/v2-rsb:test".parse().expect("set");
        assert_eq!(set.name, "v2");
        assert_eq!(set.dir, std::path::Path::new("/data/v2-rsb"));
        assert_eq!(set.split.as_deref(), Some("test"));
        let set: EvalSet = "val=imagenet-rsb".parse().expect("set");
        assert_eq!(set.split, None);
        assert!("imagenet-rsb".parse::<EvalSet>().is_err());
    }
}
