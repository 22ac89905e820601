//! Evaluation: top-1 and top-5 of a model in eval mode on the loader's eval batches (timm's
//! `validate`: resize, center crop, plain logits, the true class's rank).

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use loader::JobSpec;
use loader::client::{Client, ClientOptions};
use loader::job::Position;

use crate::data::DataError;
use crate::metrics::Metric;
use crate::normalize::{BatchError, normalize, upload_pixels};
use crate::resnet::ResNet;

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
}

/// Top-1 and top-5 of `model` (eval mode) on the batches of `job` (the recipe's eval job).
pub fn evaluate(
    model: &ResNet,
    device: &Device,
    socket: &Path,
    job: &JobSpec,
    step: u64,
    epoch: u32,
) -> Result<Metric, EvalError> {
    let valid = model.valid();
    let inner = device.clone().inner();
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
        let pixels = upload_pixels(batch.images().to_vec(), [batch.count, side, side], &inner)?;
        let logits = valid.forward(normalize(pixels));
        let [rows, classes] = logits.dims();
        let values: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| EvalError::Logits(format!("{e:?}")))?;
        for (row, &label) in values.chunks_exact(classes).zip(batch.labels()).take(rows) {
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
    Ok(Metric::Eval {
        step,
        epoch,
        top1: pct(top1),
        top5: pct(top5),
        samples: n,
    })
}
