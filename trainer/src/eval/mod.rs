//! Evaluation: top-1 and top-5 of a model in eval mode on the loader's eval batches (timm's
//! `validate`: resize, center crop, plain logits, the true class's rank), on a run's val split
//! or on other packed sets ([`sets`]), with ImageNet-ReaL's labels ([`real`]).

pub mod real;
pub mod sets;

pub use sets::{EvalSet, RealSummary, SetScore, evaluate_set};

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::Device;
use loader::JobSpec;
use loader::request::job::Position;
use loader::wire::client::{Client, ClientOptions};

use crate::data::normalize::{BatchError, normalize};
use crate::data::source::DataError;
use crate::data::upload::{Pixels, Uploader};
use crate::model::Network;

/// What is evaluated, where, and how its batches reach the device.
pub struct Target<'a> {
    /// The model (its eval-mode copy is what runs).
    pub model: &'a Network,
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

impl EvalError {
    /// Whether the user's input is at fault: a set that is not a packed dataset or does not
    /// fit the recipe.
    pub fn is_bad_input(&self) -> bool {
        match self {
            EvalError::Data(e) => e.is_bad_input(),
            EvalError::Dataset { .. } => true,
            EvalError::Batch(_) | EvalError::Logits(_) => false,
        }
    }
}

/// What an evaluation gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    /// Top-1, percent.
    pub top1: f64,
    /// Top-5, percent.
    pub top5: f64,
    /// Images evaluated.
    pub samples: u64,
    /// Of them, images whose logits held a NaN or an infinity (counted wrong).
    pub non_finite: u64,
    /// Mean cross-entropy of the logits against the labels (timm's `validate_loss_fn`), over
    /// the images with finite logits; 0 when there were none.
    pub loss: f64,
}

/// Top-1 and top-5 of `model` (eval mode) on the batches of `job` (the recipe's eval job),
/// telling `on_image` each image's record id and its five best classes, best first (for other
/// label sets, such as ImageNet-ReaL's).
///
/// # Errors
/// [`EvalError`]: the loader, a batch that does not fit its shape, logits that cannot be read.
pub fn evaluate(
    target: &Target<'_>,
    socket: &Path,
    job: &JobSpec,
    on_image: &mut dyn FnMut(u32, &[u32]),
) -> Result<Accuracy, EvalError> {
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
    let (mut top1, mut top5, mut n, mut non_finite) = (0u64, 0u64, 0u64, 0u64);
    let mut loss_sum = 0.0f64;
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
            let Some(above) = rank(row, label) else {
                // No prediction: wrong for every label set, ReaL's included.
                non_finite += 1;
                on_image(id, &[]);
                continue;
            };
            on_image(id, &best5(row));
            loss_sum += cross_entropy(row, label);
            top1 += u64::from(above < 1);
            top5 += u64::from(above < 5);
        }
        n += batch.count as u64;
    }
    let pct = |k: u64| 100.0 * k as f64 / n.max(1) as f64;
    drop(client);
    Ok(Accuracy {
        top1: pct(top1),
        top5: pct(top5),
        samples: n,
        non_finite,
        loss: loss_sum / n.saturating_sub(non_finite).max(1) as f64,
    })
}

/// `-log softmax(row)[label]`, in f64 with the row's maximum subtracted (finite for any finite
/// row); `row` is finite and holds `label` ([`rank`] checked both).
fn cross_entropy(row: &[f32], label: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let own = row.get(label as usize).copied().unwrap_or(0.0) as f64;
    sum.ln() + max - own
}

/// The rank of class `label` in `row`: how many classes score strictly higher.
/// `None` when the row holds a NaN or an infinity: a NaN is never "above" the label's score,
/// so all-NaN logits would rank every label first (weights gone NaN once scored top-1 100 %);
/// such a row predicts nothing and is counted wrong, as timm's `accuracy` would not count it
/// right either.
pub(crate) fn rank(row: &[f32], label: u32) -> Option<usize> {
    if row.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let own = row.get(label as usize).copied()?;
    Some(row.iter().filter(|&&v| v > own).count())
}

/// The five best classes of one row of logits, best first (ties: the lower index first, as
/// `torch.topk` on CPU gives them).
pub(crate) fn best5(row: &[f32]) -> [u32; 5] {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_is_torchs_on_a_known_row() {
        // torch.nn.functional.cross_entropy(torch.tensor([[2., 1., 0.1]]), torch.tensor([0]))
        // = 0.4170299470424652; large logits do not overflow.
        assert!((cross_entropy(&[2.0, 1.0, 0.1], 0) - 0.417_029_947).abs() < 1e-6);
        assert!((cross_entropy(&[1000.0, 0.0], 1) - 1000.0).abs() < 1e-6);
        assert!(cross_entropy(&[5.0, 5.0], 0) - std::f64::consts::LN_2 < 1e-12);
    }

    #[test]
    fn a_row_with_a_nan_or_an_infinity_ranks_nothing() {
        assert_eq!(rank(&[0.1, 0.9, 0.3], 1), Some(0));
        assert_eq!(rank(&[0.1, 0.9, 0.3], 2), Some(1));
        // Only a strictly higher score ranks above the label.
        assert_eq!(rank(&[0.5, 0.5], 1), Some(0));
        assert_eq!(rank(&[f32::NAN; 3], 0), None);
        assert_eq!(rank(&[0.1, f32::NAN, 0.3], 2), None);
        assert_eq!(rank(&[0.1, f32::INFINITY, 0.3], 1), None);
        assert_eq!(rank(&[0.1, 0.2], 7), None, "a label past the classes");
    }

    #[test]
    fn top5_is_best_first_and_sets_parse() {
        let row = [0.1, 3.0, -1.0, 3.0, 2.0, 0.5, 7.0];
        assert_eq!(best5(&row), [6, 1, 3, 4, 5]);
    }
}
