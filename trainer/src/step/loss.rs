//! The training losses train.py chooses between: timm's `BinaryCrossEntropy` (docs/recipe.md §2.5:
//! optional strict target threshold, then `binary_cross_entropy_with_logits` averaged over all
//! B × C elements) and `SoftTargetCrossEntropy`.

use burn::tensor::Tensor;
use burn::tensor::activation::softplus;

/// The training loss, as train.py picks it from `--bce-loss` and `--bce-target-thresh`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    /// timm's `BinaryCrossEntropy`, targets thresholded when `target_thresh` is set (the
    /// recipes).
    Bce {
        /// `--bce-target-thresh`.
        target_thresh: Option<f64>,
    },
    /// Cross-entropy against the dense (mixed, smoothed) targets: timm's
    /// `SoftTargetCrossEntropy`, which with Mixup off equals its `LabelSmoothingCrossEntropy`.
    CrossEntropy,
}

impl LossKind {
    /// The loss of `logits` against dense (mixed, smoothed) `targets`, both `[B, C]`.
    pub fn of(self, logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
        match self {
            LossKind::Bce { target_thresh } => bce_with_logits(logits, targets, target_thresh),
            LossKind::CrossEntropy => soft_target_cross_entropy(logits, targets),
        }
    }
}

/// Mean BCE of `logits` against dense `targets` (both `[B, C]`). With `threshold`, targets
/// become `targets > threshold` (timm's `--bce-target-thresh`).
pub fn bce_with_logits(logits: Tensor<2>, targets: Tensor<2>, threshold: Option<f64>) -> Tensor<1> {
    let targets = match threshold {
        Some(t) => targets.greater_elem(t).float(),
        None => targets,
    };
    // max(x, 0) − x·t + log(1 + exp(−|x|)), the stable form PyTorch uses.
    let stable = logits.clone().clamp_min(0.0) - logits.clone() * targets
        + softplus(logits.abs().neg(), 1.0);
    stable.mean()
}

/// Cross-entropy with dense targets, mean over the batch (timm's `SoftTargetCrossEntropy`).
pub fn soft_target_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let log_p = burn::tensor::activation::log_softmax(logits, 1);
    (targets * log_p).sum_dim(1).neg().mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn reference(x: &[f32], t: &[f32]) -> f64 {
        let n = x.len() as f64;
        x.iter()
            .zip(t)
            .map(|(&x, &t)| {
                let (x, t) = (f64::from(x), f64::from(t));
                let p = 1.0 / (1.0 + (-x).exp());
                -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
            })
            .sum::<f64>()
            / n
    }

    #[test]
    fn matches_the_textbook_formula_and_thresholds_strictly() {
        let device = Device::flex();
        let x = [2.5f32, -1.0, 0.3, -7.0, 12.0, 0.0];
        let t = [0.2f32, 0.8, 0.21, 0.0, 1.0, 0.5];
        let logits = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [2, 3]), &device);
        let targets = Tensor::<2>::from_data(TensorData::new(t.to_vec(), [2, 3]), &device);
        let soft: f32 = bce_with_logits(logits.clone(), targets.clone(), None).into_scalar();
        assert!((f64::from(soft) - reference(&x, &t)).abs() < 1e-5);
        let hard: f32 = bce_with_logits(logits, targets, Some(0.2)).into_scalar();
        // 0.2 is not above the threshold: strict comparison, as timm.
        let thr = [0.0f32, 1.0, 1.0, 0.0, 1.0, 1.0];
        assert!((f64::from(hard) - reference(&x, &thr)).abs() < 1e-5);
    }

    #[test]
    fn soft_cross_entropy_of_one_hot_is_nll() {
        let device = Device::flex();
        let logits =
            Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 3]), &device);
        let targets =
            Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0, 1.0], [1, 3]), &device);
        let ce: f32 = soft_target_cross_entropy(logits, targets).into_scalar();
        let want = -(3f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
        assert!((f64::from(ce) - want).abs() < 1e-5);
    }
}
